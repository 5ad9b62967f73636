"""Chapter 06's learning material: the references agree with the library, each checker rejects a typical
wrong answer (the manual's adapter among them), the values are what the library measures. Issue 18."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_course.learn import chapter06 as ch06
from llm_course.learn.checker import agree
from llm_course.learn.feedback import FAILED, NOT_ATTEMPTED
from llm_course.nn.quant_formats import NF4_CODE, nf4_dequantize, nf4_quantize
from llm_course.nn.quantization import quantization_error
from llm_course.train.adapters import BottleneckAdapter, add_adapters
from llm_course.train.lora import LoRALinear, apply_lora

SEEDS = [0, 1, 2]

# ---------------------------------------------------------------------------------------------------
# The references are the library's computations
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_lora_forward_is_the_librarys_lora_and_peft(seed):
    cases = list(ch06.lora_cases(np.random.default_rng(seed)))
    assert agree(ch06.lora_forward, ch06.library_lora_forward, cases, rtol=1e-5, atol=1e-5) == len(cases)
    pytest.importorskip("peft")  # peft's LoraLayer too, where it is installed
    assert agree(ch06.lora_forward, ch06.peft_lora_forward, cases, rtol=1e-5, atol=1e-5) == len(cases)


def test_library_wrappers_hold_the_given_weights():
    """The wrappers really run LoRALinear / BottleneckAdapter with the given tensors (not their own init)."""
    rng = np.random.default_rng(5)
    x, W, b, A, B, alpha = next(c.args for c in ch06.lora_cases(rng) if c.note.startswith("a batch"))
    layer = LoRALinear(nn.Linear(W.shape[1], W.shape[0]), r=A.shape[0], alpha=alpha)
    with torch.no_grad():
        layer.base_layer.weight.copy_(W), layer.base_layer.bias.copy_(b)
        layer.lora_A.weight.copy_(A), layer.lora_B.weight.copy_(B)
        assert torch.equal(ch06.library_lora_forward(x, W, b, A, B, alpha), layer(x))
        closed_form = F.linear(x, W, b) + alpha / A.shape[0] * F.linear(F.linear(x, A), B)
    assert torch.allclose(ch06.library_lora_forward(x, W, b, A, B, alpha), closed_form, atol=1e-5)
    h, dw, db, uw, ub = next(c.args for c in ch06.adapter_cases(rng) if c.note.startswith("a batch"))
    expected = h + F.linear(F.gelu(F.linear(h, dw, db)), uw, ub)
    assert torch.allclose(ch06.library_adapter_forward(h, dw, db, uw, ub), expected, atol=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_merged_weight_is_the_librarys_merge_and_computes_the_same_outputs(seed):
    cases = list(ch06.merge_cases(np.random.default_rng(seed)))
    assert agree(ch06.merge_lora_weight, ch06.library_merged_weight, cases, rtol=1e-6, atol=1e-6) == len(cases)
    for case in ch06.lora_cases(np.random.default_rng(seed)):
        x, W, b, A, B, alpha = case.args
        merged = ch06.merge_lora_weight(W, A, B, alpha)
        assert torch.allclose(x @ merged.T + b, ch06.lora_forward(*case.args), atol=1e-5), case.note


@pytest.mark.parametrize("seed", SEEDS)
def test_nf4_block_is_the_librarys_nf4(seed):
    cases = list(ch06.nf4_cases(np.random.default_rng(seed)))
    assert agree(ch06.nf4_quantize_block, ch06.library_nf4_block, [(c.args[0],) for c in cases], rtol=0, atol=0)
    assert agree(ch06.nf4_roundtrip, ch06.library_nf4_roundtrip, cases, rtol=0, atol=0) == len(cases)
    # and one block at a time is what the library does to a whole matrix in blocks of 64
    w = torch.randn(48, 64, generator=torch.Generator().manual_seed(seed))
    ours = torch.stack([ch06.nf4_roundtrip(row) for row in w])
    assert torch.equal(ours, nf4_dequantize(nf4_quantize(w, block_size=64)))


@pytest.mark.parametrize("seed", SEEDS)
def test_adapter_forward_is_the_librarys_bottleneck_adapter(seed):
    cases = list(ch06.adapter_cases(np.random.default_rng(seed)))
    assert agree(ch06.adapter_forward, ch06.library_adapter_forward, cases, rtol=1e-5, atol=1e-5) == len(cases)
    adapter = BottleneckAdapter(12, 3)  # as built: up = 0, the identity
    h = torch.randn(2, 4, 12)
    with torch.no_grad():
        assert torch.equal(ch06.adapter_forward(h, adapter.down.weight, adapter.down.bias, adapter.up.weight,
                                                adapter.up.bias), adapter(h))


# ---------------------------------------------------------------------------------------------------
# Each checker: accepts the reference, reports a stub, rejects a typical wrong answer
# ---------------------------------------------------------------------------------------------------


def _stub(*args):
    """Not written yet."""
    raise NotImplementedError()


IMPLEMENT = ["lora_forward", "merge_lora_weight", "nf4_roundtrip", "adapter_forward"]


@pytest.mark.parametrize("name", IMPLEMENT)
def test_each_chapter06_checker_accepts_the_reference_and_reports_a_stub(name):
    assert ch06.EXERCISES.check(name, ch06.EXERCISES[name].reference).passed
    assert ch06.EXERCISES.check(name, _stub).status == NOT_ATTEMPTED
    cases = ch06.EXERCISES[name].all_cases()
    assert sum(bool(c.note) for c in cases) >= 4 and sum(not c.note for c in cases) >= 10  # edge and random


def _lora_times_alpha(x, W, b, A, B, alpha):
    return x @ W.T + b + alpha * (x @ A.T) @ B.T  # the typical slip: alpha, not alpha / r


def _lora_r_over_alpha(x, W, b, A, B, alpha):
    return x @ W.T + b + A.shape[0] / alpha * (x @ A.T) @ B.T


def _lora_rslora(x, W, b, A, B, alpha):
    return x @ W.T + b + alpha / A.shape[0] ** 0.5 * (x @ A.T) @ B.T


def _lora_in_place(x, W, b, A, B, alpha):
    W += alpha / A.shape[0] * (B @ A)  # merges into the caller's weight
    return x @ W.T + b


def _merge_times_alpha(W, A, B, alpha):
    return W + alpha * B @ A


def _merge_transposed(W, A, B, alpha):
    return W + alpha / A.shape[0] * (A.T @ B.T)


def _nf4_int4(block):
    absmax = block.abs().max()
    scale = absmax / 7 if absmax > 0 else torch.tensor(1.0)
    return torch.round(block / scale) * scale  # 15 evenly spaced levels: int4, not NF4


def _nf4_forgets_absmax(block):
    absmax = block.abs().max()
    scaled = block / absmax if absmax > 0 else block
    return NF4_CODE[(scaled[:, None] - NF4_CODE).abs().argmin(dim=1)]  # the levels, not times absmax


def _nf4_by_max(block):
    top = block.max()  # the largest weight, not the largest |weight|
    scaled = block / top if top != 0 else block
    return NF4_CODE[(scaled[:, None] - NF4_CODE).abs().argmin(dim=1)] * top


def _nf4_round_up(block):
    absmax = block.abs().max()
    scaled = block / absmax if absmax > 0 else block
    codes = torch.searchsorted(NF4_CODE, scaled.contiguous())  # the next level up, not the nearest
    return NF4_CODE[codes.clamp(max=15)] * absmax


class ManualAdapterLayer(nn.Module):
    """The manual's ``AdapterLayer`` (chapter 6), as written."""

    def __init__(self, d_model, bottleneck_size=64):
        super().__init__()
        self.down_proj = nn.Linear(d_model, bottleneck_size)
        self.up_proj = nn.Linear(bottleneck_size, d_model)
        self.activation = nn.ReLU()
        self.layer_norm = nn.LayerNorm(d_model)

    def forward(self, x):
        residual = x
        x = self.layer_norm(x)
        x = self.down_proj(x)
        x = self.activation(x)
        x = self.up_proj(x)
        return x + residual


