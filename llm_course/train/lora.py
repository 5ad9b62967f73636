"""LoRA, written out. Chapter 06 (parameter-efficient fine-tuning).

Fine-tuning every weight of a model needs, per parameter, the weight, its gradient and Adam's two
moment estimates: 16 bytes in float32, four times the model. **LoRA** (Hu et al. 2021) freezes the
pretrained weight ``W`` (out, in) and learns a low-rank *update* next to it::

    h = W x + (alpha / r) * B A x          A: (r, in), B: (out, r), r << min(in, out)

Only ``A`` and ``B`` are trained: r * (in + out) numbers instead of in * out. The frozen ``W`` gets no
gradient and no Adam state, which is where the memory goes (``finetuning_costs.lora_weight_memory``).

* ``A`` starts random (Kaiming-uniform, as ``nn.Linear`` and peft initialise it) and ``B`` starts at
  zero, so ``B A = 0``: training starts *exactly* from the base model, and the first gradient step
  moves ``B`` (its gradient is ``dL/dh (A x)^T``, non-zero because ``A`` is not).
* ``alpha / r`` ("scaling") keeps the size of the update comparable when you change ``r``.
* After training ``W + (alpha / r) B A`` can be *merged* into one matrix (``merge_lora``): the
  adapted model then costs nothing extra at inference; ``unmerge_lora`` subtracts it again.

``LoRALinear`` wraps one layer: ``nn.Linear``, GPT-2's ``Conv1D`` (transformers stores its weight
transposed, as (in, out)) or a 4-bit ``NF4Linear``. ``apply_lora`` puts it on the layers you name
(``target_modules``, matched like peft: the end of the dotted module name) and freezes everything
else. Its sub-modules are called ``base_layer``, ``lora_A`` and ``lora_B`` like peft's, so a peft
adapter's ``lora_A.weight`` / ``lora_B.weight`` copy straight in (the tests check the logits agree).

``peft_lora_config`` is the same adapter with the library (peft's ``LoraConfig``, its targets checked).
QLoRA (a 4-bit NF4 base under the same ``LoRALinear``) is ``llm_course.train.qlora``.

Where the manual goes wrong (ERRATA section 6):

* ``target_modules=["q_proj", "v_proj"]`` on GPT-2: GPT-2 has no such layers. Its attention has one
  fused q/k/v projection ``c_attn`` (a ``Conv1D``); ours is ``qkv_proj``. ``apply_lora`` and
  ``peft_lora_config`` say so instead of silently adapting nothing.
* Its QLoRA is plain LoRA on a float model: see ``llm_course.train.qlora``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from llm_course.core.checks import check_fraction, check_positive, check_positive_int
from llm_course.core.deps import require
from llm_course.core.runtime import module_device
from llm_course.nn.quantization import NF4Linear, is_conv1d, tied_weight

__all__ = [
    "LoRALinear",
    "default_target_modules",
    "lora_targets",
    "check_lora_hyperparameters",
    "apply_lora",
    "merge_lora",
    "unmerge_lora",
    "remove_lora",
    "lora_state_dict",
    "copy_lora_from_peft",
    "peft_lora_config",
]


# --------------------------------------------------------------------------------------------
# Layers LoRA can wrap
# --------------------------------------------------------------------------------------------


def _wrappable(layer: nn.Module) -> bool:
    return isinstance(layer, (nn.Linear, NF4Linear)) or is_conv1d(layer)


def _in_out_features(layer: nn.Module) -> tuple[int, int]:
    """(in, out) of a Linear, NF4Linear or Conv1D (whose weight is stored as (in, out))."""
    if is_conv1d(layer):
        return layer.weight.shape[0], layer.weight.shape[1]
    return layer.in_features, layer.out_features


_NF4_MERGE_MESSAGE = (
    "cannot merge LoRA into a 4-bit NF4 base weight: W + (alpha/r) B A is a new float matrix, and "
    "storing it in NF4 would mean re-quantizing it (rounding the learned update to the 16 NF4 levels and "
    "adding fresh quantization error). Either keep the adapter separate (QLoRA inference runs the 4-bit "
    "base plus the float adapter), or dequantize first: remove_lora(model, merge=True, dequantize=True) "
    "gives float nn.Linear layers holding the merged weight"
)


class LoRALinear(nn.Module):
    """A frozen layer plus a trainable low-rank update: ``base(x) + (alpha/r) B A dropout(x)``. Chapter 06.

    ``base_layer``: an ``nn.Linear`` (out, in), a transformers ``Conv1D`` (weight stored as (in, out):
    GPT-2's c_attn, c_proj, c_fc) or an ``NF4Linear`` (QLoRA). Its parameters are frozen here.
    ``lora_A``: ``nn.Linear(in, r)`` (weight (r, in)), Kaiming-uniform like ``nn.Linear`` and peft.
    ``lora_B``: ``nn.Linear(r, out)`` (weight (out, r)), zeros, so a fresh adapter changes nothing.
    ``scaling = alpha / r``. ``merged``: True after ``merge()``, when the update lives in the base weight
    and ``forward`` must not add it a second time. Usually built by ``apply_lora``.
    """

    def __init__(self, base_layer: nn.Module, r: int = 8, alpha: float = 16, dropout: float = 0.0) -> None:
        super().__init__()
        if not _wrappable(base_layer):
            raise TypeError(f"LoRALinear wraps an nn.Linear, a transformers Conv1D or an NF4Linear, "
                            f"got {type(base_layer).__name__}")
        in_features, out_features = _in_out_features(base_layer)
        check_lora_hyperparameters(r, alpha, dropout)
        if r > min(in_features, out_features):
            raise ValueError(f"r={r} is larger than min(in, out) = min({in_features}, {out_features}): a rank-r "
                             "update of this layer needs r <= both sizes (LoRA uses r much smaller, e.g. 4-16)")
        self.in_features, self.out_features = in_features, out_features
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        self.base_layer = base_layer.requires_grad_(False)  # frozen: no gradients, no optimizer state
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        device = module_device(base_layer)
        self.lora_A = nn.Linear(in_features, r, bias=False, device=device)  # weight (r, in)
        self.lora_B = nn.Linear(r, out_features, bias=False, device=device)  # weight (out, r)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # nn.Linear's default init, as in peft
        nn.init.zeros_(self.lora_B.weight)  # B A = 0: the adapted model starts as the base model
        self.merged = False

    @property
    def is_quantized(self) -> bool:
        """Whether the base weight is 4-bit NF4 (QLoRA)."""
        return isinstance(self.base_layer, NF4Linear)

    def delta_weight(self) -> torch.Tensor:
        """``(alpha/r) B A`` laid out like the base weight: (out, in), or (in, out) for a Conv1D."""
        delta = self.scaling * (self.lora_B.weight @ self.lora_A.weight)  # (out, r) @ (r, in) -> (out, in)
        return delta.T if is_conv1d(self.base_layer) else delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out). The LoRA path runs in the adapter's dtype (float32 by default)."""
        result = self.base_layer(x)
        if self.merged:  # the update is already inside the base weight
            return result
        x = x.to(self.lora_A.weight.dtype)
        update = self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling  # (..., in) -> (..., r) -> (..., out)
        return (result + update).to(result.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Add ``(alpha/r) B A`` into the base weight (then ``forward`` is one matmul). Not for NF4 bases."""
        if self.is_quantized:
            raise ValueError(_NF4_MERGE_MESSAGE)
        if self.merged:
            raise ValueError("this LoRA layer is already merged; call unmerge() first")
        weight = self.base_layer.weight
        weight += self.delta_weight().to(weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract ``(alpha/r) B A`` from the base weight again (undo ``merge``)."""
        if not self.merged:
            raise ValueError("this LoRA layer is not merged; there is nothing to unmerge")
        weight = self.base_layer.weight
        weight -= self.delta_weight().to(weight.dtype)
        self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:g}, merged={self.merged}"


def _dequantized_linear(layer: NF4Linear) -> nn.Linear:
    """A frozen float32 ``nn.Linear`` holding the weight an ``NF4Linear`` stands for."""
    linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device=layer.packed.device)
    with torch.no_grad():
        linear.weight.copy_(layer.dequantized_weight())
        if layer.bias is not None:
            linear.bias.copy_(layer.bias)
    return linear.requires_grad_(False)


