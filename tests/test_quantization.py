"""Chapter 07 (and 06): int8 and NF4 quantization against closed-form bounds and the libraries."""

from __future__ import annotations

import copy
import sys
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_course.core.deps import MissingDependencyError
from llm_course.models.gpt import GPT, GPTConfig
from llm_course.nn.quant_formats import (
    NF4_CODE,
    int8_dequantize,
    int8_quantize,
    nf4_bits_per_parameter,
    nf4_code_from_normal_quantiles,
    nf4_dequantize,
    nf4_quantize,
    pack_4bit,
    unpack_4bit,
)
from llm_course.nn.quantization import (
    LIBRARY_METHODS,
    Int8Linear,
    NF4Linear,
    conv1d_to_linear,
    model_size_bytes,
    quantization_error,
    quantize_int8,
    quantize_int8_library,
    quantize_nf4,
    quantized_layers,
    quantized_linear_names,
    torchao_available,
)

CONFIG = GPTConfig(vocab_size=101, n_positions=32, n_embd=64, n_layer=2, n_head=4)
needs_torchao = pytest.mark.skipif(not torchao_available(), reason="pip install torchao")


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(CONFIG).eval()


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, CONFIG.vocab_size, (3, 20), generator=torch.Generator().manual_seed(1))


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def _linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if type(m) is nn.Linear}


# --------------------------------------------------------------------------------------------
# int8, written out
# --------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(out=st.integers(1, 12), inp=st.integers(1, 40), log_scale=st.floats(-6, 3), seed=st.integers(0, 2**16))
def test_int8_round_trip_error_is_at_most_half_a_step(out, inp, log_scale, seed):
    w = torch.randn(out, inp, generator=torch.Generator().manual_seed(seed)) * 10**log_scale
    q, scale = int8_quantize(w)
    assert q.dtype == torch.int8 and q.shape == w.shape and scale.shape == (out,)
    assert int(q.min()) >= -127 and int(q.max()) <= 127  # symmetric: -128 is never used
    torch.testing.assert_close(scale, w.abs().amax(dim=1) / 127)  # absmax per output channel
    assert torch.equal(q.abs().amax(dim=1), torch.full((out,), 127, dtype=torch.int8))  # absmax -> +-127
    err = (int8_dequantize(q, scale) - w).abs()
    assert (err <= scale[:, None] / 2 * (1 + 1e-5)).all()


def test_int8_zero_row_is_exact():
    w = torch.randn(3, 8)
    w[1] = 0
    q, scale = int8_quantize(w)
    assert torch.equal(int8_dequantize(q, scale)[1], torch.zeros(8))
    assert torch.isfinite(scale).all()


def test_int8_linear_output_error_bound():
    """|y_i - y_hat_i| = |sum_j x_j (W_ij - W_hat_ij)| <= (scale_i / 2) * ||x||_1, in closed form."""
    torch.manual_seed(0)
    linear = nn.Linear(48, 20)
    layer = Int8Linear.from_linear(linear)
    x = torch.randn(5, 7, 48)
    y, y_hat = linear(x).detach(), layer(x)
    torch.testing.assert_close(y_hat, F.linear(x, layer.dequantized_weight(), linear.bias.detach()))
    bound = x.abs().sum(-1, keepdim=True) * layer.weight_scale / 2
    assert ((y - y_hat).abs() <= bound * (1 + 1e-4) + 1e-6).all()
    assert layer.weight_int8.dtype == torch.int8 and not list(layer.parameters())  # frozen, stored as int8


def test_quantize_int8_gpt_logits_close_and_original_untouched(model, ids):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = quantize_int8(model)
    ref, out = _logits(model, ids), _logits(q, ids)
    assert (out - ref).abs().max() < 0.02 * ref.abs().max()
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # a copy was quantized
    linears = _linears(model)
    assert set(quantized_linear_names(model)) == set(linears) - {"lm_head"}
    assert all(isinstance(q.get_submodule(n), Int8Linear) for n in linears if n != "lm_head")
    assert q.lm_head.weight is q.wte.weight  # the tie is kept: lm_head stays float


