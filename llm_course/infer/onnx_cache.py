"""ONNX with a key/value cache: the graph deployed decoders ship. Chapter 07 (inference).

``llm_course.infer.onnx_export`` exports ``input_ids -> logits``: every new token re-runs the whole
window. Exporters used in practice (Hugging Face Optimum's ``ORTModelForCausalLM``, onnxruntime-genai)
export the *cached* step instead: the graph takes the keys and values of the earlier tokens as inputs
and returns them, one token longer, as outputs. Its inputs and outputs (Optimum's names), for a model
with L layers and H heads of size D::

    input                       shape                  output              shape
    input_ids                   (batch, seq)           logits              (batch, seq, vocab)
    past_key_values.{i}.key     (batch, H, past, D)    present.{i}.key     (batch, H, past + seq, D)
    past_key_values.{i}.value   (batch, H, past, D)    present.{i}.value   (batch, H, past + seq, D)

for i = 0 .. L-1, with ``batch``, ``seq`` and ``past`` dynamic. The first call (the prompt) passes
an empty cache (``past`` = 0) and the whole prompt; each later call passes one token and the
``present.*`` tensors of the call before, so a step costs O(past) instead of O(past^2)::

    path = export_onnx_cached(model, "gpt-kv.onnx")        # course GPT or transformers GPT2LMHeadModel
    ort_model = OnnxCachedLM(path)
    ids = ort_model.generate(input_ids, 20)                # the same ids as llm_course's generate(...)

``CachedStep`` is the module that is exported. For the course's ``GPT`` it writes the cached forward
out with the model's own layers (the same arithmetic as ``GPT.forward(..., past_key_values=...)``,
whose Python input checks ``torch.export`` cannot trace); for ``GPT2LMHeadModel`` it wraps the
tensors in a transformers ``DynamicCache`` and calls the model. Position ids are ``past .. past +
seq - 1`` and the causal mask lets query i see keys 0 .. past + i, both computed inside the graph.
Prompts are unpadded (batch rows of one length), as in Optimum's exports without an attention mask.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_course.core.checks import check_int, check_positive_int
from llm_course.core.deps import require
from llm_course.core.runtime import eval_mode
from llm_course.models.gpt import GPT

__all__ = ["CachedStep", "cache_names", "export_onnx_cached", "OnnxCachedLM"]


def _is_hf_gpt2(model: object) -> bool:
    try:
        from transformers import GPT2LMHeadModel
    except ImportError:  # pragma: no cover - transformers is a core dependency
        return False
    return isinstance(model, GPT2LMHeadModel)


def cache_names(n_layer: int) -> tuple[list[str], list[str]]:
    """(input names, output names) of the cached graph, as Optimum names them. Chapter 07."""
    check_positive_int("n_layer", n_layer)
    past = [f"past_key_values.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]
    return ["input_ids", *past], ["logits", *present]


class CachedStep(nn.Module):
    """``forward(input_ids, past) -> (logits, *present)``: one cached decoder call. Chapter 07.

    ``past``: a tuple of 2L tensors, keys and values per layer, (B, H, P, D) each (P = 0 for the prompt).
    Returns the (B, T, V) logits and 2L tensors (B, H, P + T, D): the cache with the T new tokens appended.
    ``model``: the course ``GPT`` (eval mode, no dropout) or a ``transformers.GPT2LMHeadModel``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not isinstance(model, GPT) and not _is_hf_gpt2(model):
            raise TypeError(f"CachedStep wraps a llm_course GPT or a transformers GPT2LMHeadModel, got "
                            f"{type(model).__module__}.{type(model).__name__}")
        self.model = model
        c = model.config
        self.n_layer, self.n_head, self.head_dim = c.n_layer, c.n_head, c.n_embd // c.n_head

    def forward(self, input_ids: torch.Tensor, past: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        if isinstance(self.model, GPT):
            return self._course_gpt(input_ids, past)
        from transformers import DynamicCache

        pairs = tuple((past[2 * i], past[2 * i + 1]) for i in range(self.n_layer))
        # transformers 4.x builds the cache with from_legacy_cache, 5.x with the constructor
        legacy = getattr(DynamicCache, "from_legacy_cache", None)
        cache = legacy(pairs) if legacy is not None else DynamicCache(pairs)
        params = inspect.signature(self.model.forward).parameters  # the argument is `cache` since 5.2x
        name = "cache" if "cache" in params and "past_key_values" not in params else "past_key_values"
        out = self.model(input_ids=input_ids, **{name: cache}, use_cache=True, return_dict=True)
        present = getattr(out, name)
        if hasattr(present, "layers"):  # transformers 5: one layer object per layer
            pairs = tuple((layer.keys, layer.values) for layer in present.layers)
        elif isinstance(present, tuple):  # transformers 4.50 under torch.export: already the legacy tuple
            pairs = present
        else:  # transformers 4: a DynamicCache, turned into the legacy tuple of (keys, values)
            pairs = present.to_legacy_cache()
        return (out.logits, *[t for kv in pairs for t in kv])

    def _course_gpt(self, input_ids: torch.Tensor, past: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        m, H, D = self.model, self.n_head, self.head_dim
        B, T = input_ids.shape
        P = past[0].shape[2]  # tokens already cached
        positions = torch.arange(T, device=input_ids.device) + P  # (T,): P .. P + T - 1
        x = m.wte(input_ids) + m.wpe(positions)[None]  # (B, T, C)
        # causal mask over all P + T keys: query i (position P + i) sees keys 0 .. P + i
        keys_at = torch.arange(P + T, device=input_ids.device)  # (P + T,)
        visible = keys_at[None, :] <= positions[:, None]  # (T, P + T) bool
        present = []
        for i, block in enumerate(m.h):
            q, k, v = block.attn.qkv_proj(block.ln_1(x)).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)
            # q, k, v: (B, H, T, D) each
            k = torch.cat([past[2 * i], k], dim=2)  # (B, H, P + T, D)
            v = torch.cat([past[2 * i + 1], v], dim=2)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=block.attn.scale)  # (B, H, T, D)
            x = x + block.attn.out_proj(a.transpose(1, 2).reshape(B, T, H * D))
            x = x + block.mlp(block.ln_2(x))
            present += [k, v]
        return (m.lm_head(m.ln_f(x)), *present)