# --------------------------------------------------------------------------------------------
# Choosing and checking the target layers
# --------------------------------------------------------------------------------------------

# Names other architectures give their attention projections. GPT-2 and the course's models fuse
# q, k and v into one layer, so asking for any of these means "the fused one".
_SEPARATE_QKV = ("q_proj", "k_proj", "v_proj", "query", "key", "value", "q", "k", "v", "Wqkv")
_FUSED_QKV = ("qkv_proj", "c_attn")


def check_lora_hyperparameters(r: Any, alpha: Any, dropout: Any) -> None:
    """Check LoRA's rank ``r`` (an int >= 1), ``alpha`` (a number > 0), ``dropout`` (in [0, 1)). Chapter 06."""
    check_positive_int("r", r, hint="the LoRA rank, e.g. 8")
    check_positive("alpha", alpha, hint="the update is scaled by alpha / r")
    check_fraction("dropout", dropout)


def _matches(name: str, target: str) -> bool:
    """peft's rule for a list of names: the module's dotted name is ``target`` or ends with ``.target``."""
    return name == target or name.endswith("." + target)


def _leaf_names(model: nn.Module) -> list[str]:
    """The distinct last parts of the names of the layers LoRA can wrap (what ``target_modules`` takes).

    A layer whose weight is tied to another module (GPT's lm_head) is left out: see ``_resolve_targets``.
    """
    return sorted({name.rpartition(".")[2] for name, m in model.named_modules()
                   if name and _wrappable(m) and not (hasattr(m, "weight") and tied_weight(model, m))})