def test_model_size_counts_int8_storage_exactly(model):
    """fp32: 4 bytes per parameter, tied weights once. int8: 1 byte per weight + 4 per scale and bias."""
    n_params = sum(p.numel() for p in model.parameters())  # parameters() yields the tied matrix once
    assert model_size_bytes(model) == 4 * n_params
    q = quantize_int8(model)
    saved = 0
    for layer in _linears(model).values():
        if layer.weight is model.wte.weight:
            continue
        out_f, in_f = layer.weight.shape
        saved += 4 * out_f * in_f - (out_f * in_f + 4 * out_f)  # float weight -> int8 codes + scales
    assert model_size_bytes(q) == 4 * n_params - saved


def test_untied_lm_head_gets_its_own_int8_copy(model, ids):
    q = quantize_int8(model, keep_tied=False)
    assert isinstance(q.lm_head, Int8Linear) and isinstance(q.wte, nn.Embedding)
    ref = _logits(model, ids)
    assert (_logits(q, ids) - ref).abs().max() < 0.03 * ref.abs().max()


def test_int8_bad_input():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        quantize_int8("not a model")
    with pytest.raises(ValueError, match="2-D float weight"):
        int8_quantize(torch.randn(3))
    with pytest.raises(TypeError, match="nn.Linear"):
        Int8Linear.from_linear(nn.Conv1d(2, 2, 1))


# --------------------------------------------------------------------------------------------
# int8 with the libraries
# --------------------------------------------------------------------------------------------


def _library_weight(layer: nn.Module) -> torch.Tensor:
    """The float weight a library-quantized layer stands for."""
    if callable(getattr(layer, "weight", None)):  # torch.ao's dynamic Linear: weight() is a qint8 tensor
        return layer.weight().dequantize()
    return layer.weight.dequantize()  # torchao: a quantized tensor subclass


@pytest.mark.parametrize("method", LIBRARY_METHODS)
def test_library_int8_close_to_written_out(model, ids, method):
    if method.startswith("torchao") and not torchao_available():
        pytest.skip("pip install torchao")
    q = quantize_int8_library(model, method)
    ref = _logits(model, ids)
    mine = quantize_int8(model)
    tol = 0.05 if "dynamic" in method else 0.02  # dynamic methods also round the activations to 8 bits
    assert (_logits(q, ids) - ref).abs().max() < tol * ref.abs().max()
    for name, layer in _linears(model).items():
        if name == "lm_head":
            assert q.lm_head.weight is q.wte.weight  # not quantized: still tied
            continue
        w, lib = layer.weight.detach(), _library_weight(q.get_submodule(name))
        ours = mine.get_submodule(name)
        # the same per-channel int8 grid up to the scale (libraries divide by 127.5 instead of 127):
        # each weight is within half a step of the original, so within one step of ours
        step = ours.weight_scale[:, None]
        assert ((lib - w).abs() <= step / 2 * (1 + 1e-4)).all()
        assert ((lib - ours.dequantized_weight()).abs() <= step * (1 + 1e-4)).all()
    assert model_size_bytes(q) < 0.5 * model_size_bytes(model)


@needs_torchao
def test_torchao_weight_only_matches_written_out_logits(model, ids):
    """Weight-only int8 in torchao and in Int8Linear: the same kind of model, nearly the same logits."""
    a, b = _logits(quantize_int8_library(model, "torchao-weight-only"), ids), _logits(quantize_int8(model), ids)
    ref = _logits(model, ids)
    assert (a - b).abs().max() < 0.5 * (b - ref).abs().max() + 0.01 * ref.abs().max()


