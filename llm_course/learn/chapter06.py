"""Chapter 06's questions and exercises: LoRA's forward and merge, one NF4 block, a bottleneck adapter. Chapter 06.

The reference solutions below are the short teaching versions of the library's code; the tests check
each one against the library (``LoRALinear`` and peft's ``LoraLayer``, ``nf4_quantize`` /
``nf4_dequantize``, ``BottleneckAdapter``), so an exercise can never teach something the package does
differently. The ``library_*`` functions run the library's code on the same plain tensors (they are what
the lesson's ``agree`` checks compare with; they leave torch's random state as they found it, so a check
changes nothing the rest of the lesson draws). ``quiz()`` is the end-of-lesson quiz of
``notebooks/06_lora_qlora_adapters.ipynb``; ``EXERCISES`` the checkers of
``exercises/06_lora_qlora_adapters.ipynb``.

The checkers recognise the typical wrong answers and say which one they saw: scaling LoRA's update by
alpha instead of alpha / r, rounding to evenly spaced int4 levels instead of NF4's, an adapter without
its residual, the manual's ``AdapterLayer`` (a LayerNorm first, ReLU), or an adapter that returns its input
unchanged (the manual's adapters are never called: ERRATA section 6).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_course.core.deps import require
from llm_course.learn.checker import Case, ExerciseSet, FunctionExercise, ValueExercise
from llm_course.learn.feedback import difference
from llm_course.learn.quiz import Choice, MultipleChoice, Numeric, Quiz
from llm_course.nn.quant_formats import NF4_CODE, nf4_bits_per_parameter, nf4_dequantize, nf4_quantize, unpack_4bit
from llm_course.train.adapters import BottleneckAdapter
from llm_course.train.lora import LoRALinear

__all__ = ["lora_forward", "merge_lora_weight", "nf4_quantize_block", "nf4_dequantize_block", "nf4_roundtrip",
           "int4_roundtrip", "adapter_forward", "library_lora_forward", "peft_lora_forward", "library_merged_weight",
           "library_nf4_block", "library_nf4_roundtrip", "library_adapter_forward", "lora_cases", "merge_cases",
           "nf4_cases", "adapter_cases", "lora_parameters", "adapter_parameters", "GPT2_SMALL", "COURSE_GPT", "quiz",
           "EXERCISES"]


# ---------------------------------------------------------------------------------------------------
# Reference solutions (checked against the library by tests/test_learn_chapter06.py)
# ---------------------------------------------------------------------------------------------------


def lora_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                 alpha: float) -> torch.Tensor:
    """LoRA's layer: ``W x + b + (alpha/r) B A x``; x (..., in), W (out, in), A (r, in), B (out, r). Chapter 06."""
    r = A.shape[0]
    frozen = x @ weight.T + bias  # (..., out): the pretrained layer, never trained
    update = (x @ A.T) @ B.T  # (..., in) -> (..., r) -> (..., out): the low-rank path
    return frozen + (alpha / r) * update


def merge_lora_weight(weight: torch.Tensor, A: torch.Tensor, B: torch.Tensor, alpha: float) -> torch.Tensor:
    """The one (out, in) matrix that does both paths: ``W + (alpha/r) B A``. Chapter 06."""
    return weight + (alpha / A.shape[0]) * (B @ A)  # (out, r) @ (r, in) -> (out, in)


