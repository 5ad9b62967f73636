"""ONNX export and ONNX Runtime inference for the course GPT. Chapter 07 (inference).

ONNX is a file format for a computation graph (operators + weights) that runtimes other than PyTorch
can execute: ONNX Runtime on a CPU, or on GPUs through its CUDA and TensorRT *execution providers*.
The path here::

    path = export_onnx(model, "gpt.onnx")          # GPT or transformers GPT2LMHeadModel -> file
    ort_model = OnnxCausalLM(path)                 # an onnxruntime.InferenceSession + checks
    logits = ort_model(input_ids)                  # (B, T, V), any B and any T <= n_positions
    check_onnx_logits(model, ort_model, input_ids) # max |difference| from PyTorch, must be <= 1e-4
    ids = ort_model.generate(input_ids, 20)        # greedy decoding, the same ids as llm_course.infer.generation
                                                   # .generate(model, ids, max_new_tokens=20, slide_context=True)
    quantize_onnx_int8(path, "gpt-int8.onnx")      # ONNX Runtime's own dynamic int8 quantization

This graph has no KV cache, so each generated token re-runs the whole window: fast for short contexts,
slower than PyTorch with its cache for long ones (benchmarks/bench_inference.py measures both). The
graph with the cache as inputs and outputs (``past_key_values.*`` in, ``present.*`` out, as Optimum
exports it) is ``llm_course.infer.onnx_cache.export_onnx_cached``.

**Which exporter.** Since PyTorch 2.9, ``torch.onnx.export(..., dynamo=True)`` is the default: it
captures the graph with ``torch.export`` and translates it with ``onnxscript`` (a required package).
Variable sizes are declared with ``dynamic_shapes`` (``torch.export.Dim``). The older TorchScript
exporter (``dynamo=False``, sizes declared with ``dynamic_axes``) traces one run of the model and is
deprecated; ``export_onnx(..., dynamo=False)`` still offers it for the course GPT (it runs faster), but
it cannot export transformers 5's ``GPT2LMHeadModel`` (its mask code uses ``aten::diff``, which the
TorchScript exporter does not support): use the default for those.

Where the manual goes wrong (ERRATA section 7): it exports a Hugging Face model directly. Its forward
returns a dict with the KV cache (``past_key_values``) next to the logits, and the export fixes the
example's batch size and length. Here ``LogitsOnly`` wraps the model so the graph has one input
(``input_ids``) and one output (``logits``), with ``use_cache=False``; batch and sequence axes are
dynamic (the tests run one file at two batch sizes and lengths), and ``check_onnx_logits`` compares
ONNX Runtime with PyTorch.

**GPUs: CUDA and TensorRT.** The ``onnxruntime`` package runs on the CPU only. ``pip install
onnxruntime-gpu`` (instead of ``onnxruntime``, on a machine with an NVIDIA GPU, CUDA 12 and cuDNN 9)
adds ``CUDAExecutionProvider``, and with NVIDIA's TensorRT libraries installed too,
``TensorrtExecutionProvider``, which compiles the graph into a TensorRT engine (optionally in fp16 or
int8) the first time it sees an input shape. ``execution_providers("cuda" | "tensorrt")`` returns
the provider list to pass to ``OnnxCausalLM`` (TensorRT first, CUDA for the operators TensorRT does
not support, CPU last), or raises a clear error when this onnxruntime build lacks them.

**TensorRT** (NVIDIA's inference compiler) takes a graph and builds an *engine* for one GPU model and
one TensorRT version: it fuses layers (matmul + bias + activation, attention), picks the fastest kernel
for each layer by timing candidates on that GPU, runs in fp16 or int8 where allowed, and plans memory
once. Dynamic sizes become an *optimization profile* (min / opt / max shape per input); an input outside
it needs another engine. Three routes: ONNX Runtime's TensorRT provider on the exported file
(``tensorrt_session``: engines built on first use, cached on disk); ``trtexec --onnx=gpt.onnx
--saveEngine=gpt.plan --minShapes=input_ids:1x1 --optShapes=input_ids:1x64 --maxShapes=input_ids:4x256
[--fp16]``, the command-line builder shipped with TensorRT; or ``torch_tensorrt.compile`` straight from
PyTorch. ``tensorrt_status()`` says whether this machine can run any of it, and if not, why.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from llm_course.core.checks import check_choice, check_int, check_positive_int
from llm_course.core.deps import MissingDependencyError, require
from llm_course.core.runtime import eval_mode
from llm_course.models.gpt import GPT

__all__ = [
    "LogitsOnly",
    "export_onnx",
    "OnnxCausalLM",
    "check_onnx_logits",
    "quantize_onnx_int8",
    "available_providers",
    "execution_providers",
    "tensorrt_status",
    "tensorrt_session",
]

INPUT_NAME, OUTPUT_NAME = "input_ids", "logits"


def _is_hf_gpt2(model: object) -> bool:
    try:
        from transformers import GPT2LMHeadModel
    except ImportError:  # pragma: no cover - transformers is a core dependency
        return False
    return isinstance(model, GPT2LMHeadModel)


class LogitsOnly(nn.Module):
    """Wrap a causal LM so that ``forward(input_ids) -> logits`` only. Chapter 07 (inference).

    ``model``: the course ``GPT`` or a ``transformers.GPT2LMHeadModel``. Both are called with
    ``use_cache=False``, so no KV cache is built or returned, and only the (B, T, V) logits tensor
    leaves the graph (a Hugging Face model returns a ``ModelOutput`` dict with the cache in it).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not isinstance(model, GPT) and not _is_hf_gpt2(model):
            raise TypeError(f"LogitsOnly wraps a llm_course GPT or a transformers GPT2LMHeadModel, got "
                            f"{type(model).__module__}.{type(model).__name__}")
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, V) logits."""
        if isinstance(self.model, GPT):
            return self.model(input_ids, use_cache=False).logits
        return self.model(input_ids=input_ids, use_cache=False, return_dict=True).logits


def _config_numbers(model: nn.Module) -> tuple[int, int]:
    """(n_positions, vocab_size) of a GPT or a GPT2LMHeadModel."""
    return model.config.n_positions, model.config.vocab_size


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    example_input_ids: torch.Tensor | None = None,
    dynamo: bool = True,
    opset_version: int | None = None,
) -> Path:
    """Export a GPT (or ``GPT2LMHeadModel``) to an ONNX file: ``input_ids`` (B, T) -> ``logits``. Chapter 07.

    Batch size B and length T are dynamic (any B >= 1 and 1 <= T <= n_positions at run time).
    ``example_input_ids``: the ids traced through the model (default: random, batch 2, length
    min(8, n_positions)); its sizes should not be 1, which exporters may treat as a constant.
    ``dynamo=True``: the current exporter (``torch.export`` + onnxscript); ``False``: the deprecated
    TorchScript one. The model's context length and vocabulary size are stored in the file's metadata
    (``OnnxCausalLM`` reads them). The model is exported in eval mode on the CPU; it is not changed.
    Returns the path.
    """
    if not isinstance(model, GPT) and not _is_hf_gpt2(model):
        raise TypeError(f"export_onnx needs a llm_course GPT or a transformers GPT2LMHeadModel, got "
                        f"{type(model).__module__}.{type(model).__name__}")
    onnx = require("onnx")
    if dynamo:
        require("onnxscript")  # the dynamo exporter translates the graph with it
    n_positions, vocab_size = _config_numbers(model)
    if example_input_ids is None:
        g = torch.Generator().manual_seed(0)
        example_input_ids = torch.randint(0, vocab_size, (2, min(8, n_positions)), generator=g)
    if not isinstance(example_input_ids, torch.Tensor):
        raise TypeError(f"example_input_ids must be a (batch, seq_len) tensor of token ids, got "
                        f"{type(example_input_ids).__name__}")
    if example_input_ids.ndim != 2:
        raise ValueError(f"example_input_ids must have shape (batch, seq_len), got {tuple(example_input_ids.shape)}")
    if example_input_ids.shape[1] > n_positions:
        raise ValueError(f"example_input_ids has {example_input_ids.shape[1]} tokens, more than the model's "
                         f"n_positions={n_positions}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    ids = example_input_ids.cpu().long()
    with eval_mode(model):  # restores each submodule's train/eval mode afterwards
        wrapper = LogitsOnly(model.cpu()).eval()
        try:
            with torch.no_grad(), warnings.catch_warnings():
                if dynamo:
                    # Dim("seq", max=n_positions): the exporter proves the graph is valid for these sizes only
                    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=n_positions)
                    program = torch.onnx.export(
                        wrapper, (ids,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                        dynamic_shapes={INPUT_NAME: {0: batch, 1: seq}}, opset_version=opset_version, verbose=False,
                    )
                    program.save(str(path))
                else:
                    axes = {INPUT_NAME: {0: "batch", 1: "seq"}, OUTPUT_NAME: {0: "batch", 1: "seq"}}
                    # Tracing turns the model's Python checks on sizes (e.g. T <= n_positions) into constants
                    # and warns about each; OnnxCausalLM makes those checks on every input instead.
                    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
                    torch.onnx.export(
                        wrapper, (ids,), str(path), dynamo=False, input_names=[INPUT_NAME],
                        output_names=[OUTPUT_NAME], dynamic_axes=axes, opset_version=opset_version or 17,
                    )
        finally:
            model.to(device)
    proto = onnx.load(str(path))
    for key, value in {"n_positions": n_positions, "vocab_size": vocab_size,
                       "source": type(model).__name__}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(proto, str(path))
    return path


def quantize_onnx_int8(path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """int8 dynamic quantization of an exported file with ONNX Runtime's own tool. Chapter 07.

    ``onnxruntime.quantization.quantize_dynamic``: the weights of every MatMul become int8 (one scale per
    output channel), activations are quantized to uint8 per batch at run time, and the products run
    in ONNX Runtime's integer kernels. The same idea as
    ``llm_course.nn.quantization.quantize_int8_library(model, "torch.ao-dynamic")``, in another runtime.

    ``reduce_range=True`` (weights in 7 bits, [-64, 63]): on x86 CPUs without VNNI (AVX2, most
    AVX-512) the uint8 x int8 kernel adds pairs of products in 16-bit registers, which saturate with
    full-range weights. Measured on the tests' tiny GPT: 20% logit error with 8-bit weights, 1.5%
    with 7-bit ones. Returns ``out_path`` (it keeps the n_positions / vocab_size metadata).
    """
    require("onnxruntime")
    require("onnx")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path, out_path = Path(path), Path(out_path)
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX file {path}; create it with export_onnx(model, {str(path)!r})")
    # it logs a suggestion to run its shape-inference pre-processing first: optional for this graph
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(path, out_path, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
    finally:
        root.setLevel(level)
    return out_path


def available_providers() -> list[str]:
    """The execution providers of the installed onnxruntime build. Chapter 07 (inference)."""
    ort = require("onnxruntime")
    return list(ort.get_available_providers())


_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def execution_providers(device: str = "cpu") -> list[str]:
    """The provider list for ``OnnxCausalLM`` on ``device`` ("cpu", "cuda", "tensorrt"). Chapter 07.

    Providers are tried in order per operator; the CPU comes last as a fallback. Raises a
    ``ValueError`` naming what to install when this onnxruntime build lacks the GPU providers (the
    plain ``onnxruntime`` wheel has only the CPU; see the module docstring).
    """
    check_choice("device", device, sorted(_PROVIDERS))
    wanted, have = _PROVIDERS[device], available_providers()
    missing = [p for p in wanted if p not in have]
    if missing:
        raise ValueError(
            f"{', '.join(missing)} not available in this onnxruntime build (it has {have}). For NVIDIA GPUs: "
            "pip uninstall onnxruntime && pip install onnxruntime-gpu (needs CUDA 12 and cuDNN 9; TensorRT "
            "also needs NVIDIA's TensorRT libraries). On a CPU-only machine use device='cpu'."
        )
    return list(wanted)


def tensorrt_status() -> tuple[bool, str]:
    """Can TensorRT run here, and if not, why not. Chapter 07 (inference).

    Returns ``(True, what was found)`` when there is a CUDA GPU, NVIDIA's ``tensorrt`` package and an
    onnxruntime build with ``TensorrtExecutionProvider``; else ``(False, the first thing missing and how
    to get it)``. Checks only: builds nothing.
    """
    if not torch.cuda.is_available():
        return False, ("no CUDA GPU here (torch.cuda.is_available() is False): TensorRT builds engines for NVIDIA "
                       "GPUs only, so there is nothing to run it on")
    if importlib.util.find_spec("tensorrt") is None:
        return False, ("a CUDA GPU is present but TensorRT is not installed: pip install tensorrt (NVIDIA's "
                       "libraries for CUDA 12)")
    try:
        have = available_providers()
    except MissingDependencyError:
        have = []
    if "TensorrtExecutionProvider" not in have:
        return False, (f"TensorRT is installed but onnxruntime has no TensorRT provider (it has {have}): "
                       "pip uninstall onnxruntime && pip install onnxruntime-gpu")
    import tensorrt

    return True, (f"{torch.cuda.get_device_name()}, CUDA {torch.version.cuda}, TensorRT {tensorrt.__version__}, "
                  f"onnxruntime {require('onnxruntime').__version__}")


def tensorrt_session(path: str | os.PathLike, max_batch: int = 4, fp16: bool = False,
                     cache_dir: str | os.PathLike | None = None) -> OnnxCausalLM:
    """An exported GPT run by ONNX Runtime's TensorRT provider. Chapter 07 (inference).

    One optimization profile covers batch 1..``max_batch`` and length 1..n_positions (opt: batch 1, the
    full window), so one engine serves a whole greedy loop; it is built on the first call (seconds to
    minutes) and cached in ``cache_dir`` (default: next to the file). ``fp16``: let TensorRT run layers
    in half precision (faster, further from PyTorch's logits). Even in fp32 TensorRT may use TF32 matrix
    multiplies (its default on Ampere and newer GPUs), so compare logits with a tolerance near 1e-2,
    not ONNX Runtime's 1e-4 on the CPU. CUDA covers the operators TensorRT lacks. Raises ``RuntimeError``
    with ``tensorrt_status()``'s reason when this machine cannot run TensorRT, or when the session fell
    back to another provider.
    """
    ready, why = tensorrt_status()
    if not ready:
        raise RuntimeError(f"TensorRT cannot run here: {why}")
    check_positive_int("max_batch", max_batch)
    import tensorrt  # noqa: F401  (loads TensorRT's libraries into the process, where onnxruntime finds them)

    path = Path(path)
    meta = OnnxCausalLM(path).n_positions  # checks the file and reads its context length on the CPU
    cache = Path(cache_dir) if cache_dir is not None else path.parent / "tensorrt-cache"
    cache.mkdir(parents=True, exist_ok=True)
    options = {
        "trt_fp16_enable": fp16,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_profile_min_shapes": f"{INPUT_NAME}:1x1",
        "trt_profile_opt_shapes": f"{INPUT_NAME}:1x{meta}",
        "trt_profile_max_shapes": f"{INPUT_NAME}:{max_batch}x{meta}",
    }
    session = OnnxCausalLM(path, providers=[("TensorrtExecutionProvider", options), "CUDAExecutionProvider",
                                            "CPUExecutionProvider"])
    if "TensorrtExecutionProvider" not in session.providers:
        raise RuntimeError(f"onnxruntime did not load its TensorRT provider (it uses {session.providers}): are "
                           "TensorRT's libraries on the library path (LD_LIBRARY_PATH)?")
    return session


class OnnxCausalLM:
    """An exported GPT run by ONNX Runtime: logits and greedy generation. Chapter 07 (inference).

    ``path``: a file from ``export_onnx``. ``providers``: e.g. ``execution_providers("cuda")``
    (default: the CPU). ``intra_op_num_threads``: threads for one operator (None: onnxruntime's
    default, one per physical core). Inputs are checked here (shape, dtype, ids in the vocabulary,
    length <= n_positions) with clear errors, before ONNX Runtime sees them.
    """

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] = ("CPUExecutionProvider",),
                 intra_op_num_threads: int | None = None) -> None:
        ort = require("onnxruntime")
        check_positive_int("intra_op_num_threads", intra_op_num_threads, allow_none=True)
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no ONNX file {path}; create it with export_onnx(model, {str(path)!r})")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # fuse ops, fold constants
        if intra_op_num_threads is not None:
            options.intra_op_num_threads = intra_op_num_threads
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
        meta = self.session.get_modelmeta().custom_metadata_map
        if "n_positions" not in meta or "vocab_size" not in meta:
            raise ValueError(f"{path} has no n_positions / vocab_size metadata: export it with export_onnx")
        self.n_positions, self.vocab_size = int(meta["n_positions"]), int(meta["vocab_size"])
        self.path = path

    @property
    def providers(self) -> list[str]:
        """The execution providers the session uses."""
        return self.session.get_providers()

    def _check(self, input_ids: torch.Tensor | np.ndarray) -> np.ndarray:
        if isinstance(input_ids, torch.Tensor):
            input_ids = input_ids.detach().cpu().numpy()
        if not isinstance(input_ids, np.ndarray) or not np.issubdtype(input_ids.dtype, np.integer):
            raise TypeError(f"input_ids must be an integer tensor or array of token ids, got "
                            f"{getattr(input_ids, 'dtype', type(input_ids).__name__)}")
        if input_ids.ndim != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must have shape (batch, seq_len) with seq_len >= 1, got {input_ids.shape}")
        if input_ids.shape[1] > self.n_positions:
            raise ValueError(f"sequence too long: {input_ids.shape[1]} tokens, but the model has only "
                             f"n_positions={self.n_positions} positions; keep the last {self.n_positions} tokens")
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= self.vocab_size:
            raise ValueError(f"input_ids contains token id {lo if lo < 0 else hi}, outside the vocabulary "
                             f"[0, {self.vocab_size})")
        return input_ids.astype(np.int64)

    def logits(self, input_ids: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(B, T) token ids -> (B, T, V) float32 logits (a torch tensor on the CPU)."""
        (out,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: self._check(input_ids)})
        return torch.from_numpy(out)

    __call__ = logits

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding: append the argmax token ``max_new_tokens`` times. (B, T) -> (B, T + n).

        The exported graph has no KV cache, so each step runs the whole window again: the last
        ``n_positions`` tokens, which is also what ``llm_course.infer.generation.generate`` with
        ``slide_context=True`` attends to (its cache holds the same keys and values), so both give the same ids.
        """
        check_int("max_new_tokens", max_new_tokens, minimum=0)
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"input_ids must be a torch.Tensor (batch, seq_len), got {type(input_ids).__name__}")
        ids = input_ids.detach().cpu().long()
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(f"input_ids must have shape (batch, seq_len) with seq_len >= 1, got {tuple(ids.shape)}")
        for _ in range(max_new_tokens):
            logits = self.logits(ids[:, -self.n_positions:])[:, -1, :]  # (B, V): the next token's scores
            ids = torch.cat([ids, logits.argmax(dim=-1, keepdim=True)], dim=1)
        return ids


def check_onnx_logits(model: nn.Module, onnx_model: OnnxCausalLM, input_ids: torch.Tensor,
                      atol: float = 1e-4) -> float:
    """Largest |logit difference| between PyTorch and ONNX Runtime on ``input_ids``. Chapter 07.

    Raises ``ValueError`` if it exceeds ``atol`` (float32 graphs agree to about 1e-6; fused kernels
    add rounding differences, not more). ``model``: the GPT / GPT2LMHeadModel that was exported.
    """
    if not isinstance(onnx_model, OnnxCausalLM):
        raise TypeError(f"onnx_model must be an OnnxCausalLM, got {type(onnx_model).__name__}")
    ort_logits = onnx_model.logits(input_ids)
    wrapper = LogitsOnly(model)
    with eval_mode(model):
        with torch.no_grad():
            ref = wrapper(input_ids.to(next(model.parameters()).device)).float().cpu()
    diff = (ref - ort_logits).abs().max().item()
    if not diff <= atol:
        raise ValueError(f"ONNX Runtime logits differ from PyTorch by {diff:.3g} > atol={atol:g}: was the "
                         "file exported from this model (and the model not changed since)?")
    return diff
