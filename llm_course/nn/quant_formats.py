"""Quantizing one tensor: int8 codes with one scale per row, and NF4 (4-bit NormalFloat). Chapter 07.

The number formats only, on plain tensors; ``llm_course.nn.quantization`` builds layers and models on them.

**int8, per output channel, symmetric absmax** (``int8_quantize``, ``int8_dequantize``)::

    scale_i = max_j |W_ij| / 127          one float per output row i of W (out, in)
    q_ij    = round(W_ij / scale_i)       an integer in [-127, 127], stored as int8
    W_ij   ~= q_ij * scale_i              error |W_ij - q_ij * scale_i| <= scale_i / 2

**NF4, 4-bit NormalFloat** (``nf4_quantize``, ``nf4_dequantize``, ``NF4Weight``), from QLoRA (Dettmers
et al. 2023): blocks of 64 weights share one absmax, each weight is the nearest of 16 values placed at
quantiles of a normal distribution (``NF4_CODE``, rebuilt by ``nf4_code_from_normal_quantiles``), two
4-bit codes per byte (``pack_4bit``). *Double quantization* stores the absmax constants themselves in
8 bits (blocks of 256): 4.127 bits per weight instead of 4.5 (``nf4_bits_per_parameter``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llm_course.core.checks import check_int

__all__ = [
    "int8_quantize",
    "int8_dequantize",
    "NF4_CODE",
    "nf4_code_from_normal_quantiles",
    "pack_4bit",
    "unpack_4bit",
    "NF4Weight",
    "nf4_quantize",
    "nf4_dequantize",
    "nf4_bits_per_parameter",
]


# --------------------------------------------------------------------------------------------
# int8: per-row symmetric absmax
# --------------------------------------------------------------------------------------------


def int8_quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float weight -> (int8 codes (out, in), float32 scales (out,)). Chapter 07 (inference).

    One scale per output row: ``scale = max |row| / 127``, ``q = round(W / scale)`` in [-127, 127]
    (symmetric: -128 is never used, so 0.0 is exactly representable and the range is balanced).
    A row of zeros gets scale 1 (any scale reproduces it exactly).
    """
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"int8_quantize expects a 2-D float weight tensor, got {type(weight).__name__}")
    if weight.ndim != 2 or not weight.dtype.is_floating_point:
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


# --------------------------------------------------------------------------------------------
# NF4: 4-bit NormalFloat, block-wise, with double quantization (QLoRA)
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
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"nf4_quantize expects a non-empty float tensor, got {type(weight).__name__}")
    if not weight.dtype.is_floating_point or weight.numel() == 0:
        raise ValueError("nf4_quantize expects a non-empty float tensor")
    for name, value in (("block_size", block_size), ("dq_block_size", dq_block_size)):
        if check_int(name, value, minimum=2, hint="QLoRA uses 64 and 256") % 2:
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