def nf4_quantize_block(block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One block of weights -> (a code 0..15 per weight, the block's absmax): what NF4 stores. Chapter 06."""
    absmax = block.abs().max()  # one float for the whole block
    scaled = block / absmax if absmax > 0 else block  # in [-1, 1] (an all-zero block stays 0)
    codes = (scaled[:, None] - NF4_CODE).abs().argmin(dim=1)  # (n,): the nearest of the 16 levels
    return codes, absmax


def nf4_dequantize_block(codes: torch.Tensor, absmax: torch.Tensor) -> torch.Tensor:
    """Codes and absmax back to weights: level * absmax. Chapter 06."""
    return NF4_CODE[codes] * absmax


def nf4_roundtrip(block: torch.Tensor) -> torch.Tensor:
    """A block of weights as NF4 gives it back: quantized, then dequantized. Chapter 06."""
    return nf4_dequantize_block(*nf4_quantize_block(block))


def int4_roundtrip(values: torch.Tensor, block_size: int = 64) -> torch.Tensor:
    """Symmetric int4 with one absmax per block: 15 evenly spaced levels, -7..7 times absmax / 7. Chapter 06.

    The uniform 4-bit code NF4 is compared with (chapter 07's int8 recipe with 4 bits).
    """
    blocks = values.reshape(-1, block_size)  # (n_blocks, block_size)
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    scale = torch.where(absmax > 0, absmax / 7, torch.ones_like(absmax))
    return (torch.round(blocks / scale).clamp(-7, 7) * scale).reshape(values.shape)


def adapter_forward(h: torch.Tensor, down_weight: torch.Tensor, down_bias: torch.Tensor, up_weight: torch.Tensor,
                    up_bias: torch.Tensor) -> torch.Tensor:
    """Houlsby's bottleneck adapter ``h + up(gelu(down(h)))``: (..., d) -> (..., d). Chapter 06."""
    z = F.gelu(h @ down_weight.T + down_bias)  # (..., m): down to the bottleneck, then the non-linearity
    return h + (z @ up_weight.T + up_bias)  # (..., d): back up, plus the residual


# ---------------------------------------------------------------------------------------------------
# The same computations by the library, on the same plain tensors
# ---------------------------------------------------------------------------------------------------


def _lora_layer(weight: torch.Tensor, bias: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                alpha: float) -> LoRALinear:
    """The library's ``LoRALinear`` around an ``nn.Linear``, holding exactly these tensors."""
    out_features, in_features = weight.shape
    with torch.random.fork_rng(devices=[]):  # its random init is overwritten: leave the caller's seed alone
        layer = LoRALinear(nn.Linear(in_features, out_features), r=A.shape[0], alpha=alpha)
    with torch.no_grad():
        for param, value in [(layer.base_layer.weight, weight), (layer.base_layer.bias, bias),
                             (layer.lora_A.weight, A), (layer.lora_B.weight, B)]:
            param.copy_(value)
    return layer


def library_lora_forward(x, weight, bias, A, B, alpha) -> torch.Tensor:
    """``lora_forward`` by the library: ``LoRALinear(nn.Linear)`` with these weights. Chapter 06."""
    with torch.no_grad():
        return _lora_layer(weight, bias, A, B, alpha)(x)


class _OneLayer(nn.Module):
    """A model that is one Linear layer named ``proj``: what peft's ``get_peft_model`` needs to wrap it."""

    def __init__(self, proj: nn.Linear) -> None:
        super().__init__()
        self.proj = proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def peft_lora_forward(x, weight, bias, A, B, alpha) -> torch.Tensor:
    """``lora_forward`` by peft: its ``LoraLayer`` on an ``nn.Linear``, with these weights. Chapter 06."""
    peft = require("peft")
    out_features, in_features = weight.shape
    with torch.random.fork_rng(devices=[]):
        base = nn.Linear(in_features, out_features)
    with torch.no_grad():
        base.weight.copy_(weight)
        base.bias.copy_(bias)
    config = peft.LoraConfig(r=A.shape[0], lora_alpha=alpha, target_modules=["proj"], bias="none")
    with torch.random.fork_rng(devices=[]):
        layer = peft.get_peft_model(_OneLayer(base), config).base_model.model.proj
    if not isinstance(layer, peft.tuners.lora.LoraLayer):
        raise TypeError(f"peft wrapped the layer as {type(layer).__name__}, not a LoraLayer")
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(A)
        layer.lora_B["default"].weight.copy_(B)
        return layer(x)


def library_merged_weight(weight, A, B, alpha) -> torch.Tensor:
    """``merge_lora_weight`` by the library: ``LoRALinear.merge()``, then its base weight. Chapter 06."""
    layer = _lora_layer(weight, torch.zeros(weight.shape[0]), A, B, alpha)
    layer.merge()
    return layer.base_layer.weight.detach().clone()


def library_nf4_block(block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``nf4_quantize_block`` by the library: ``nf4_quantize`` with one block, its codes and absmax. Chapter 06."""
    q = nf4_quantize(block, block_size=block.numel())
    return unpack_4bit(q.packed).long(), q.absmax[0]


def library_nf4_roundtrip(block: torch.Tensor) -> torch.Tensor:
    """``nf4_roundtrip`` by the library: ``nf4_dequantize(nf4_quantize(block))`` with one block. Chapter 06."""
    return nf4_dequantize(nf4_quantize(block, block_size=block.numel()))


def library_adapter_forward(h, down_weight, down_bias, up_weight, up_bias) -> torch.Tensor:
    """``adapter_forward`` by the library: a ``BottleneckAdapter`` holding these weights. Chapter 06."""
    bottleneck, dim = down_weight.shape
    with torch.random.fork_rng(devices=[]):
        adapter = BottleneckAdapter(dim, bottleneck)  # GELU, like adapter_forward
    with torch.no_grad():
        for param, value in [(adapter.down.weight, down_weight), (adapter.down.bias, down_bias),
                             (adapter.up.weight, up_weight), (adapter.up.bias, up_bias)]:
            param.copy_(value)
        return adapter(h)


# ---------------------------------------------------------------------------------------------------
# Inputs: edge cases first, then random ones
# ---------------------------------------------------------------------------------------------------


def _randn(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.from_numpy(rng.standard_normal(shape) * scale).float()


def _lora_args(rng, n_in, n_out, r, alpha, x_shape=(3,), b_zero=False):
    x = _randn(rng, *x_shape, n_in)
    weight, bias = _randn(rng, n_out, n_in, scale=n_in ** -0.5), _randn(rng, n_out, scale=0.1)
    A = _randn(rng, r, n_in, scale=n_in ** -0.5)
    B = torch.zeros(n_out, r) if b_zero else _randn(rng, n_out, r, scale=0.1)
    return x, weight, bias, A, B, float(alpha)


def lora_cases(rng: np.random.Generator):
    """Inputs ``(x, W, b, A, B, alpha)`` for ``lora_forward``: edge cases, then random shapes. Chapter 06."""
    yield Case(_lora_args(rng, 8, 6, 2, 16, b_zero=True), "B = 0, a fresh adapter: exactly the frozen layer")
    yield Case(_lora_args(rng, 8, 6, 1, 1), "r = 1, alpha = 1: a rank-one update, scaling 1")
    yield Case(_lora_args(rng, 8, 6, 4, 16, x_shape=(2, 3)), "a batch of sequences x (2, 3, in), alpha/r = 4")
    yield Case(_lora_args(rng, 5, 7, 5, 8, x_shape=()), "one vector x (in,), full rank r = min(in, out)")
    yield Case(_lora_args(rng, 6, 6, 2, 2), "r = alpha = 2: scaling 1, though alpha is not 1")
    for _ in range(12):
        r = int(rng.choice([1, 2, 4, 8]))
        n_in, n_out = (int(v) for v in rng.integers(r, 24, size=2))
        yield Case(_lora_args(rng, n_in, n_out, r, float(rng.choice([r, 2 * r, 16, 32])), x_shape=(2, 3)))


def merge_cases(rng: np.random.Generator):
    """Inputs ``(W, A, B, alpha)`` for ``merge_lora_weight``: edge cases, then random shapes. Chapter 06."""
    for args, note in [(_lora_args(rng, 8, 6, 2, 16, b_zero=True), "B = 0: the merged weight is W itself"),
                       (_lora_args(rng, 8, 6, 1, 1), "r = 1, alpha = 1: W plus one outer product"),
                       (_lora_args(rng, 4, 9, 4, 32), "full rank r = in = 4, alpha/r = 8"),
                       (_lora_args(rng, 6, 6, 3, 12), "a square W: B A and (B A).T have the same shape")]:
        yield Case(args[1:2] + args[3:], note)
    for _ in range(12):
        r = int(rng.choice([1, 2, 4, 8]))
        n_in, n_out = (int(v) for v in rng.integers(r, 24, size=2))
        args = _lora_args(rng, n_in, n_out, r, float(rng.choice([r, 2 * r, 16, 32])))
        yield Case(args[1:2] + args[3:])


def nf4_cases(rng: np.random.Generator):
    """One block of weights (1-D float32, even length) for ``nf4_roundtrip``. Chapter 06."""
    yield Case((torch.zeros(64),), "an all-zero block: absmax 0, every weight stays 0 (do not divide by 0)")
    negative = _randn(rng, 64)
    negative[10] = -4.0
    yield Case((negative,), "the largest |weight| is negative: absmax is |min|, not max")
    yield Case((NF4_CODE.repeat(4) * 0.5,), "every weight is a level times absmax = 0.5: no rounding error")
    outlier = _randn(rng, 64, scale=0.01)
    outlier[3] = 10.0
    yield Case((outlier,), "one outlier sets the scale: the other 63 weights round to levels near 0")
    yield Case((_randn(rng, 64, scale=1e-3),), "tiny weights: the levels scale with absmax, not fixed")
    yield Case((torch.tensor([0.3, -0.1]),), "a block of two weights")
    for _ in range(12):
        yield Case((_randn(rng, 64, scale=float(rng.choice([0.02, 1.0, 5.0]))),))


def _adapter_args(rng, d, m, h_shape=(3,), up_zero=False, h_zero=False):
    h = torch.zeros(*h_shape, d) if h_zero else _randn(rng, *h_shape, d)
    down_weight, down_bias = _randn(rng, m, d, scale=d ** -0.5), _randn(rng, m, scale=0.1)
    if up_zero:
        return h, down_weight, down_bias, torch.zeros(d, m), torch.zeros(d)
    return h, down_weight, down_bias, _randn(rng, d, m, scale=m ** -0.5), _randn(rng, d, scale=0.1)


def adapter_cases(rng: np.random.Generator):
    """Inputs ``(h, down_weight, down_bias, up_weight, up_bias)`` for ``adapter_forward``. Chapter 06."""
    yield Case(_adapter_args(rng, 8, 2, up_zero=True), "up = 0, as at initialization: the adapter is the identity")
    yield Case(_adapter_args(rng, 8, 1), "a bottleneck of one unit, m = 1")
    yield Case(_adapter_args(rng, 8, 3, h_zero=True), "h = 0: the output is up(gelu(down_bias)), not 0")
    yield Case(_adapter_args(rng, 8, 4, h_shape=(2, 3)), "a batch of sequences h (2, 3, d)")
    yield Case(_adapter_args(rng, 6, 5, h_shape=()), "one vector h (d,), m = d - 1")
    for _ in range(12):
        d = int(rng.integers(4, 32))
        yield Case(_adapter_args(rng, d, int(rng.integers(1, d)), h_shape=(2, 3)))


# ---------------------------------------------------------------------------------------------------
# The typical wrong answers, recognised in the feedback
# ---------------------------------------------------------------------------------------------------


def _recognise(typical: tuple[tuple[Callable, str], ...], rtol: float = 1e-5, atol: float = 1e-5) -> Callable:
    """A checker's ``compare``: the usual difference, plus what the answer did if it is a known mistake."""
    def compare(expected, actual, args):
        wrong = difference(expected, actual, rtol=rtol, atol=atol)
        if wrong is None:
            return None
        for fn, meaning in typical:
            try:
                if difference(fn(*args), actual, rtol=rtol, atol=atol) is None:
                    return f"{wrong}\n  ({meaning})"
            except Exception:  # noqa: BLE001 - a typical answer that does not apply to these shapes
                continue
        return wrong
    return compare


def _lora_times_alpha(x, weight, bias, A, B, alpha):
    return x @ weight.T + bias + alpha * (x @ A.T) @ B.T


def _lora_without_scaling(x, weight, bias, A, B, alpha):
    return x @ weight.T + bias + (x @ A.T) @ B.T


def _lora_rslora(x, weight, bias, A, B, alpha):
    return x @ weight.T + bias + alpha / A.shape[0] ** 0.5 * (x @ A.T) @ B.T


def _lora_without_bias(x, weight, bias, A, B, alpha):
    return x @ weight.T + alpha / A.shape[0] * (x @ A.T) @ B.T


_LORA_MISTAKES = (
    (_lora_times_alpha, "this is the update scaled by alpha; LoRA scales it by alpha / r"),
    (_lora_without_scaling, "this is the update without its scale; multiply B A x by alpha / r"),
    (_lora_rslora, "this scales by alpha / sqrt(r) (rsLoRA, peft's use_rslora=True); plain LoRA uses alpha / r"),
    (_lora_without_bias, "the frozen layer's bias b is missing: W x + b"),
)

_MERGE_MISTAKES = (
    (lambda W, A, B, alpha: W + alpha * (B @ A), "this adds alpha B A; the update is (alpha / r) B A"),
    (lambda W, A, B, alpha: W + B @ A, "this adds B A without its scale alpha / r"),
    (lambda W, A, B, alpha: W + alpha / A.shape[0] * (B @ A).T, "this adds (B A) transposed; B A is (out, in) like W"),
)


def _int4_levels(block):
    return int4_roundtrip(block, block.numel())


def _nf4_by_max(block):
    top = block.max()
    scaled = block / top if top != 0 else block
    return NF4_CODE[(scaled[:, None] - NF4_CODE).abs().argmin(dim=1)] * top


def _nf4_unscaled(block):
    return NF4_CODE[(block[:, None] - NF4_CODE).abs().argmin(dim=1)]


_NF4_MISTAKES = (
    (_int4_levels, "these are 15 evenly spaced int4 levels (-7..7 times absmax / 7); NF4 uses its 16 NF4_CODE levels"),
    (_nf4_by_max, "this scales by the largest weight, max(block); absmax is the largest |weight|"),
    (_nf4_unscaled, "the block was not divided by its absmax first: the levels are fractions of absmax"),
)


def _adapter_without_residual(h, dw, db, uw, ub):
    return F.gelu(h @ dw.T + db) @ uw.T + ub


def _adapter_relu(h, dw, db, uw, ub):
    return h + F.relu(h @ dw.T + db) @ uw.T + ub


def _manual_adapter(h, dw, db, uw, ub):
    """The manual's ``AdapterLayer.forward``: a LayerNorm first, ReLU (ERRATA section 6 for its other faults)."""
    x = F.layer_norm(h, h.shape[-1:])
    return h + F.relu(x @ dw.T + db) @ uw.T + ub


_ADAPTER_MISTAKES = (
    (lambda h, dw, db, uw, ub: h, "your adapter returns its input unchanged: the bottleneck path is not in the "
                                  "forward (like the manual's adapters, which nothing calls)"),
    (_adapter_without_residual, "the residual is missing: the adapter returns h + up(gelu(down(h)))"),
    (_manual_adapter, "this is the manual's AdapterLayer (a LayerNorm first, ReLU); Houlsby's adapter and the "
                      "library's BottleneckAdapter have no LayerNorm inside and use GELU"),
    (_adapter_relu, "this uses ReLU; the library's BottleneckAdapter uses (exact) GELU, F.gelu"),
)


# ---------------------------------------------------------------------------------------------------
# The exercises
# ---------------------------------------------------------------------------------------------------

GPT2_SMALL = {"n_layer": 12, "n_embd": 768}  # GPT-2 small: c_attn is 768 -> 2304 (q, k, v at once)
COURSE_GPT = {"n_layer": 5, "n_embd": 160}  # the shipped course-gpt


def lora_parameters(r: int, pairs: list[tuple[int, int]]) -> int:
    """Trainable parameters of LoRA rank ``r`` on layers of these (in, out) sizes: sum of r (in + out). Chapter 06."""
    return sum(r * (n_in + n_out) for n_in, n_out in pairs)


def adapter_parameters(dim: int, bottleneck: int, n_adapters: int) -> int:
    """Trainable parameters of ``n_adapters`` bottleneck adapters: each 2 d m + m + d. Chapter 06."""
    return n_adapters * (2 * dim * bottleneck + bottleneck + dim)


_D, _L = GPT2_SMALL["n_embd"], GPT2_SMALL["n_layer"]
_LORA_GPT2 = lora_parameters(8, [(_D, 3 * _D)] * _L)  # 294,912
_CD, _CL = COURSE_GPT["n_embd"], COURSE_GPT["n_layer"]
_ADAPTERS_COURSE = adapter_parameters(_CD, 16, 2 * _CL)  # 52,960

EXERCISES = ExerciseSet([
    FunctionExercise(
        "lora_forward", lora_forward, lora_cases, rtol=1e-5, atol=1e-5, compare=_recognise(_LORA_MISTAKES),
        task="implement: a LoRA layer's output W x + b + (alpha/r) B A x, for x of shape (..., in)",
        hint="r is A.shape[0]; with x (..., in) the frozen path is x @ W.T + b and the update (x @ A.T) @ B.T "
             "(in -> r -> out), multiplied by alpha / r, not alpha (the manual's r=8, lora_alpha=32 means x4)"),
    FunctionExercise(
        "merge_lora_weight", merge_lora_weight, merge_cases, rtol=1e-5, atol=1e-5,
        compare=_recognise(_MERGE_MISTAKES),
        task="implement: the merged weight W + (alpha/r) B A that computes the same outputs as the two paths",
        hint="B @ A is (out, r) @ (r, in) = (out, in), the shape of W; scale it by alpha / A.shape[0]"),
    FunctionExercise(
        "nf4_roundtrip", nf4_roundtrip, nf4_cases, rtol=1e-6, atol=1e-7,
        compare=_recognise(_NF4_MISTAKES, rtol=1e-6, atol=1e-7),
        task="implement: one block of weights quantized to NF4 and back (absmax, nearest of the 16 levels, "
             "times absmax)",
        hint="absmax = block.abs().max(); divide by it (unless it is 0) so the block lies in [-1, 1]; the nearest "
             "level is (scaled[:, None] - NF4_CODE).abs().argmin(dim=1); the weight comes back as "
             "NF4_CODE[code] * absmax"),
    FunctionExercise(
        "adapter_forward", adapter_forward, adapter_cases, rtol=1e-5, atol=1e-5,
        compare=_recognise(_ADAPTER_MISTAKES),
        task="implement: a bottleneck adapter h + up(gelu(down(h))), the weights given as (out, in) matrices",
        hint="down: h @ down_weight.T + down_bias, (..., d) -> (..., m); F.gelu; up: @ up_weight.T + up_bias back "
             "to (..., d); then add h. No LayerNorm inside (the manual's AdapterLayer has one; the library's "
             "does not)"),
    ValueExercise(
        "lora_params_gpt2", kind="predict", expected=_LORA_GPT2, rtol=0,
        task="predict, then measure: trainable parameters of LoRA r=8 on c_attn in every block of GPT-2 small",
        hint="GPT-2 small has 12 blocks of width d = 768; c_attn computes q, k and v at once: 768 -> 2304; LoRA adds "
             "A (r, in) and B (out, r) to each adapted layer",
        why="r (in + out) = 8 x (768 + 2304) = 24,576 per block, 12 blocks: 294,912, 0.24% of GPT-2's 124 M "
            "(the manual's q_proj + v_proj on a model with separate projections gives the same: 2 r (d + d)).",
        mistakes={lora_parameters(8, [(_D, 3 * _D)]): "that is one block; c_attn is adapted in all 12",
                  lora_parameters(8, [(_D, _D)] * _L): "c_attn is 768 -> 2304 (q, k and v at once), not 768 -> 768",
                  8 * _D * _L: "that counts only A (r x in); B (out x r) trains too",
                  _D * 3 * _D * _L: "that is the full c_attn matrices, in x out; LoRA trains r (in + out) per layer"}),
    ValueExercise(
        "adapter_params", kind="predict", expected=_ADAPTERS_COURSE, rtol=0,
        task="predict, then measure: trainable parameters of add_adapters(course-gpt, bottleneck=16)",
        hint="course-gpt: 5 blocks of width d = 160; two adapters per block (after attention and after the MLP), "
             "each a Linear d -> m and a Linear m -> d, with biases",
        why="Each adapter has 2 d m + m + d = 5,296 parameters; two per block, 5 blocks: 52,960.",
        mistakes={2 * _CL * 2 * _CD * 16: "that leaves out the two biases (m + d) of each adapter",
                  adapter_parameters(_CD, 16, _CL): "that is one adapter per block; there are two (attention and MLP)",
                  adapter_parameters(_CD, 16, 2): "that is one block; every one of the 5 blocks gets two adapters"}),
    ValueExercise(
        "nf4_bits", kind="predict", expected=nf4_bits_per_parameter(64, True, 256), rtol=2e-4,
        task="predict, then measure: bits per weight of a 1024 x 1024 matrix in NF4 with double quantization",
        hint="4 bits of code per weight; each block of 64 also stores its absmax, as an 8-bit code under double "
             "quantization, and every 256 of those codes share one float32 scale",
        why="4 + 8/64 + 32/(64 x 256) = 4.127 bits (QLoRA's figure), against 32 for float32: 7.75x smaller.",
        mistakes={4.5: "that is a float32 absmax per block of 64 (4 + 32/64): double quantization stores it in 8 bits",
                  4.0: "that is the codes alone; each block of 64 also stores its scale",
                  4.125: "add the float32 scale each 256 block constants share: 32 / (64 x 256) = 0.002 bits"}),
    ValueExercise(
        "nf4_vs_int4", kind="experiment", low=1.12, high=1.23, rtol=0.03,
        task="experiment: the RMS error of symmetric int4 over that of NF4, on 64,000 normal weights in blocks of 64",
        hint="w = torch.randn(64_000, generator=torch.Generator().manual_seed(0)); NF4: "
             "nf4_dequantize(nf4_quantize(w)); int4: per block of 64, round(w / (absmax / 7)) clamped to -7..7, "
             "times absmax / 7; RMS error: (approx - w).pow(2).mean().sqrt()",
        why="NF4's levels are denser near 0, where most normal weights are: about 15% less error at the same 4 bits.",
        mistakes={1 / 1.17: "that is NF4's error over int4's; the task asks int4's over NF4's"}),
])


def quiz() -> Quiz:
    """The end-of-lesson questions of chapter 06 (answers checked against the library by the tests)."""
    return Quiz([
        MultipleChoice("Why does LoRA start B at zero (and A random)?", (
            Choice("so that the update B A starts small but already points in a useful direction", False,
                   "B A = 0 exactly, not small: the point is that nothing changes at the start"),
            Choice("so that the adapted model starts exactly as the pretrained one, and B's gradient is non-zero",
                   True, "B A = 0 leaves every output as it was; B's gradient (dL/dh)(A x)ᵀ is non-zero because A is "
                         "random, so training moves B at the first step"),
            Choice("to halve the number of trainable parameters", False,
                   "both A and B train from the first step; zero is only their starting value"),
            Choice("both could start at zero: the gradients would make them non-zero", False,
                   "with A = B = 0 both gradients are zero (each is multiplied by the other), so LoRA never moves"),
        )),
        Numeric("How many trainable parameters does LoRA with r = 16 add to one 4096 x 4096 weight matrix?",
                16 * (4096 + 4096), "r (in + out) = 16 x 8,192 = 131,072: 0.8% of the 16.8 M weights it adapts.",
                rtol=0.001, mistakes={4096 ** 2: "that is the full matrix; LoRA trains A (r x in) and B (out x r)",
                                      16 * 4096: "that is one of the two matrices; A and B both train"}),
        Numeric("The manual's QLoRA sets r = 64, lora_alpha = 16. By what factor is B A x multiplied?", 16 / 64,
                "alpha / r = 16 / 64 = 0.25 (its LoRA, r = 8 and alpha = 32, multiplies by 4).",
                mistakes={64 / 16: "4 is r / alpha (and the manual's LoRA setting, 32 / 8); the scale is alpha / r",
                          16.0: "that is alpha alone; the update is scaled by alpha / r"}),
        MultipleChoice("After training, which can be merged into the base weights so inference costs nothing extra?", (
            Choice("both LoRA and bottleneck adapters", False,
                   "an adapter is a non-linear layer in sequence (GELU between two matrices): no matrix equals it"),
            Choice("LoRA only", True, "W x + (alpha/r) B A x = (W + (alpha/r) B A) x: one matrix; an adapter's GELU "
                                      "makes it non-linear, so it stays an extra layer"),
            Choice("adapters only", False, "adapters are non-linear; it is LoRA's linear update that folds into W"),
            Choice("neither: both always run as extra layers", False,
                   "LoRA's update is linear in x, so W + (alpha/r) B A computes both paths at once"),
        )),
        Numeric("At most how many different values can the 64 weights of one NF4 block take after dequantization?", 16,
                "4 bits give 16 codes, and one block shares one absmax: at most 16 values, NF4_CODE x absmax.", rtol=0,
                mistakes={64: "the 64 weights share one absmax and 16 levels, so many repeat",
                          15: "15 is symmetric int4 (-7..7); NF4 uses all 16 codes: 7 negative, zero, 8 positive"}),
    ])
