"""What the course's models (GPT, BERT, T5) share: input checks, weight renaming, save/load. Chapter 02.

* ``check_input_ids`` / ``check_attention_mask`` — fail early with a message a student can act on,
  instead of an IndexError deep inside ``nn.Embedding``;
* ``state_to_hf`` / ``state_from_hf`` — rename (and, for GPT-2's Conv1D, transpose) weights between
  the course's layout and the transformers one, driven by a per-model table of names;
* ``PretrainedMixin`` — ``save_pretrained`` / ``from_pretrained`` (config.json + model.safetensors,
  never pickle) and ``num_parameters``;
* ``context_length`` — the longest input a model (the course's or a transformers one) can read.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn as nn

__all__ = ["PretrainedMixin", "NameMap", "check_input_ids", "check_attention_mask", "state_to_hf",
           "state_from_hf", "CONFIG_NAME", "WEIGHTS_NAME", "CONTEXT_FIELDS", "context_length", "is_encoder_decoder"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


# Config fields that hold a model's context length, in the order they are tried: transformers'
# names (GPT-2 and the course's GPT: n_positions; BERT: max_position_embeddings; old GPT-2: n_ctx),
# then nanoGPT-style names.
CONTEXT_FIELDS: tuple[str, ...] = (
    "n_positions",
    "max_position_embeddings",
    "n_ctx",
    "block_size",
    "max_seq_len",
    "context_length",
)


# --------------------------------------------------------------------------------------------
# Shared by GPT, BERT and T5: input checks, saving and loading
# --------------------------------------------------------------------------------------------


def context_length(model: nn.Module) -> int | None:
    """The longest input ``model`` can read, from its config; None if it has no fixed limit. Chapter 02.

    A model with learned (or sinusoidal) position embeddings has one row per position, so it cannot
    read past ``n_positions`` (GPT-2, the course's GPT) or ``max_position_embeddings`` (BERT) tokens.
    T5's relative position buckets have no table to run off, so a T5 (the course's or transformers')
    gives None. The first positive integer among ``CONTEXT_FIELDS`` of ``model.config`` wins; what to
    do for a model without a limit is the caller's choice (decoding has none, the attention explorer
    caps its input).
    """
    config = getattr(model, "config", None)
    for name in CONTEXT_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def is_encoder_decoder(model: nn.Module) -> bool:
    """True for a T5-style model (the course's ``T5`` or a transformers encoder-decoder). Chapter 02.

    Such a model reads its input with an encoder and writes with a decoder that starts from its own
    start token, so it is decoded differently from a GPT: its forward takes ``decoder_input_ids``
    (transformers' configs also say ``is_encoder_decoder``).
    """
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return True
    forward = getattr(model, "forward", None)
    return forward is not None and "decoder_input_ids" in inspect.signature(forward).parameters


def check_input_ids(input_ids: Any, vocab_size: int, name: str = "input_ids") -> torch.Tensor:
    """Check token ids early, with a message, instead of an IndexError deep in nn.Embedding. Chapter 02."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(input_ids).__name__}")
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids (torch.long), got dtype {input_ids.dtype}")
    if input_ids.ndim != 2:
        hint = f" (a single sequence? use {name}[None])" if input_ids.ndim == 1 else ""
        raise ValueError(f"{name} must have shape (batch, seq_len), got {tuple(input_ids.shape)}{hint}")
    if input_ids.shape[1] == 0:
        raise ValueError(f"{name} is empty (seq_len 0): give the model at least one token")
    if torch.compiler.is_compiling():
        # torch.export / torch.compile trace with symbolic ids (a shape, no values): the value check
        # cannot run there. The ONNX wrapper (llm_course.infer.onnx_export) checks the real ids instead.
        return input_ids
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"{name} contains token id {bad}, outside the vocabulary [0, {vocab_size}): the tokenizer and "
            "config.vocab_size disagree (or -100 labels were passed as inputs)"
        )
    return input_ids.long()


def check_attention_mask(attention_mask: torch.Tensor | None, shape: tuple[int, int], what: str) -> None:
    """``attention_mask`` must be (B, T) like the tokens it describes. Chapter 02 (architectures)."""
    if attention_mask is None:
        return
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
    if tuple(attention_mask.shape) != tuple(shape):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but should be {tuple(shape)} ({what}), "
            "with 1 for real tokens and 0 for padding"
        )


# A conversion table: (our tensor name, the transformers tensor name(s), transpose?). Several names
# means our tensor is theirs stacked along dim 0 (e.g. our fused qkv_proj = BERT's query, key, value).
NameMap = list[tuple[str, tuple[str, ...], bool]]


