"""Quantization: store a model's weights in 8 or 4 bits. Chapter 07 (inference); chapter 06 reuses NF4.

A float32 weight takes 4 bytes. Quantization stores each weight as a small integer *code* plus a few
float *scales* shared by many weights, and turns the codes back into floats ("dequantizes") when they
are used. Three recipes, each written out first and then (for int8) done with a library:

1. **int8, per output channel, symmetric absmax** (``Int8Linear``, ``quantize_int8``)::

       scale_i = max_j |W_ij| / 127          one float per output row i of W (out, in)
       q_ij    = round(W_ij / scale_i)       an integer in [-127, 127], stored as int8
       W_ij   ~= q_ij * scale_i              error |W_ij - q_ij * scale_i| <= scale_i / 2

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

3. **NF4, 4-bit NormalFloat** (``nf4_quantize``, ``NF4Linear``, ``quantize_nf4``), from QLoRA
   (Dettmers et al. 2023): blocks of 64 weights share one absmax, each weight is the nearest of 16
   values placed at quantiles of a normal distribution (``NF4_CODE``), two 4-bit codes per byte.
   *Double quantization* stores the absmax constants themselves in 8 bits (blocks of 256): 4.127 bits
   per weight instead of 4.5. QLoRA (chapter 06) trains LoRA adapters on top of such a frozen weight.

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
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_course.core.deps import MissingDependencyError, require

__all__ = [
    # int8, written out
    "int8_quantize",
    "int8_dequantize",
    "Int8Linear",
    "quantize_int8",
    # int8, libraries
    "LIBRARY_METHODS",
    "quantize_int8_library",
    "torchao_available",
    # NF4
    "NF4_CODE",
    "nf4_code_from_normal_quantiles",
    "pack_4bit",
    "unpack_4bit",
    "NF4Weight",
    "nf4_quantize",
    "nf4_dequantize",
    "nf4_bits_per_parameter",
    "NF4Linear",
    "quantize_nf4",
    # measuring
    "model_size_bytes",
    "quantization_error",
    "quantized_linear_names",
    "quantized_layers",
    "conv1d_to_linear",
]


# --------------------------------------------------------------------------------------------
# Which layers to quantize
# --------------------------------------------------------------------------------------------


def _tied_weight(model: nn.Module, linear: nn.Linear) -> bool:
    """True if ``linear.weight`` is also used by another module (GPT's lm_head is the embedding)."""
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


def _is_conv1d(module: nn.Module) -> bool:
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
    if not _is_conv1d(layer):
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
        if not (type(module) is nn.Linear or (conv1d and _is_conv1d(module))) or name in skip:
            continue
        if keep_tied and _tied_weight(model, module):
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
    _replace_modules(model, [n for n in names if _is_conv1d(model.get_submodule(n))], conv1d_to_linear)
    return names


def _prepare(model: nn.Module, inplace: bool) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (e.g. llm_course.models.gpt.GPT), got {type(model).__name__}")
    return model if inplace else copy.deepcopy(model)


# --------------------------------------------------------------------------------------------
# 1. int8, written out: per-output-channel symmetric absmax
# --------------------------------------------------------------------------------------------


def int8_quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float weight -> (int8 codes (out, in), float32 scales (out,)). Chapter 07 (inference).

    One scale per output row: ``scale = max |row| / 127``, ``q = round(W / scale)`` in [-127, 127]
    (symmetric: -128 is never used, so 0.0 is exactly representable and the range is balanced).
    A row of zeros gets scale 1 (any scale reproduces it exactly).
    """
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or not weight.dtype.is_floating_point:
        raise ValueError("int8_quantize expects a 2-D float weight (out_features, in_features), got "
                         f"{getattr(weight, 'shape', type(weight).__name__)}")
    w = weight.detach().float()
    absmax = w.abs().amax(dim=1)  # (out,)
    scale = torch.where(absmax > 0, absmax / 127.0, torch.ones_like(absmax))
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def int8_dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """int8 codes (out, in) and scales (out,) -> float32 weight ``q * scale``. Chapter 07 (inference)."""
    return q.float() * scale[:, None]


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
        if _is_conv1d(linear):
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

# The 16 NF4 values as bitsandbytes (and the QLoRA paper, appendix E) ship them, ascending. Exactly
# one code is 0.0 and the range is [-1, 1]: 7 negative values, 0, 8 positive ones.
NF4_CODE = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
])


def nf4_code_from_normal_quantiles() -> torch.Tensor:
    """Rebuild the 16 NF4 values from quantiles of N(0, 1), as in the QLoRA paper. Chapter 07.

    Pretrained weights are roughly normal, so the best 4-bit code puts the same share of weights in
    each of its 16 bins: values at equally spaced quantiles. The quantile function of the normal is
    infinite at 0 and 1, so the outermost probability is pulled in to ``offset = 1 - (1/30 + 1/32)/2
    = 0.9677...`` (between the 15- and 16-bin choices). To have an exact zero (padding and zero
    weights stay exact), the positive half gets 8 values (quantiles at probabilities from 0.5 to
    ``offset`` in 9 steps, minus the 0.5) and the negative half 7, then everything is scaled so the
    largest is 1. Computed in float64 with ``torch.special.ndtri`` (the normal's quantile function).
    """
    offset = 1 - 0.5 * (1 / (2 * 15) + 1 / (2 * 16))
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])  # 8 values
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])  # 7 values
    values = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    return values / values.max()


def pack_4bit(codes: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit codes (uint8 values 0..15, even length) two per byte. Chapter 07 (inference).

    Byte k holds ``codes[2k]`` in its high nibble and ``codes[2k+1]`` in its low nibble (the order
    bitsandbytes uses). (n,) -> (n // 2,) uint8.
    """
    if codes.ndim != 1 or codes.numel() % 2 != 0:
        raise ValueError(f"pack_4bit needs a 1-D tensor of even length, got shape {tuple(codes.shape)}")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) > 15):
        raise ValueError("4-bit codes must lie in 0..15")
    codes = codes.to(torch.uint8)
    return (codes[0::2] << 4) | codes[1::2]