def test_missing_torchao_is_a_clear_error(model, monkeypatch):
    for name in [m for m in sys.modules if m == "torchao" or m.startswith("torchao.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torchao", None)  # "import torchao" now fails as if not installed
    assert not torchao_available()
    with pytest.raises(MissingDependencyError, match="pip install torchao"):
        quantize_int8_library(model, "torchao-weight-only")
    with pytest.warns(UserWarning, match="falling back"):
        q = quantize_int8_library(model, "auto")
    assert type(q.h[0].mlp.up_proj).__module__.startswith("torch.ao.nn.quantized.dynamic")  # quantize_dynamic


def test_library_bad_input(model):
    with pytest.raises(ValueError, match="unknown method"):
        quantize_int8_library(model, "int3")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        quantize_int8_library(42, "torch.ao-dynamic")


# --------------------------------------------------------------------------------------------
# NF4
# --------------------------------------------------------------------------------------------


def test_nf4_code_book_matches_normal_quantile_construction():
    rebuilt = nf4_code_from_normal_quantiles()
    assert rebuilt.shape == (16,)
    torch.testing.assert_close(NF4_CODE.double(), rebuilt, atol=1e-6, rtol=0)  # bitsandbytes stores float32
    assert torch.all(NF4_CODE[1:] > NF4_CODE[:-1])  # strictly increasing
    assert NF4_CODE[0] == -1 and NF4_CODE[-1] == 1 and (NF4_CODE == 0).sum() == 1
    assert (NF4_CODE < 0).sum() == 7 and (NF4_CODE > 0).sum() == 8  # asymmetric, to have an exact zero
    # equal-area bins: each positive value sits at a quantile spaced evenly in probability
    largest = torch.special.ndtri(torch.tensor(1 - (1 / 30 + 1 / 32) / 2, dtype=torch.float64))
    gaps = torch.special.ndtr(NF4_CODE[8:].double() * largest).diff()
    torch.testing.assert_close(gaps, torch.full_like(gaps, gaps.mean().item()), atol=1e-6, rtol=0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 15), min_size=0, max_size=64).filter(lambda v: len(v) % 2 == 0))
def test_pack_unpack_round_trip(values):
    codes = torch.tensor(values, dtype=torch.uint8)
    packed = pack_4bit(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == len(values) // 2
    assert torch.equal(unpack_4bit(packed), codes)


def test_pack_layout_and_errors():
    assert pack_4bit(torch.tensor([1, 2, 15, 0])).tolist() == [0x12, 0xF0]  # first code in the high nibble
    with pytest.raises(ValueError, match="even length"):
        pack_4bit(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="0..15"):
        pack_4bit(torch.tensor([16, 0]))


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 100), seed=st.integers(0, 2**16))
def test_nf4_picks_the_nearest_code_and_error_is_bounded(rows, cols, seed):
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    q = nf4_quantize(w, block_size=64)
    assert q.packed.dtype == torch.uint8 and q.absmax.dtype == torch.float32
    n = w.numel()
    blocks = F.pad(w.reshape(-1), (0, q.absmax.numel() * 64 - n)).view(-1, 64)
    torch.testing.assert_close(q.absmax, blocks.abs().amax(1))
    codes = unpack_4bit(q.packed).long()[:n]
    normalized = (blocks / blocks.abs().amax(1, keepdim=True).clamp_min(1e-30)).reshape(-1)[:n]
    distance = (normalized[:, None] - NF4_CODE[None, :]).abs()  # (n, 16): brute-force nearest code
    assert torch.allclose(distance.gather(1, codes[:, None])[:, 0], distance.min(1).values, atol=1e-6)
    # hence |w - w_hat| <= absmax * (half the largest gap next to the chosen code)
    half_gap = torch.maximum(F.pad(NF4_CODE.diff(), (1, 0)), F.pad(NF4_CODE.diff(), (0, 1))) / 2
    bound = blocks.abs().amax(1).repeat_interleave(64)[:n] * half_gap[codes]
    err = (nf4_dequantize(q) - w).abs().reshape(-1)
    assert (err <= bound * (1 + 1e-5) + 1e-7).all()
    assert nf4_dequantize(q).shape == w.shape


def test_nf4_beats_uniform_4bit_on_normal_weights():
    """The point of NF4: for normally distributed weights it has less error than evenly spaced 4-bit codes."""
    w = torch.randn(256, 256, generator=torch.Generator().manual_seed(0))
    nf4_err = quantization_error(w, nf4_dequantize(nf4_quantize(w)))
    blocks = w.reshape(-1, 64)
    absmax = blocks.abs().amax(1, keepdim=True)
    int4 = (torch.round(blocks / absmax * 7).clamp(-7, 7) / 7 * absmax).view_as(w)  # symmetric absmax int4
    int4_err = quantization_error(w, int4)
    assert nf4_err["rmse"] < 0.9 * int4_err["rmse"]
    assert 0.05 < nf4_err["relative_rmse"] < 0.15 and nf4_err["sqnr_db"] > 18