def default_target_modules(model: nn.Module) -> list[str]:
    """The layers LoRA adapts when ``target_modules=None``. Chapter 06.

    The fused attention projection when the model has one: ``["qkv_proj"]`` for the course's GPT /
    BERT, ``["c_attn"]`` for GPT-2 (the original LoRA paper adapts W_q and W_v; with a fused layer the
    closest is the whole q/k/v projection). Otherwise peft's per-architecture default for
    ``model.config.model_type`` (e.g. Llama: q_proj, v_proj).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    leaves = _leaf_names(model)
    for fused in _FUSED_QKV:
        if fused in leaves:
            return [fused]
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type is not None:
        try:
            from peft.utils import (
                TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as mapping,
            )
        except ImportError:
            mapping = {}
        if model_type in mapping:
            return list(mapping[model_type])
    raise ValueError(f"no default LoRA target for a {type(model).__name__}; pass target_modules=[...] with names "
                     f"of its Linear layers: {leaves}")


def lora_targets(model: nn.Module, target_modules: str | Sequence[str] | None, r: Any, alpha: Any,
                dropout: Any, caller: str) -> tuple[list[str], list[str]]:
    """Check everything ``apply_lora`` needs; returns (names of the layers to wrap, target names). Chapter 06.

    ``caller`` names the function in error messages. Changes nothing, so a function that must change the
    model first (``qlora.apply_qlora`` quantizes it) checks the targets before touching it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (e.g. llm_course.models.gpt.GPT), got {type(model).__name__}")
    check_lora_hyperparameters(r, alpha, dropout)
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError(f"{caller}: the model already has LoRA layers (apply_lora was applied); call "
                         "remove_lora(model) first, or keep training the adapters it has")
    if target_modules is None:
        target_modules = default_target_modules(model)
    if isinstance(target_modules, str):
        target_modules = [target_modules]
    if not isinstance(target_modules, Sequence) or not target_modules or \
            not all(isinstance(t, str) and t for t in target_modules):
        raise TypeError(f"target_modules must be a non-empty list of layer names, e.g. ['qkv_proj'], "
                        f"got {target_modules!r}")
    names = [name for name, _ in model.named_modules() if name and any(_matches(name, t) for t in target_modules)]
    missing = [t for t in target_modules if not any(_matches(name, t) for name in names)]
    if missing:
        leaves = _leaf_names(model)
        hint = ""
        fused = [f for f in _FUSED_QKV if f in leaves]
        if fused and any(t in _SEPARATE_QKV for t in missing):
            hint = (f" This model fuses the query, key and value projections into one layer, {fused[0]!r}"
                    f"{' (a transformers Conv1D, as in GPT-2)' if fused[0] == 'c_attn' else ''}: "
                    f"use target_modules=[{fused[0]!r}].")
        raise ValueError(f"target_modules {missing} match no module of this {type(model).__name__}.{hint} "
                         f"Layers LoRA can adapt here: {leaves}")
    for name in names:
        layer = model.get_submodule(name)
        if not _wrappable(layer):
            raise TypeError(f"{name!r} is a {type(layer).__name__}; LoRA wraps nn.Linear, transformers Conv1D or "
                            f"NF4Linear layers. Name the Linear layers inside it instead (one of {_leaf_names(model)})")
        if isinstance(layer, nn.Linear) and tied_weight(model, layer):
            raise ValueError(f"{name!r} shares its weight with another module (a tied lm_head is the token "
                             "embedding): merging an update into it would change both. Pick other target_modules")
        in_features, out_features = _in_out_features(layer)
        if r > min(in_features, out_features):
            raise ValueError(f"r={r} is larger than min(in, out) = {min(in_features, out_features)} of {name!r} "
                             f"({in_features} -> {out_features}); choose r <= {min(in_features, out_features)} "
                             "(LoRA works with small ranks such as 4-16)")
    return names, list(target_modules)


