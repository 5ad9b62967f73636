"""Quantization: store a model's weights in 8 or 4 bits. Chapter 07 (inference); chapter 06 reuses NF4.

A float32 weight takes 4 bytes. Quantization stores each weight as a small integer *code* plus a few
float *scales* shared by many weights, and turns the codes back into floats ("dequantizes") when they
are used. Three recipes, each written out first and then (for int8) done with a library:

1. **int8, per output channel, symmetric absmax** (``Int8Linear``, ``quantize_int8``; the format itself,
   ``scale_i = max_j |W_ij| / 127`` and ``q_ij = round(W_ij / scale_i)``, is ``quant_formats.int8_quantize``).
   1 byte per weight instead of 4. ``Int8Linear`` dequantizes the whole matrix in every forward and
   multiplies in float: it saves memory, not time (measured 0.9-1.0x the speed of float32).

2. **The libraries** (``quantize_int8_library``). Speed needs integer matrix kernels:

   * ``"torch.ao-dynamic"``: ``torch.ao.quantization.quantize_dynamic``. Weights int8 per channel,
     activations quantized on the fly per batch (dynamic), products in int32 by FBGEMM's AVX2/AVX-512
     kernels. **Deprecated** (ERRATA section 7): ``torch.quantization.quantize_dynamic`` of the
     manual, now ``torch.ao.quantization``, warns that it will be removed and points to torchao. It
     still works in torch 2.13, and on a plain x86 CPU it is the only PyTorch path measured here that
     is faster than float32 (benchmarks/bench_inference.py, 27 M-parameter GPT, AVX2 CPU: 1.5-1.8x
     on a forward of 4 x 128 tokens, 1.9x per generated token with one thread).
   * ``"torchao-weight-only"``: torchao's ``quantize_(model, Int8WeightOnlyConfig())``, the successor
     API: the same int8 per-row storage as ``Int8Linear``; on CPU it runs about as fast as float32.
   * ``"torchao-dynamic"``: ``quantize_(model, Int8DynamicActivationInt8WeightConfig())``. Its
     int8 x int8 product (``torch._int_mm``) is fast on GPUs and under ``torch.compile``; in eager
     mode on a CPU it falls back to a slow kernel (measured 8-35x *slower* than float32).

3. **NF4, 4-bit NormalFloat** (``NF4Linear``, ``quantize_nf4``), from QLoRA (Dettmers et al. 2023): the
   format (blocks of 64 weights share one absmax, 16 values at quantiles of a normal distribution, double
   quantization) is ``quant_formats.nf4_quantize``. QLoRA (chapter 06) trains LoRA adapters on top.

``model_size_bytes`` counts what the weights take in memory, whatever their storage.

**GPT-2's ``Conv1D``.** transformers' GPT-2 builds its attention and MLP projections (``c_attn``,
``c_proj``, ``c_fc``) from ``transformers.pytorch_utils.Conv1D``, not ``nn.Linear``: the same affine
map, ``y = x W + b``, with the weight stored transposed, (in, out). Every ``quantize_*`` function here
converts each such layer to the equal ``nn.Linear`` (weight ``W.T``, so the per-output-channel scales
are per *column* of the Conv1D weight) before quantizing it. ``quantized_layers`` lists what a model
really stores in 8 or 4 bits, whoever quantized it.

Where the manual goes wrong (ERRATA section 7): ``torch.quantization.quantize_dynamic(model,
{nn.Linear})`` on GPT-2 quantizes only the tied ``lm_head`` (the one ``nn.Linear``; quantizing it also
breaks the tie, so the model grows) and leaves every ``Conv1D`` in float32, silently. It is also
deprecated (torchao is its successor), and the manual claims a speed-up without measuring one; here the
benchmark measures each path side by side, and the tests check the accuracy of each against float32.
"""

from __future__ import annotations