def test_double_quant_bookkeeping_and_bits_per_parameter():
    assert nf4_bits_per_parameter(64, double_quant=False) == 4.5
    assert nf4_bits_per_parameter(64, double_quant=True, dq_block_size=256) == pytest.approx(4.127, abs=5e-4)
    w = torch.randn(128, 256, generator=torch.Generator().manual_seed(0))  # 512 blocks, 2 second-level blocks
    plain, dq = nf4_quantize(w), nf4_quantize(w, double_quant=True)
    assert plain.nbytes == 128 * 256 // 2 + 512 * 4 and plain.bits_per_parameter == 4.5
    assert dq.absmax is None and dq.absmax_int8.dtype == torch.int8 and dq.absmax_int8.shape == (512,)
    assert dq.absmax_scale.shape == (2,) and dq.absmax_mean.shape == ()
    assert dq.nbytes == 128 * 256 // 2 + 512 + 2 * 4 + 4  # codes, int8 absmax, 2 scales, the mean
    assert dq.bits_per_parameter == pytest.approx(nf4_bits_per_parameter(), abs=32 / w.numel() + 1e-9)
    assert 32 / dq.bits_per_parameter > 7.7 and 16 / dq.bits_per_parameter > 3.8  # vs float32 and bfloat16
    # the second-level error: each absmax is within half an int8 step of the true one
    step = dq.absmax_scale.repeat_interleave(256)
    assert ((dq.block_absmax() - plain.absmax).abs() <= step / 2 * (1 + 1e-5)).all()
    # and the weights then move by at most |code| * that, on top of the first-level error
    extra = (dq.block_absmax() - plain.absmax).abs().repeat_interleave(64).view_as(w)
    assert ((nf4_dequantize(dq) - nf4_dequantize(plain)).abs() <= extra * (1 + 1e-5) + 1e-7).all()


def test_nf4_linear_and_quantize_nf4(model, ids):
    torch.manual_seed(0)
    linear = nn.Linear(64, 96)
    layer = NF4Linear.from_linear(linear)
    x = torch.randn(4, 64)
    torch.testing.assert_close(layer(x), F.linear(x, layer.dequantized_weight(), linear.bias.detach()))
    assert layer.packed.dtype == torch.uint8 and not list(layer.parameters())
    q = quantize_nf4(model)
    ref = _logits(model, ids)
    assert (_logits(q, ids) - ref).abs().max() < 0.1 * ref.abs().max()
    assert isinstance(q.h[1].attn.qkv_proj, NF4Linear) and q.lm_head.weight is q.wte.weight
    assert model_size_bytes(q) < model_size_bytes(quantize_int8(model)) < model_size_bytes(model)
    # the quantized layers' weights: about 4.127 bits each
    nf4_bytes = sum(m.weight_nf4.nbytes for m in q.modules() if isinstance(m, NF4Linear))
    n_weights = sum(m.in_features * m.out_features for m in q.modules() if isinstance(m, NF4Linear))
    assert 8 * nf4_bytes / n_weights == pytest.approx(4.127, abs=0.01)


def test_nf4_bad_input():
    with pytest.raises(ValueError, match="block_size"):
        nf4_quantize(torch.randn(10), block_size=63)
    with pytest.raises(ValueError, match="non-empty float"):
        nf4_quantize(torch.arange(4))
    with pytest.raises(TypeError, match="NF4Weight"):
        nf4_dequantize(torch.randn(4))


def test_quantization_error_closed_form():
    x = torch.tensor([1.0, -1.0, 1.0, -1.0])
    e = quantization_error(x, x + torch.tensor([0.1, -0.1, 0.1, -0.1]))
    assert e["max_abs"] == pytest.approx(0.1) and e["rmse"] == pytest.approx(0.1)
    assert e["relative_rmse"] == pytest.approx(0.1) and e["sqnr_db"] == pytest.approx(20.0)
    with pytest.raises(ValueError, match="shapes differ"):
        quantization_error(x, x[:2])