def _wrap(model: nn.Module, names: list[str], r: int, alpha: float, dropout: float) -> list[str]:
    """Replace each named layer by a ``LoRALinear`` around it and freeze every other parameter."""
    model.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), r, alpha, dropout))
    return names


def _lora_layers(model: nn.Module, caller: str) -> dict[str, LoRALinear]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    layers = {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}
    if not layers:
        raise ValueError(f"{caller}: the model has no LoRA layers; call apply_lora(model) first")
    return layers


# --------------------------------------------------------------------------------------------
# Adding, merging and removing adapters
# --------------------------------------------------------------------------------------------


def apply_lora(model: nn.Module, target_modules: str | Sequence[str] | None = None, r: int = 8,
               alpha: float = 16, dropout: float = 0.0) -> list[str]:
    """Put a ``LoRALinear`` on every target layer, freeze the rest; returns the wrapped names. Chapter 06.

    In place. ``target_modules``: layer names matched like peft, a module is adapted when its dotted
    name equals a target or ends with ``"." + target`` ("qkv_proj" adapts every ``h.i.attn.qkv_proj``;
    "h.0.attn.qkv_proj" only the first). None: ``default_target_modules(model)``. Each target must match
    a layer, and every match must be an ``nn.Linear``, ``Conv1D`` or ``NF4Linear``; everything is checked
    before the model is changed. After it, only ``lora_A`` / ``lora_B`` weights have
    ``requires_grad=True``: hand ``[p for p in model.parameters() if p.requires_grad]`` to the optimizer.
    """
    names, _ = lora_targets(model, target_modules, r, alpha, dropout, "apply_lora")
    return _wrap(model, names, r, alpha, dropout)


def merge_lora(model: nn.Module) -> list[str]:
    """Merge every unmerged LoRA layer into its base weight; returns their names. Chapter 06.

    The model then computes the same outputs with one matmul per layer (no adapter overhead). A 4-bit
    base cannot take a merge (see ``LoRALinear.merge``): that is a ``ValueError`` before anything changes.
    """
    layers = _lora_layers(model, "merge_lora")
    if any(layer.is_quantized for layer in layers.values()):
        raise ValueError(_NF4_MERGE_MESSAGE)
    todo = [name for name, layer in layers.items() if not layer.merged]
    for name in todo:
        layers[name].merge()
    return todo


def unmerge_lora(model: nn.Module) -> list[str]:
    """Undo ``merge_lora``: subtract each merged update from its base weight; returns their names. Chapter 06."""
    layers = _lora_layers(model, "unmerge_lora")
    todo = [name for name, layer in layers.items() if layer.merged]
    for name in todo:
        layers[name].unmerge()
    return todo