import copy
import math
import sys
import warnings
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_course.core.deps import MissingDependencyError, require
from llm_course.nn.quant_formats import NF4Weight, int8_dequantize, int8_quantize, nf4_dequantize, nf4_quantize

__all__ = [
    # int8, written out
    "Int8Linear",
    "quantize_int8",
    # int8, libraries
    "LIBRARY_METHODS",
    "quantize_int8_library",
    "torchao_available",
    # NF4
    "NF4Linear",
    "quantize_nf4",
    # measuring
    "model_size_bytes",
    "quantization_error",
    "quantized_linear_names",
    "quantized_layers",
    "conv1d_to_linear",
    "is_conv1d",
    "tied_weight",
    "tensor_bytes",
]


# --------------------------------------------------------------------------------------------
# Which layers to quantize
# --------------------------------------------------------------------------------------------


def tied_weight(model: nn.Module, linear: nn.Module) -> bool:
    """True if ``linear.weight`` is also used by another module (GPT's lm_head is the embedding). Chapter 07.

    Quantizing (or wrapping with LoRA) such a layer would break the tie, so by default it is left alone.
    """
    for module in model.modules():
        if module is linear:
            continue
        for p in module.parameters(recurse=False):
            if p is linear.weight:
                return True
    return False


def _conv1d_class() -> type | None:
    """transformers' ``Conv1D`` if transformers is already imported, else None (a model holding a Conv1D
    has imported it to build the layer, so nothing is missed and the course does not import it)."""
    return getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)


def is_conv1d(module: nn.Module) -> bool:
    """True if ``module`` is transformers' ``Conv1D`` (GPT-2's projections: a Linear stored transposed). Chapter 07."""
    conv1d = _conv1d_class()
    return conv1d is not None and type(module) is conv1d