# --------------------------------------------------------------------------------------------
# GPT-2's Conv1D (ERRATA section 7): the manual's quantize_dynamic skips it; ours must not
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2(model):
    """The same weights as ``model`` in transformers' GPT2LMHeadModel: Conv1D layers, (in, out) weights."""
    return model.to_hf().eval()


def _conv1d_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if type(m).__name__ == "Conv1D"]


def test_conv1d_to_linear_is_the_same_map():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    conv = Conv1D(7, 5)  # nf=7 outputs, nx=5 inputs: weight (5, 7)
    with torch.no_grad():
        conv.bias.normal_()
    linear = conv1d_to_linear(conv)
    x = torch.randn(3, 4, 5)
    assert type(linear) is nn.Linear and linear.weight.shape == (7, 5)
    torch.testing.assert_close(linear(x), conv(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(linear(x), x @ conv.weight + conv.bias)  # Conv1D's definition, by hand
    # one int8 scale per *output*: per column of the Conv1D weight, not per row
    layer = Int8Linear.from_linear(conv)
    torch.testing.assert_close(layer.weight_scale, conv.weight.detach().abs().amax(dim=0) / 127)
    assert NF4Linear.from_linear(conv).out_features == 7
    with pytest.raises(TypeError, match="Conv1D"):
        conv1d_to_linear(nn.Conv1d(2, 2, 1))


def test_manual_quantize_dynamic_on_gpt2_quantizes_only_the_tied_lm_head(gpt2):
    """The manual's call: quantize_dynamic(model, {nn.Linear}). GPT-2's projections are Conv1D, so only the
    lm_head (tied to the embedding) is an nn.Linear: it alone is quantized, as an untied copy."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation warnings
        manual = quantize_dynamic(copy.deepcopy(gpt2), {nn.Linear}, dtype=torch.qint8)
    assert quantized_layers(manual) == ["lm_head"]
    assert len(_conv1d_names(manual)) == 4 * CONFIG.n_layer  # c_attn, attn.c_proj, c_fc, mlp.c_proj: float32
    assert model_size_bytes(manual) > model_size_bytes(gpt2)  # the int8 head is an extra copy: it grows


QUANTIZERS = {
    "int8": quantize_int8,
    "nf4": quantize_nf4,
    "torch.ao-dynamic": lambda m: quantize_int8_library(m, "torch.ao-dynamic"),
    "torchao-weight-only": lambda m: quantize_int8_library(m, "torchao-weight-only"),
    "torchao-dynamic": lambda m: quantize_int8_library(m, "torchao-dynamic"),
}


@pytest.mark.parametrize("name", list(QUANTIZERS))
def test_every_quantizer_quantizes_gpt2_conv1d_layers(model, gpt2, ids, name):
    """Every Conv1D really quantized (none left in float), the tied head kept, and the logits equal to the
    same quantizer on the course GPT (the same weights in (out, in) layout): the transpose is right."""
    if name.startswith("torchao") and not torchao_available():
        pytest.skip("pip install torchao")
    quantize = QUANTIZERS[name]
    conv = _conv1d_names(gpt2)
    q = quantize(gpt2)
    assert _conv1d_names(q) == [] and _conv1d_names(gpt2) == conv  # the original is untouched
    assert sorted(quantized_layers(q)) == sorted(conv)
    assert q.lm_head.weight is q.transformer.wte.weight
    ours = quantize(model)
    assert len(quantized_layers(ours)) == len(conv)
    ref, out = _logits(model, ids), _logits(q, ids)
    tol = {"nf4": 0.1, "torch.ao-dynamic": 0.05, "torchao-dynamic": 0.05}.get(name, 0.02)
    assert (out - ref).abs().max() < tol * ref.abs().max()
    torch.testing.assert_close(out, _logits(ours, ids), rtol=0, atol=1e-4)
    assert model_size_bytes(q) < 0.5 * model_size_bytes(gpt2)


def test_nothing_to_quantize_is_a_clear_error():
    with pytest.raises(ValueError, match=r"no layer to quantize.*Conv1d"):
        quantize_int8(nn.Sequential(nn.Conv1d(2, 2, 1)))
    with pytest.raises(ValueError, match="no layer to quantize"):
        quantize_nf4(nn.Sequential(nn.Embedding(5, 4)))
    assert quantized_layers(nn.Linear(2, 2)) == []