def export_onnx_cached(model: nn.Module, path: str | os.PathLike, dynamo: bool = True) -> Path:
    """Export ``model``'s cached step (``CachedStep``) to an ONNX file; returns the path. Chapter 07.

    Inputs and outputs as in the module docstring; batch, new-token and past lengths are dynamic
    (traced with batch 2, 3 new tokens and 5 cached ones, so none of them is 1 or 0, which exporters
    treat as constants). ``dynamo=False``: the deprecated TorchScript exporter (course GPT only). The
    file's metadata holds n_positions, vocab_size, n_layer, n_head and head_dim (``OnnxCachedLM``
    reads them). The model is exported in eval mode on the CPU and left as it was.
    """
    step = CachedStep(model)  # checks the model's type
    onnx = require("onnx")
    if dynamo:
        require("onnxscript")
    elif not isinstance(model, GPT):
        raise ValueError("the TorchScript exporter (dynamo=False) cannot export transformers 5's GPT2LMHeadModel "
                         "(its mask code uses aten::diff): use dynamo=True")
    c = model.config
    L, H, D, n_pos = step.n_layer, step.n_head, step.head_dim, c.n_positions
    ids = torch.randint(0, c.vocab_size, (2, 3), generator=torch.Generator().manual_seed(0))
    past = tuple(torch.zeros(2, H, 5, D) for _ in range(2 * L))
    inputs, outputs = cache_names(L)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    with eval_mode(model), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", (UserWarning, FutureWarning))  # exporter notes on axis names, pytree
        step = CachedStep(model.cpu()).eval()
        try:
            if dynamo:
                batch = torch.export.Dim("batch", max=1024)
                seq = torch.export.Dim("seq", max=n_pos)
                cached = torch.export.Dim("past", min=0, max=n_pos - 1)
                shapes = ({0: batch, 1: seq}, tuple({0: batch, 2: cached} for _ in past))
                program = torch.onnx.export(step, (ids, past), dynamo=True, input_names=inputs,
                                            output_names=outputs, dynamic_shapes=shapes, verbose=False)
                program.save(str(path))
            else:
                axes = {"input_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}}
                axes.update({name: {0: "batch", 2: "past"} for name in inputs[1:]})
                axes.update({name: {0: "batch", 2: "past_plus_seq"} for name in outputs[1:]})
                torch.onnx.export(step, (ids, past), str(path), dynamo=False, input_names=inputs,
                                  output_names=outputs, dynamic_axes=axes, opset_version=17)
        finally:
            model.to(device)
    proto = onnx.load(str(path))
    meta = {"n_positions": n_pos, "vocab_size": c.vocab_size, "n_layer": L, "n_head": H, "head_dim": D,
            "source": type(model).__name__, "kv_cache": 1}
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(proto, str(path))
    return path


class OnnxCachedLM:
    """A cached graph from ``export_onnx_cached`` run by ONNX Runtime: greedy decoding. Chapter 07.

    ``providers`` and ``intra_op_num_threads`` as in ``OnnxCausalLM``. ``step(ids, past)`` is one call
    of the graph (numpy in, numpy out); ``generate(input_ids, n)`` feeds the prompt with an empty cache,
    then one token per step, and returns the same ids as ``llm_course.infer.generation.generate(model,
    input_ids, max_new_tokens=n)`` (greedy, unpadded prompts).
    """

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] = ("CPUExecutionProvider",),
                 intra_op_num_threads: int | None = None) -> None:
        ort = require("onnxruntime")
        check_positive_int("intra_op_num_threads", intra_op_num_threads, allow_none=True)
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no ONNX file {path}; create it with export_onnx_cached(model, {str(path)!r})")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_num_threads is not None:
            options.intra_op_num_threads = intra_op_num_threads
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("kv_cache") != "1":
            raise ValueError(f"{path} is not a cached graph (no kv_cache metadata): export it with "
                             "export_onnx_cached (a file from export_onnx runs with OnnxCausalLM)")
        self.n_positions, self.vocab_size = int(meta["n_positions"]), int(meta["vocab_size"])
        self.n_layer, self.n_head, self.head_dim = int(meta["n_layer"]), int(meta["n_head"]), int(meta["head_dim"])
        self.input_names, self.output_names = cache_names(self.n_layer)
        self.path = path

    def empty_past(self, batch_size: int) -> list[np.ndarray]:
        """The cache before the prompt: 2L float32 arrays of shape (batch, H, 0, D)."""
        return [np.zeros((batch_size, self.n_head, 0, self.head_dim), np.float32) for _ in range(2 * self.n_layer)]

    def step(self, input_ids: np.ndarray, past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """One call: (B, T) int64 ids and the cache -> ((B, T, V) logits, the cache T tokens longer)."""
        logits, *present = self.session.run(None, dict(zip(self.input_names, [input_ids, *past])))
        return logits, present

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding with the cache: (B, T) -> (B, T + max_new_tokens) ids (a torch tensor)."""
        check_int("max_new_tokens", max_new_tokens, minimum=0)
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype != torch.long:
            raise TypeError(f"input_ids must be a LongTensor (batch, seq_len) of token ids, got "
                            f"{getattr(input_ids, 'dtype', type(input_ids).__name__)}")
        if input_ids.ndim != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must have shape (batch, seq_len) with seq_len >= 1, got "
                             f"{tuple(input_ids.shape)}")
        total = input_ids.shape[1] + max_new_tokens
        if total > self.n_positions:
            raise ValueError(f"the prompt ({input_ids.shape[1]} tokens) plus max_new_tokens ({max_new_tokens}) is "
                             f"{total} tokens, more than the model's n_positions={self.n_positions}: shorten the "
                             "prompt or ask for fewer tokens (the cached graph does not slide its window)")
        ids = input_ids.detach().cpu().numpy()
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.vocab_size:
            raise ValueError(f"input_ids contains token id {lo if lo < 0 else hi}, outside the vocabulary "
                             f"[0, {self.vocab_size})")
        new, past, out = ids, self.empty_past(ids.shape[0]), [ids]
        for _ in range(max_new_tokens):
            logits, past = self.step(new, past)  # the prompt first, then one token per step
            new = logits[:, -1, :].argmax(axis=-1)[:, None].astype(np.int64)  # (B, 1): the greedy choice
            out.append(new)
        return torch.from_numpy(np.concatenate(out, axis=1))