def unpack_4bit(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of ``pack_4bit``: (n // 2,) uint8 -> (n,) uint8 codes 0..15. Chapter 07 (inference)."""
    if packed.dtype != torch.uint8 or packed.ndim != 1:
        raise ValueError(f"unpack_4bit needs a 1-D uint8 tensor, got {packed.dtype} {tuple(packed.shape)}")
    high, low = packed >> 4, packed & 0x0F
    return torch.stack([high, low], dim=1).reshape(-1)  # interleave: high0, low0, high1, low1, ...


def _absmax_int8_blocks(values: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax int8 per block of a 1-D float tensor: (int8 codes (n,), float32 scales)."""
    n_blocks = math.ceil(values.numel() / block_size)
    padded = F.pad(values, (0, n_blocks * block_size - values.numel())).view(n_blocks, block_size)
    absmax = padded.abs().amax(dim=1)
    scale = torch.where(absmax > 0, absmax / 127.0, torch.ones_like(absmax))
    q = torch.round(padded / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.reshape(-1)[: values.numel()], scale


@dataclass
class NF4Weight:
    """A tensor in NF4: packed 4-bit codes and the per-block scales. Chapter 07 (inference).

    packed: (ceil(n / block_size) * block_size / 2,) uint8, two codes per byte (padding codes are 0.0).
    absmax: (n_blocks,) float32, the largest |value| of each block, when there is no double quantization.
    With double quantization the absmax constants are stored as int8 codes ``absmax_int8`` (n_blocks,),
    one float32 ``absmax_scale`` per ``dq_block_size`` of them, and their float32 mean ``absmax_mean``
    (subtracted first, so the symmetric 8-bit code is centred): absmax ~= mean + code * scale.
    """

    packed: torch.Tensor
    shape: tuple[int, ...]
    block_size: int
    absmax: torch.Tensor | None = None
    absmax_int8: torch.Tensor | None = None
    absmax_scale: torch.Tensor | None = None
    absmax_mean: torch.Tensor | None = None
    dq_block_size: int | None = None

    @property
    def numel(self) -> int:
        """Number of values the tensor holds."""
        return math.prod(self.shape)

    @property
    def double_quant(self) -> bool:
        """Whether the absmax constants are themselves quantized."""
        return self.absmax_int8 is not None

    def tensors(self) -> dict[str, torch.Tensor]:
        """The stored tensors by name (what ``NF4Linear`` keeps as buffers)."""
        names = ("packed", "absmax", "absmax_int8", "absmax_scale", "absmax_mean")
        return {k: getattr(self, k) for k in names if getattr(self, k) is not None}

    @property
    def nbytes(self) -> int:
        """Bytes of all stored tensors."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    @property
    def bits_per_parameter(self) -> float:
        """Stored bits per value: 4.5 for blocks of 64 with float32 absmax, about 4.127 with double quant."""
        return 8 * self.nbytes / self.numel

    def block_absmax(self) -> torch.Tensor:
        """The (n_blocks,) float32 scales, recovered from their 8-bit codes under double quantization."""
        if not self.double_quant:
            return self.absmax
        n = self.absmax_int8.numel()
        scales = self.absmax_scale.repeat_interleave(self.dq_block_size)[:n]
        return self.absmax_mean + self.absmax_int8.float() * scales


def nf4_bits_per_parameter(block_size: int = 64, double_quant: bool = True, dq_block_size: int = 256) -> float:
    """Closed-form bits per weight of NF4 (large tensors). Chapter 07 (inference).

    4 bits of code, plus one absmax per block: 32 / 64 = 0.5 bits as float32 (4.5 in all); with double
    quantization 8 / 64 bits for its 8-bit code plus 32 / (64 * 256) for the second-level scale:
    4 + 0.125 + 0.00195 = 4.127 bits, the QLoRA paper's figure (section 3, "Double Quantization").
    """
    if not double_quant:
        return 4 + 32 / block_size
    return 4 + 8 / block_size + 32 / (block_size * dq_block_size)


def nf4_quantize(weight: torch.Tensor, block_size: int = 64, double_quant: bool = False,
                 dq_block_size: int = 256) -> NF4Weight:
    """Block-wise NF4 quantization of a float tensor. Chapter 07 (inference).

    1. Flatten, pad with zeros to a whole number of blocks of ``block_size`` (QLoRA: 64).
    2. Each block is divided by its absmax, so its values lie in [-1, 1].
    3. Each value gets the code (0..15) of the nearest ``NF4_CODE`` value; two codes per byte.
    4. ``double_quant``: the absmax constants (one per block) minus their mean are quantized to int8
       with absmax scales per ``dq_block_size`` (QLoRA: 256) of them.
    Error bound (without double quantization): each value is off by at most its block's absmax times
    half the gap between the two code values around it (the tests check it).
    """
    if not isinstance(weight, torch.Tensor) or not weight.dtype.is_floating_point or weight.numel() == 0:
        raise ValueError("nf4_quantize expects a non-empty float tensor")
    for name, value in (("block_size", block_size), ("dq_block_size", dq_block_size)):
        if not isinstance(value, int) or value < 2 or value % 2:
            raise ValueError(f"{name} must be an even integer >= 2 (QLoRA: 64 and 256), got {value!r}")
    flat = weight.detach().float().reshape(-1)
    n_blocks = math.ceil(flat.numel() / block_size)
    blocks = F.pad(flat, (0, n_blocks * block_size - flat.numel())).view(n_blocks, block_size)
    absmax = blocks.abs().amax(dim=1)  # (n_blocks,)
    normalized = blocks / torch.where(absmax > 0, absmax, torch.ones_like(absmax))[:, None]  # in [-1, 1]
    code = NF4_CODE.to(flat.device)
    midpoints = (code[1:] + code[:-1]) / 2  # value v gets code i if midpoints[i-1] < v <= midpoints[i]
    codes = torch.bucketize(normalized.reshape(-1), midpoints)  # (n_blocks * block_size,) in 0..15
    q = NF4Weight(packed=pack_4bit(codes), shape=tuple(weight.shape), block_size=block_size)
    if not double_quant:
        q.absmax = absmax
        return q
    mean = absmax.mean()
    q.absmax_int8, q.absmax_scale = _absmax_int8_blocks(absmax - mean, dq_block_size)
    q.absmax_mean, q.dq_block_size = mean, dq_block_size
    return q


def nf4_dequantize(q: NF4Weight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """NF4 -> a float tensor of the original shape: code value * block absmax. Chapter 07 (inference)."""
    if not isinstance(q, NF4Weight):
        raise TypeError(f"nf4_dequantize expects an NF4Weight (from nf4_quantize), got {type(q).__name__}")
    codes = unpack_4bit(q.packed).long()
    values = NF4_CODE.to(q.packed.device)[codes].view(-1, q.block_size)  # (n_blocks, block_size)
    values = values * q.block_absmax()[:, None]
    return values.reshape(-1)[: q.numel].view(q.shape).to(dtype)


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
        if _is_conv1d(linear):
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


def _plain_bytes(t: torch.Tensor) -> int:
    """Bytes of a tensor's own data: a quantized (qint8) tensor counts its codes, scales and zero points."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if is_traceable_wrapper_subclass(t):  # torchao's quantized tensors: count their inner tensors
        inner, _ = t.__tensor_flatten__()
        return sum(_plain_bytes(getattr(t, name)) for name in inner)
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
    return sum(_plain_bytes(t) for t in tensors)


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