def conv1d_to_linear(layer: nn.Module) -> nn.Linear:
    """transformers' ``Conv1D`` (GPT-2) as the equal ``nn.Linear``. Chapter 07 (inference).

    ``Conv1D`` computes ``x @ W + b`` with ``W`` stored as (in, out); ``nn.Linear`` computes ``x @ W.T + b``
    with ``W`` stored as (out, in). So the Linear gets the transposed weight (a copy, same dtype and
    device) and the same bias, and gives the same outputs. An ``nn.Linear`` is returned unchanged.
    """
    if type(layer) is nn.Linear:
        return layer
    if not is_conv1d(layer):
        raise TypeError(f"conv1d_to_linear expects transformers' Conv1D (or an nn.Linear), got {type(layer).__name__}")
    in_features, out_features = layer.weight.shape  # (in, out): the transpose of nn.Linear's layout
    linear = nn.Linear(in_features, out_features, bias=layer.bias is not None,
                       device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(layer.weight.t())
        if layer.bias is not None:
            linear.bias.copy_(layer.bias)
    return linear


def quantized_linear_names(model: nn.Module, keep_tied: bool = True, skip: tuple[str, ...] = (),
                           conv1d: bool = False) -> list[str]:
    """Names of the ``nn.Linear`` layers the ``quantize_*`` functions replace. Chapter 07 (inference).

    Every ``nn.Linear`` except those named in ``skip`` and, with ``keep_tied=True``, those whose weight
    is tied to another module. GPT's ``lm_head`` *is* the token embedding matrix: quantizing it would
    either break the tie (an int8 copy next to the float embedding: more memory, not less) or force
    the embedding lookup through 8 bits too. So by default it stays in full precision, as
    bitsandbytes and LLM.int8 also keep the output layer. ``conv1d=True``: transformers' ``Conv1D``
    layers too (GPT-2's ``c_attn``, ``c_proj``, ``c_fc``), which the ``quantize_*`` functions convert with
    ``conv1d_to_linear`` and quantize.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    names = []
    for name, module in model.named_modules():
        if not (type(module) is nn.Linear or (conv1d and is_conv1d(module))) or name in skip:
            continue
        if keep_tied and tied_weight(model, module):
            continue
        names.append(name)
    return names


def _replace_modules(model: nn.Module, names: list[str], make: Callable[[nn.Linear], nn.Module]) -> nn.Module:
    """Swap each named submodule for ``make(old)`` (in place)."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make(getattr(parent, child)))
    return model


def _layers_to_quantize(model: nn.Module, keep_tied: bool, skip: tuple[str, ...], caller: str) -> list[str]:
    """The names to quantize, with every ``Conv1D`` among them already turned into an ``nn.Linear``.

    Raises a ``ValueError`` when the model has nothing to quantize and nothing quantized already, so a
    model of other layer types is never returned "quantized" with every weight still in float.
    """
    names = quantized_linear_names(model, keep_tied, skip, conv1d=True)
    if not names and not quantized_layers(model):
        kinds = sorted({type(m).__name__ for m in model.modules() if next(m.parameters(False), None) is not None})
        raise ValueError(
            f"{caller} found no layer to quantize in this {type(model).__name__}: it replaces nn.Linear and "
            f"transformers' Conv1D layers (untied, not in skip={skip!r}), and the model's layers with weights "
            f"are {kinds}. Tied layers stay float unless keep_tied=False"
        )
    _replace_modules(model, [n for n in names if is_conv1d(model.get_submodule(n))], conv1d_to_linear)
    return names


def _prepare(model: nn.Module, inplace: bool) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (e.g. llm_course.models.gpt.GPT), got {type(model).__name__}")
    return model if inplace else copy.deepcopy(model)


# --------------------------------------------------------------------------------------------
# 1. int8, written out: per-output-channel symmetric absmax
# --------------------------------------------------------------------------------------------


class Int8Linear(nn.Module):
    """A frozen ``nn.Linear`` whose weight is stored as int8 codes + one float scale per output. Chapter 07.

    Buffers: ``weight_int8`` (out, in) int8, ``weight_scale`` (out,) float32, ``bias`` (out,) float32 or
    None. ``forward`` dequantizes the weight and runs a float matmul: 4x less memory for the weight,
    no speed-up (for that see ``quantize_int8_library``). Build it with ``Int8Linear.from_linear(layer)``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Module) -> Int8Linear:
        """Quantize an ``nn.Linear``'s (or a transformers ``Conv1D``'s) weight; the bias stays float: it is tiny."""
        if is_conv1d(linear):
            linear = conv1d_to_linear(linear)  # (in, out) -> (out, in): one scale per output channel
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"Int8Linear.from_linear expects an nn.Linear or transformers' Conv1D, got "
                            f"{type(linear).__name__}")
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        q, scale = int8_quantize(linear.weight)
        layer.weight_int8.copy_(q)
        layer.weight_scale.copy_(scale)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach())
        return layer.to(linear.weight.device)

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 (out, in) weight the codes stand for."""
        return int8_dequantize(self.weight_int8, self.weight_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out), as ``nn.Linear`` with the dequantized weight."""
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized_weight().to(x.dtype), bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def quantize_int8(model: nn.Module, keep_tied: bool = True, skip: tuple[str, ...] = (),
                  inplace: bool = False) -> nn.Module:
    """The model with every ``nn.Linear`` replaced by an ``Int8Linear``. Chapter 07 (inference).

    transformers' ``Conv1D`` layers (GPT-2) are quantized too, with their (in, out) weight transposed.
    ``keep_tied`` / ``skip``: see ``quantized_linear_names`` (GPT's tied lm_head stays float by
    default). Returns a quantized copy (``inplace=True``: changes ``model`` itself), in eval mode.
    Quantized weights are frozen: this is for inference (chapter 06's QLoRA trains adapters on top).
    Raises ``ValueError`` if the model has no such layer to quantize.
    """
    model = _prepare(model, inplace)
    names = _layers_to_quantize(model, keep_tied, skip, "quantize_int8")
    return _replace_modules(model, names, Int8Linear.from_linear).eval()


# --------------------------------------------------------------------------------------------
# 2. int8 with the libraries: torchao (current) and torch.ao quantize_dynamic (deprecated)
# --------------------------------------------------------------------------------------------

LIBRARY_METHODS = ("torchao-weight-only", "torchao-dynamic", "torch.ao-dynamic")


def torchao_available() -> bool:
    """Whether ``torchao`` can be imported. Chapter 07 (inference)."""
    try:
        _import_torchao()
    except MissingDependencyError:
        return False
    return True


def _import_torchao():
    """``torchao.quantization``, or ``MissingDependencyError`` naming the pip command.

    (Its log lines about CUDA-only kernels on a CPU machine are silenced in ``llm_course/__init__``.)
    """
    return require("torchao.quantization", "torchao")


def _quantize_torchao(model: nn.Module, names: list[str], dynamic: bool) -> nn.Module:
    tq = _import_torchao()
    # set_inductor_config=False: torchao would otherwise change global torch.compile settings
    if dynamic:
        config = tq.Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)
    else:
        config = tq.Int8WeightOnlyConfig(set_inductor_config=False)
    chosen = set(names)
    tq.quantize_(model, config, filter_fn=lambda module, fqn: fqn in chosen)
    return model


def _quantize_torch_ao_dynamic(model: nn.Module, names: list[str]) -> nn.Module:
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    # Deprecated API (see the module docstring): its DeprecationWarning and the one about quantized
    # tensors are expected here, so they are not repeated to the reader.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        # per-channel int8 weights (the default qconfig would use one scale for the whole matrix)
        return quantize_dynamic(model, {name: per_channel_dynamic_qconfig for name in names},
                                dtype=torch.qint8, inplace=True)


def quantize_int8_library(model: nn.Module, method: str = "auto", keep_tied: bool = True,
                          skip: tuple[str, ...] = (), inplace: bool = False) -> nn.Module:
    """int8-quantize the model's ``nn.Linear`` (and GPT-2 ``Conv1D``) layers with a library. Chapter 07.

    ``method`` (see the module docstring for what each does and how fast it is on a CPU):

    * ``"torchao-weight-only"``: ``torchao.quantization.quantize_(model, Int8WeightOnlyConfig())``;
    * ``"torchao-dynamic"``: ``quantize_(model, Int8DynamicActivationInt8WeightConfig())``;
    * ``"torch.ao-dynamic"``: ``torch.ao.quantization.quantize_dynamic`` with per-channel weights.
      Deprecated (torchao replaces it) but still the fastest on a CPU: FBGEMM's int8 kernels;
    * ``"auto"``: torchao weight-only if torchao is installed, else torch.ao-dynamic (with a warning).

    Weights are quantized per output channel, like ``Int8Linear``; the dynamic methods also round
    each batch of activations to 8 bits. Neither library knows transformers' ``Conv1D`` (each would
    skip it), so those layers are first converted to the equal ``nn.Linear`` (``conv1d_to_linear``).
    CPU only for ``"torch.ao-dynamic"``. Returns a quantized copy (``inplace=True``: ``model`` itself),
    in eval mode. A torchao method without torchao raises ``MissingDependencyError`` (pip install
    torchao); a model with no layer to quantize, ``ValueError``.
    """
    if method == "auto":
        if torchao_available():
            method = "torchao-weight-only"
        else:
            warnings.warn("torchao is not installed (pip install torchao): falling back to the deprecated "
                          "torch.ao.quantization.quantize_dynamic", stacklevel=2)
            method = "torch.ao-dynamic"
    if method not in LIBRARY_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {('auto',) + LIBRARY_METHODS}")
    if method.startswith("torchao"):
        _import_torchao()  # fail before copying the model
    model = _prepare(model, inplace).eval()
    names = _layers_to_quantize(model, keep_tied, skip, "quantize_int8_library")
    if method == "torch.ao-dynamic":
        device = next(model.parameters()).device
        if device.type != "cpu":
            raise ValueError(f"torch.ao quantize_dynamic runs on the CPU only; the model is on {device}: model.cpu()")
        return _quantize_torch_ao_dynamic(model, names).eval()
    return _quantize_torchao(model, names, dynamic=method == "torchao-dynamic").eval()


# --------------------------------------------------------------------------------------------
# 3. NF4: 4-bit NormalFloat, block-wise, with double quantization (QLoRA)
# --------------------------------------------------------------------------------------------

class NF4Linear(nn.Module):
    """A frozen ``nn.Linear`` whose weight is stored in NF4 (4 bits + block scales). Chapter 07.

    The buffers are the ``NF4Weight`` fields (``packed``, ``absmax`` or ``absmax_int8`` /
    ``absmax_scale`` / ``absmax_mean``) and ``bias`` (float32). ``forward`` dequantizes the weight to
    the input's dtype and runs a float matmul, as bitsandbytes' ``Linear4bit`` does (its CUDA kernel
    fuses the two). Chapter 06 (QLoRA) adds trainable LoRA matrices next to this frozen weight.
    """

    def __init__(self, weight: NF4Weight, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.block_size, self.dq_block_size = weight.block_size, weight.dq_block_size
        for name, tensor in weight.tensors().items():
            self.register_buffer(name, tensor)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @classmethod
    def from_linear(cls, linear: nn.Module, block_size: int = 64, double_quant: bool = True,
                    dq_block_size: int = 256) -> NF4Linear:
        """Quantize an ``nn.Linear``'s (or a transformers ``Conv1D``'s, transposed) weight to NF4."""
        if is_conv1d(linear):
            linear = conv1d_to_linear(linear)
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"NF4Linear.from_linear expects an nn.Linear or transformers' Conv1D, got "
                            f"{type(linear).__name__}")
        q = nf4_quantize(linear.weight, block_size, double_quant, dq_block_size)
        return cls(q, linear.bias)

    @property
    def weight_nf4(self) -> NF4Weight:
        """The stored weight as an ``NF4Weight``."""
        names = ("absmax", "absmax_int8", "absmax_scale", "absmax_mean")
        fields = {k: getattr(self, k) for k in names if hasattr(self, k)}
        return NF4Weight(packed=self.packed, shape=(self.out_features, self.in_features),
                         block_size=self.block_size, dq_block_size=self.dq_block_size, **fields)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The (out, in) weight the codes stand for."""
        return nf4_dequantize(self.weight_nf4, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out), as ``nn.Linear`` with the dequantized weight."""
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized_weight(x.dtype), bias)

    def extra_repr(self) -> str:
        dq = f", double_quant(block {self.dq_block_size})" if self.dq_block_size else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, block_size={self.block_size}{dq}"


def quantize_nf4(model: nn.Module, block_size: int = 64, double_quant: bool = True, dq_block_size: int = 256,
                 keep_tied: bool = True, skip: tuple[str, ...] = (), inplace: bool = False) -> nn.Module:
    """A weight-only 4-bit model: every ``nn.Linear`` becomes an ``NF4Linear``. Chapter 07 (inference).

    Defaults are QLoRA's: blocks of 64, double quantization with blocks of 256. transformers' ``Conv1D``
    layers (GPT-2) are quantized too, transposed to (out, in) first. ``keep_tied`` / ``skip``: see
    ``quantized_linear_names``. Returns a quantized copy (``inplace=True``: ``model`` itself). Raises
    ``ValueError`` if the model has no such layer to quantize.
    """
    model = _prepare(model, inplace)
    names = _layers_to_quantize(model, keep_tied, skip, "quantize_nf4")
    make = lambda linear: NF4Linear.from_linear(linear, block_size, double_quant, dq_block_size)  # noqa: E731
    return _replace_modules(model, names, make).eval()


# --------------------------------------------------------------------------------------------
# Measuring: memory and error
# --------------------------------------------------------------------------------------------


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes of a tensor's own data, whatever its storage. Chapter 07 (inference).

    ``numel * element_size`` for a plain tensor; a quantized (qint8) tensor also counts its scales and zero
    points, and torchao's quantized tensors count their inner tensors. Shared storage is not looked at:
    ``model_size_bytes`` counts a model's tensors, each once.
    """
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if is_traceable_wrapper_subclass(t):  # torchao's quantized tensors: count their inner tensors
        inner, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, name)) for name in inner)
    size = t.numel() * t.element_size()
    if t.is_quantized:
        if t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            scales, zeros = t.q_per_channel_scales(), t.q_per_channel_zero_points()
            size += scales.numel() * scales.element_size() + zeros.numel() * zeros.element_size()
        else:
            size += 16  # one float64 scale and one int64 zero point
    return size