def _manual_adapter(h, dw, db, uw, ub):
    layer = ManualAdapterLayer(dw.shape[1], dw.shape[0])
    with torch.no_grad():
        layer.down_proj.weight.copy_(dw), layer.down_proj.bias.copy_(db)
        layer.up_proj.weight.copy_(uw), layer.up_proj.bias.copy_(ub)
        return layer(h)


def _adapter_never_called(h, dw, db, uw, ub):
    return h  # the manual's add_adapters_to_model: the adapters are attributes nothing calls


def _adapter_no_residual(h, dw, db, uw, ub):
    return F.linear(F.gelu(F.linear(h, dw, db)), uw, ub)


def _adapter_tanh_gelu(h, dw, db, uw, ub):
    return h + F.linear(F.gelu(F.linear(h, dw, db), approximate="tanh"), uw, ub)


@pytest.mark.parametrize("name, wrong, words", [
    ("lora_forward", _lora_times_alpha, ["differs", "scaled by alpha; LoRA scales it by alpha / r"]),
    ("lora_forward", _lora_r_over_alpha, ["differs"]),
    ("lora_forward", _lora_rslora, ["rsLoRA"]),
    ("lora_forward", _lora_in_place, ["changed its input `weight` in place"]),
    ("merge_lora_weight", _merge_times_alpha, ["this adds alpha B A"]),
    ("merge_lora_weight", _merge_transposed, ["raised RuntimeError"]),
    ("nf4_roundtrip", _nf4_int4, ["15 evenly spaced int4 levels"]),
    ("nf4_roundtrip", _nf4_forgets_absmax, ["differs", "the largest |weight| is negative"]),
    ("nf4_roundtrip", _nf4_by_max, ["absmax is |min|, not max", "max(block)"]),
    ("nf4_roundtrip", _nf4_round_up, ["differs"]),
    ("adapter_forward", _manual_adapter, ["the manual's AdapterLayer"]),
    ("adapter_forward", _adapter_never_called, ["returns its input unchanged", "nothing calls"]),
    ("adapter_forward", _adapter_no_residual, ["the residual is missing", "up = 0"]),
    ("adapter_forward", _adapter_tanh_gelu, ["differs"]),
    ("lora_params_gpt2", 24_576, ["one block"]),
    ("lora_params_gpt2", 12 * 8 * (768 + 768), ["768 -> 2304"]),
    ("lora_params_gpt2", 12 * 8 * 768, ["only A"]),
    ("adapter_params", 51_200, ["biases"]),
    ("adapter_params", 26_480, ["two (attention and MLP)"]),
    ("nf4_bits", 4.5, ["double quantization"]),
    ("nf4_bits", 4.125, ["256"]),
    ("nf4_vs_int4", 1 / 1.17, ["NF4's error over int4's"]),
    ("nf4_vs_int4", 1.0, ["outside the range"]),
])
def test_each_chapter06_checker_rejects_a_typical_wrong_answer(name, wrong, words):
    result = ch06.EXERCISES.check(name, wrong, explanation="a sentence of several words")
    assert result.status == FAILED
    for w in words:
        assert w in result.message, result.message