def state_to_hf(state: dict[str, torch.Tensor], names: NameMap) -> dict[str, torch.Tensor]:
    """Rename (and split / transpose) our tensors into a transformers state dict. Chapter 02."""
    missing = [ours for ours, _, _ in names if ours not in state]
    if missing:
        extra = sorted(set(state) - {ours for ours, _, _ in names})[:3]
        raise ValueError(
            f"the model's weights do not have the plain layout ({missing[0]!r} is missing; found e.g. {extra}): "
            "wrapped layers (LoRA, adapters, quantized layers) must be merged or removed first, e.g. "
            "llm_course.train.lora.remove_lora(model) or llm_course.train.adapters.remove_adapters(model)"
        )
    out = {}
    for ours, theirs, transpose in names:
        t = state[ours].t() if transpose else state[ours]
        for name, part in zip(theirs, t.chunk(len(theirs), dim=0)):
            out[name] = part.clone()
    return out


def state_from_hf(hf_state: dict[str, torch.Tensor], names: NameMap) -> dict[str, torch.Tensor]:
    """The inverse of ``state_to_hf``: stack and transpose transformers tensors into ours. Chapter 02."""
    out = {}
    for ours, theirs, transpose in names:
        t = torch.cat([hf_state[name] for name in theirs], dim=0)
        out[ours] = (t.t() if transpose else t).clone()
    return out


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` / ``num_parameters`` for the course's models. Chapter 02.

    A checkpoint is a directory with ``config.json`` (the dataclass config plus ``model_type``) and
    ``model.safetensors`` (the weights; never pickle, which can run code when loaded). Tied weights
    (an LM head that *is* the embedding matrix) are stored once and re-tied on load.
    """

    config_class: ClassVar[type]
    model_type: ClassVar[str]
    tied_weights: ClassVar[tuple[str, ...]] = ()

    def save_pretrained(self, save_directory: str | Path) -> Path:
        """Write config.json and model.safetensors into ``save_directory`` (created if needed)."""
        from safetensors.torch import save_file

        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"model_type": self.model_type, **dataclasses.asdict(self.config)}
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items() if k not in self.tied_weights}
        save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "model_type": self.model_type})
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: torch.device | str = "cpu"):
        """Load a model saved by ``save_pretrained`` (a local directory; nothing is downloaded).

        Like ``transformers``, the model comes back in eval mode (dropout off): call ``.train()`` to train.
        """
        from safetensors.torch import load_file

        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(
                f"{directory} is not a directory; pass the folder that save_pretrained() wrote "
                f"(with {CONFIG_NAME} and {WEIGHTS_NAME})"
            )
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing; was the model saved with save_pretrained()?")
        try:
            raw = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{config_path} is not valid JSON ({e}); re-save the model with save_pretrained()") from e
        if not isinstance(raw, dict):
            raise ValueError(f"{config_path} must hold a JSON object, got {type(raw).__name__}")
        model_type = raw.pop("model_type", None)
        if model_type != cls.model_type:
            raise ValueError(
                f"{config_path} describes a {model_type!r} model, not {cls.model_type!r}; "
                f"load it with the matching class instead of {cls.__name__}"
            )
        known = {f.name for f in dataclasses.fields(cls.config_class)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{config_path} has unknown fields {unknown} for {cls.config_class.__name__}")
        model = cls(cls.config_class(**raw))
        try:
            state = load_file(str(weights_path))
        except Exception as e:  # safetensors raises its own error type for truncated/corrupt files
            raise ValueError(f"{weights_path} is not a valid safetensors file ({e}); re-save the model") from e
        expected = {k: v for k, v in model.state_dict().items() if k not in cls.tied_weights}
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"{weights_path} does not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}"
                 for k, v in expected.items() if state[k].shape != v.shape]
        if wrong:
            raise ValueError(f"{weights_path} has tensors of the wrong shape (file vs config): {wrong[:5]}")
        model.load_state_dict(state, strict=False)  # strict=False only because tied weights are not stored
        return model.to(device).eval()

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Number of parameters, tied ones counted once (as ``transformers``' ``num_parameters``).

        ``exclude_embeddings=True`` leaves out every ``nn.Embedding`` (tokens, positions, segments, T5's
        relative position buckets), the usual way to compare model sizes.
        """
        skip = set()
        if exclude_embeddings:
            skip = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        seen: dict[int, int] = {}
        for p in self.parameters():  # parameters() already yields a tied tensor only once
            if id(p) not in skip:
                seen[id(p)] = p.numel()
        return sum(seen.values())