def model_size_bytes(model: nn.Module) -> int:
    """Bytes the model's weights take in memory (parameters and buffers). Chapter 07 (inference).

    A tensor shared by two modules (GPT's tied lm_head and embedding) is counted once. Quantized
    storage is counted as stored: ``Int8Linear`` / ``NF4Linear`` buffers, torchao's quantized tensors
    (their int8 data and scales), and torch.ao's dynamic ``Linear`` (its packed int8 weight, per-channel
    scales and zero points, bias).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    tensors = [*model.parameters(), *model.buffers()]  # each yields a shared tensor only once
    for module in model.modules():  # torch.ao's quantized Linear keeps its weight outside parameters
        if type(module).__name__ == "LinearPackedParams":
            tensors.extend(t for t in module._weight_bias() if t is not None)
    return sum(tensor_bytes(t) for t in tensors)


def quantized_layers(model: nn.Module) -> list[str]:
    """Names of the layers whose weight is stored in 8 or 4 bits, whoever quantized them. Chapter 07.

    ``Int8Linear`` and ``NF4Linear`` (this module), torch.ao's dynamic quantized ``Linear``
    (``quantize_dynamic``), and any layer whose ``weight`` is a torchao quantized tensor. A float
    ``nn.Linear`` or ``Conv1D`` is not listed: this is how to check that a quantizer did its work.
    """
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    names = []
    for name, module in model.named_modules():
        weight = module._parameters.get("weight")
        torch_ao = type(module).__module__.startswith("torch.ao.nn.quantized") and type(module).__name__ == "Linear"
        if (isinstance(module, (Int8Linear, NF4Linear)) or torch_ao
                or weight is not None and is_traceable_wrapper_subclass(weight)):
            names.append(name)
    return names


def quantization_error(original: torch.Tensor, approx: torch.Tensor) -> dict[str, float]:
    """How far ``approx`` is from ``original``. Chapter 07 (inference).

    Returns max_abs (largest |error|), rmse, relative_rmse (rmse / rms of the original) and sqnr_db
    (signal-to-quantization-noise ratio, 10 log10(signal power / error power); every extra bit adds
    about 6 dB).
    """
    if not isinstance(original, torch.Tensor) or not isinstance(approx, torch.Tensor):
        raise TypeError("quantization_error expects two tensors")
    if original.shape != approx.shape:
        raise ValueError(f"shapes differ: {tuple(original.shape)} vs {tuple(approx.shape)}")
    x, err = original.detach().double(), (approx.detach().double() - original.detach().double())
    mse, power = err.pow(2).mean().item(), x.pow(2).mean().item()
    return {
        "max_abs": err.abs().max().item(),
        "rmse": math.sqrt(mse),
        "relative_rmse": math.sqrt(mse / power) if power > 0 else float("nan"),
        "sqnr_db": 10 * math.log10(power / mse) if mse > 0 else float("inf"),
    }