# ---------------------------------------------------------------------------------------------------
# Predictions and experiments: what the library measures
# ---------------------------------------------------------------------------------------------------


def test_chapter06_predictions_are_what_the_library_counts():
    from transformers import GPT2Config, GPT2LMHeadModel

    from llm_course.models.gpt import GPT, GPTConfig

    with torch.device("meta"):
        gpt2 = GPT2LMHeadModel(GPT2Config())  # GPT-2 small's shape, no memory
        course = GPT(GPTConfig(vocab_size=4096, n_positions=384, n_embd=160, n_layer=5, n_head=5))
    apply_lora(gpt2, ["c_attn"], r=8)
    lora = sum(p.numel() for p in gpt2.parameters() if p.requires_grad)
    assert ch06.EXERCISES.check("lora_params_gpt2", lora).passed and lora == 294_912
    add_adapters(course, bottleneck=16)
    adapters = sum(p.numel() for p in course.parameters() if p.requires_grad)
    assert ch06.EXERCISES.check("adapter_params", adapters).passed and adapters == 52_960
    bits = nf4_quantize(torch.randn(1024, 1024), double_quant=True).bits_per_parameter
    assert ch06.EXERCISES.check("nf4_bits", bits).passed and ch06.EXERCISES.check("nf4_bits", 4.127).passed


def test_course_gpt_shape_is_the_shipped_checkpoints():
    from llm_course.zoo.loading import checkpoint_dir

    config = json.loads((checkpoint_dir("course-gpt") / "config.json").read_text())
    assert (config["n_layer"], config["n_embd"]) == (ch06.COURSE_GPT["n_layer"], ch06.COURSE_GPT["n_embd"])


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_chapter06_experiment_range_holds_what_the_library_measures(seed):
    w = torch.randn(64_000, generator=torch.Generator().manual_seed(seed))
    nf4 = quantization_error(w, nf4_dequantize(nf4_quantize(w, block_size=64)))["rmse"]
    blocks = w.view(-1, 64)
    scale = blocks.abs().amax(dim=1, keepdim=True) / 7
    int4 = quantization_error(w, (torch.round(blocks / scale) * scale).view(-1))["rmse"]  # written independently
    assert torch.allclose(ch06.int4_roundtrip(w), (torch.round(blocks / scale) * scale).view(-1))
    sentence = "NF4 levels crowd where normal weights are"
    assert ch06.EXERCISES.check("nf4_vs_int4", int4 / nf4, explanation=sentence).passed, int4 / nf4