def remove_lora(model: nn.Module, merge: bool = True, dequantize: bool = False) -> list[str]:
    """Put plain layers back where the LoRA layers were; returns their names. Chapter 06.

    ``merge=True``: the base weights keep the learned update (``W + (alpha/r) B A``), the usual way to
    ship a fine-tuned model (peft's ``merge_and_unload``). ``merge=False``: the adapters are dropped and
    the original base layers come back (peft's ``unload``). A 4-bit (QLoRA) base can only take the merge
    as float: ``dequantize=True`` turns each ``NF4Linear`` into a float32 ``nn.Linear`` first (as large as
    the unquantized layer). Parameters stay frozen (``model.requires_grad_(True)`` to train them again).
    """
    layers = _lora_layers(model, "remove_lora")
    if merge and not dequantize and any(layer.is_quantized for layer in layers.values()):
        raise ValueError(_NF4_MERGE_MESSAGE + "; or remove_lora(model, merge=False) to drop the adapters")
    for name, layer in layers.items():
        if dequantize and layer.is_quantized:
            layer.base_layer = _dequantized_linear(layer.base_layer)
        if merge and not layer.merged:
            layer.merge()
        elif not merge and layer.merged:
            layer.unmerge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.base_layer)
    return list(layers)


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors (``...qkv_proj.lora_A.weight``, ``...lora_B.weight``). Chapter 06.

    A few hundred kB instead of the whole model; save it with ``safetensors.torch.save_file`` and load
    it back with ``model.load_state_dict(tensors, strict=False)`` after ``apply_lora`` with the same
    targets and r. The names are peft's adapter names without its ``base_model.model.`` prefix.
    """
    layers = _lora_layers(model, "lora_state_dict")
    return {f"{name}.{part}.weight": getattr(layer, part).weight.detach().clone()
            for name, layer in layers.items() for part in ("lora_A", "lora_B")}


# the course GPT's layer names -> GPT-2's (``GPT.to_hf``): where a peft adapter of the twin sits
_GPT2_NAMES = (("attn.qkv_proj", "attn.c_attn"), ("attn.out_proj", "attn.c_proj"), ("mlp.up_proj", "mlp.c_fc"),
               ("mlp.down_proj", "mlp.c_proj"))


def copy_lora_from_peft(model: nn.Module, peft_model: nn.Module, adapter: str = "default") -> int:
    """Copy a peft model's LoRA matrices into ``model``'s ``LoRALinear`` layers; returns how many. Chapter 06.

    ``model``: the same architecture as peft's base model, or a course ``GPT`` whose GPT-2 twin
    (``model.to_hf()``) peft adapted (``h.0.attn.qkv_proj`` <- ``transformer.h.0.attn.c_attn``). peft's
    ``lora_A`` (r, in) and ``lora_B`` (out, r) are ``nn.Linear`` weights in both libraries, also on a
    ``Conv1D`` base (peft's ``fan_in_fan_out`` transposes only the base weight), so they copy unchanged.
    """
    layers = _lora_layers(model, "copy_lora_from_peft")
    inner = peft_model.base_model.model if hasattr(peft_model, "base_model") else peft_model
    names = dict(inner.named_modules())
    copied = 0
    for name, layer in layers.items():
        candidates = [name]
        if name.startswith("h."):  # a course GPT next to its GPT-2 twin
            twin = name
            for ours, theirs in _GPT2_NAMES:
                twin = twin.replace(ours, theirs)
            candidates.append("transformer." + twin)
        theirs = next((names[c] for c in candidates if c in names), None)
        if theirs is None or not hasattr(theirs, "lora_A") or adapter not in theirs.lora_A:
            raise ValueError(f"peft model has no LoRA adapter {adapter!r} at {' or '.join(candidates)}: apply LoRA "
                             "to the same target modules in both (see default_target_modules)")
        A, B = theirs.lora_A[adapter].weight, theirs.lora_B[adapter].weight
        if A.shape != layer.lora_A.weight.shape or B.shape != layer.lora_B.weight.shape:
            raise ValueError(f"{name}: peft's A {tuple(A.shape)} / B {tuple(B.shape)} do not match ours "
                             f"{tuple(layer.lora_A.weight.shape)} / {tuple(layer.lora_B.weight.shape)}: use the same r")
        with torch.no_grad():
            layer.lora_A.weight.copy_(A)
            layer.lora_B.weight.copy_(B)
        copied += 1
    return copied


# --------------------------------------------------------------------------------------------
# LoRA with the library: peft
# --------------------------------------------------------------------------------------------


def peft_lora_config(model: nn.Module, r: int = 8, alpha: float = 16, dropout: float = 0.0,
                     target_modules: str | Sequence[str] | None = None) -> Any:
    """A ``peft.LoraConfig`` whose targets exist in ``model``. Chapter 06.

    ``target_modules`` are checked as in ``apply_lora`` (None: ``default_target_modules``, ``["c_attn"]``
    for GPT-2, not the manual's q_proj / v_proj). ``fan_in_fan_out=True`` when the targets are Conv1D
    (GPT-2 stores those weights as (in, out)); ``task_type="CAUSAL_LM"`` for a transformers model.
    Use it with ``peft.get_peft_model(model, config)``.
    """
    names, targets = lora_targets(model, target_modules, r, alpha, dropout, "peft_lora_config")
    peft = require("peft")
    conv1d = [is_conv1d(model.get_submodule(name)) for name in names]
    if any(conv1d) and not all(conv1d):
        raise ValueError("the targets mix Conv1D and Linear layers; peft's fan_in_fan_out setting applies to all "
                         "of them, so adapt them in two configs")
    is_transformers = hasattr(model, "config") and hasattr(model, "prepare_inputs_for_generation")
    return peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none",
                           fan_in_fan_out=all(conv1d), task_type="CAUSAL_LM" if is_transformers else None)