# ---------------------------------------------------------------------------------------------------
# The quiz
# ---------------------------------------------------------------------------------------------------


def test_chapter06_quiz_answers_are_what_the_library_computes():
    quiz = ch06.quiz()
    assert 3 <= len(quiz) <= 5
    with torch.device("meta"):
        big = LoRALinear(nn.Linear(4096, 4096), r=16)
    assert quiz.answer(2, sum(p.numel() for p in big.parameters() if p.requires_grad)).passed
    assert not quiz.answer(2, 4096 ** 2).passed
    assert quiz.answer(3, LoRALinear(nn.Linear(128, 128), r=64, alpha=16).scaling).passed
    assert "r / alpha" in str(quiz.answer(3, 4))
    # a block built from the 16 levels comes back with all 16 of them; a random block never with more
    assert quiz.answer(5, len(torch.unique(ch06.library_nf4_roundtrip(NF4_CODE.repeat(4))))).passed
    assert len(torch.unique(ch06.library_nf4_roundtrip(torch.randn(64)))) <= 16
    for number, right in [(1, "b"), (4, "b")]:
        q = quiz.questions[number - 1]
        assert [quiz.answer(number, k).passed for k in q.letters] == [k == right for k in q.letters]


def test_quiz_facts_hold_in_the_library():
    """Question 1 (B = 0 starts at the base; A = B = 0 never moves) and 4 (LoRA merges, an adapter does not)."""
    torch.manual_seed(0)
    base = nn.Linear(8, 6)
    x, target = torch.randn(4, 8), torch.randn(4, 6)
    lora = LoRALinear(copy.deepcopy(base), r=2, alpha=4)
    assert torch.equal(lora(x), base(x))
    ((lora(x) - target) ** 2).mean().backward()
    assert lora.lora_B.weight.grad.abs().sum() > 0 and lora.lora_A.weight.grad.abs().sum() == 0
    both_zero = LoRALinear(copy.deepcopy(base), r=2, alpha=4)
    nn.init.zeros_(both_zero.lora_A.weight)
    ((both_zero(x) - target) ** 2).mean().backward()
    assert both_zero.lora_A.weight.grad.abs().sum() == 0 and both_zero.lora_B.weight.grad.abs().sum() == 0
    adapter = BottleneckAdapter(8, 2)
    nn.init.normal_(adapter.up.weight)
    with torch.no_grad():  # not linear: adapter(2 h) != 2 adapter(h) - h, so no matrix can stand for it
        assert not torch.allclose(adapter(2 * x) - 2 * x, 2 * (adapter(x) - x), atol=1e-3)


# ---------------------------------------------------------------------------------------------------
# The lesson
# ---------------------------------------------------------------------------------------------------


def _lesson_code() -> list[str]:
    nbformat = pytest.importorskip("nbformat")
    from llm_course.chapters import find_chapter

    nb = nbformat.read(find_chapter("06").notebook(), as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code"]


def test_chapter06_key_lines_are_on_the_page_and_checked():
    code = _lesson_code()
    where = {name: next(i for i, s in enumerate(code) if f"def {name}(" in s)
             for name in ("lora_forward", "merge", "nf4_block", "adapter_forward")}
    assert where["lora_forward"] == where["merge"]
    checks = {"lora_forward": ["agree(lora_forward, chapter06.library_lora_forward",
                               "agree(lora_forward, chapter06.peft_lora_forward",
                               "agree(merge, chapter06.library_merged_weight"],
              "nf4_block": ["agree(nf4_block, chapter06.library_nf4_block"],
              "adapter_forward": ["agree(adapter_forward, chapter06.library_adapter_forward"]}
    for name, calls in checks.items():
        i = where[name]
        assert len(code[i].splitlines()) <= 30, "a key-lines cell should be short enough to read"
        assert "agree(" not in code[i], "the key lines stand alone; the check is the next cell"
        for call in calls:
            assert call in code[i + 1], f"the cell after {name} should check it: {call}"
        assert "Case(" in code[i + 1], "the check needs edge cases with notes"
    assert "chapter06.quiz()" in code[-1] and "quiz.show()" in code[-1]
