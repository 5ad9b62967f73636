"""Chapter 03's learning material: references agree with the library, checkers reject typical mistakes. Issue 18."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llm_course.learn import chapter03 as ch03
from llm_course.learn.feedback import FAILED, NOT_ATTEMPTED
from llm_course.models.gpt import GPT, GPTConfig
from llm_course.models.manual_ch02 import ManualCustomGPT, ManualMultiHeadAttention
from llm_course.nn import attention as lib

# ---------------------------------------------------------------------------------------------------
# The references are the library's code (and PyTorch's), on the checkers' own inputs
# ---------------------------------------------------------------------------------------------------


def _cases(name):
    return ch03.EXERCISES[name].all_cases()


def test_causal_mask_is_the_librarys():
    for case in _cases("causal_mask"):
        tq, tk = case.args
        assert torch.equal(ch03.causal_mask(tq, tk), lib.causal_mask(tq, key_length=tk)), case


def test_attention_is_the_librarys_and_torchs():
    for case in _cases("attention"):
        q, k, v, mask = case.args
        out, weights = ch03.attention(q, k, v, mask)
        ref_out, ref_weights = lib.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        assert torch.allclose(out, ref_out, atol=1e-6) and torch.allclose(weights, ref_weights, atol=1e-6), case
        fused, _ = lib.fast_scaled_dot_product_attention(q, k, v, attn_mask=mask)
        assert torch.allclose(out, fused, atol=1e-5), case
        if mask is None or bool(mask.any(-1).all()):  # torch 2.4 returns NaN for a query that sees no key
            assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-5), case
    assert any(c.args[3] is not None and not bool(c.args[3].any(-1).all()) for c in _cases("attention")), \
        "an edge case must have a query that may see no key"


def test_split_heads_is_the_librarys():
    for case in _cases("split_heads"):
        assert torch.equal(ch03.split_heads(*case.args), lib.split_heads(*case.args)), case


def test_kv_cache_step_is_the_last_row_of_the_full_recompute():
    for case in _cases("kv_cache_step"):
        q_new, k_new, v_new, k_cache, v_cache = case.args
        out, k_all, v_all = ch03.kv_cache_step(*case.args)
        q_all = torch.cat([torch.randn_like(k_cache), q_new], dim=2)  # the past queries do not touch the last row
        full, _ = lib.scaled_dot_product_attention(q_all, k_all, v_all, is_causal=True)
        assert torch.allclose(out, full[:, :, -1:], atol=1e-6), case
        assert torch.equal(k_all[:, :, -1:], k_new) and torch.equal(v_all[:, :, :-1], v_cache)


def test_kv_cache_step_is_multi_head_attentions_cache_path():
    torch.manual_seed(0)
    mha = lib.MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 7, 16)
    with torch.no_grad():
        past = mha(x[:, :6], use_cache=True).present_key_value
        q, k, v = (lib.split_heads(t, 4) for t in mha.qkv_proj(x[:, 6:]).split(16, dim=-1))
        out, k_all, v_all = ch03.kv_cache_step(q, k, v, *past)
        step = mha(x[:, 6:], past_key_value=past, use_cache=True, is_causal=True)
    assert torch.allclose(mha.out_proj(lib.merge_heads(out)), step.output, atol=1e-6)
    assert torch.equal(k_all, step.present_key_value[0]) and torch.equal(v_all, step.present_key_value[1])


# ---------------------------------------------------------------------------------------------------
# Each checker accepts the reference, reports a stub, and rejects the typical wrong answers
# ---------------------------------------------------------------------------------------------------


def _stub(*args):
    """Not written yet."""
    raise NotImplementedError()


@pytest.mark.parametrize("name", ["causal_mask", "attention", "split_heads", "kv_cache_step"])
def test_each_chapter03_checker_accepts_the_reference_and_reports_a_stub(name):
    assert ch03.EXERCISES.check(name, ch03.EXERCISES[name].reference).passed
    assert ch03.EXERCISES.check(name, _stub).status == NOT_ATTEMPTED


def _manual_section2_mask(query_length, key_length):
    return torch.triu(torch.ones(query_length, key_length), diagonal=1).bool()  # the manual's: True = forbidden


def _attention(scale_by=None, fill=float("-inf"), mask_after=False, use_mask=True, zero_empty=True, keep=True):
    def attention(q, k, v, mask):
        d = q.shape[-1]
        scores = q @ k.transpose(-2, -1) / (math.sqrt(d) if scale_by is None else scale_by(d))
        if mask is not None and use_mask and not mask_after:
            scores = scores.masked_fill(~mask if keep else mask, fill)
        weights = torch.softmax(scores, dim=-1)
        if mask is not None and use_mask and mask_after:
            weights = weights.masked_fill(~mask, 0.0)
        if zero_empty:
            weights = torch.nan_to_num(weights, nan=0.0)
        return weights @ v, weights
    return attention


def _manual_attention(q, k, v, mask):
    """The manual's section-3 lines: masked_fill(mask == 0, -1e9)."""
    scores = torch.matmul(q, k.transpose(-2, -1)) / torch.sqrt(torch.tensor(q.shape[-1], dtype=torch.float32))
    if mask is not None:
        scores = scores.masked_fill(mask == 0, -1e9)
    weights = torch.softmax(scores, dim=-1)
    return torch.matmul(weights, v), weights


def _split_without_transpose(x, n_head):
    B, T, C = x.shape
    return x.reshape(B, n_head, T, C // n_head)


def _cache_step_with_torchs_causal_flag(q_new, k_new, v_new, k_cache, v_cache):
    k_all, v_all = torch.cat([k_cache, k_new], 2), torch.cat([v_cache, v_new], 2)
    return F.scaled_dot_product_attention(q_new, k_all, v_all, is_causal=True), k_all, v_all  # top-left aligned


def _cache_step_prepending(q_new, k_new, v_new, k_cache, v_cache):
    k_all, v_all = torch.cat([k_new, k_cache], 2), torch.cat([v_new, v_cache], 2)  # same output, wrong cache
    return F.scaled_dot_product_attention(q_new, k_all, v_all), k_all, v_all


def _cache_step_own_key_only(q_new, k_new, v_new, k_cache, v_cache):
    return F.scaled_dot_product_attention(q_new, k_new, v_new), torch.cat([k_cache, k_new], 2), \
        torch.cat([v_cache, v_new], 2)


@pytest.mark.parametrize("name, wrong, words", [
    ("causal_mask", _manual_section2_mask, ["manual's section-2 mask", "True = may attend"]),
    ("causal_mask", lambda tq, tk: torch.ones(tq, tk, dtype=torch.bool).tril(), ["last 1 of the 5", "Tk - Tq"]),
    ("causal_mask", lambda tq, tk: torch.ones(tq, tk).tril(diagonal=tk - tq), ["dtype=torch.bool"]),
    ("attention", _attention(scale_by=lambda d: d), ["divided by d", "sqrt(d)"]),
    ("attention", _attention(scale_by=lambda d: 1.0), ["not scaled"]),
    ("attention", _attention(mask_after=True), ["after the softmax"]),
    ("attention", _attention(use_mask=False), ["mask is ignored"]),
    ("attention", _attention(keep=False), ["True is treated as forbidden"]),
    ("attention", _manual_attention, ["uniform weights", "-1e9", "left-padded"]),
    ("attention", _attention(zero_empty=False), ["NaN", "nan_to_num"]),
    ("split_heads", _split_without_transpose, ["straight to (B, H, T, D)", "transpose(1, 2)"]),
    ("kv_cache_step", _cache_step_with_torchs_causal_flag, ["first key only", "top-left"]),
    ("kv_cache_step", _cache_step_prepending, ["output is right", "followed by the new key"]),
    ("kv_cache_step", _cache_step_own_key_only, ["its own key only"]),
    ("score_std", 256, ["variance"]),
    ("score_std", 1, ["after"]),
    ("kv_cache_bytes", 1_228_800, ["keys *and* the values"]),
    ("kv_cache_bytes", 491_520, ["one layer"]),
    ("kv_cache_bytes", 614_400, ["number of values"]),
    ("unscaled_entropy", 3.02, ["outside the range"]),  # the scaled figure
])
def test_each_chapter03_checker_rejects_a_typical_wrong_answer(name, wrong, words):
    result = ch03.EXERCISES.check(name, wrong, explanation="a sentence of several words")
    assert result.status == FAILED
    for w in words:
        assert w in result.message, result.message


def test_manual_attention_with_its_section2_mask_is_anti_causal():
    """What the checkers and question 5 say about the manual, measured on the manual's own classes."""
    torch.manual_seed(0)
    attn = ManualMultiHeadAttention(16, 4).eval()
    mask = ManualCustomGPT(10, d_model=16, n_heads=4, n_layers=1).generate_causal_mask(5)
    assert torch.equal(mask, _manual_section2_mask(5, 5)) and torch.equal(mask, ~ch03.causal_mask(5, 5))
    with torch.no_grad():
        _, w = attn(*(torch.randn(1, 5, 16),) * 3, mask=mask)
    assert torch.all(w[0, :, 0, 1:] > 0) and torch.all(w[0, :, 0, 0] == 0)  # query 0 sees only the future
    assert torch.allclose(w[0, :, 4], torch.full((4, 5), 0.2))  # the last one: nothing allowed -> uniform
    quiz = ch03.quiz()
    assert [quiz.answer(5, x).passed for x in "abc"] == [False, False, True]


# ---------------------------------------------------------------------------------------------------
# Predictions and experiments: what the library measures
# ---------------------------------------------------------------------------------------------------


def test_chapter03_predictions_and_experiment_hold_what_the_library_measures():
    torch.manual_seed(0)
    q, k = torch.randn(4000, 256), torch.randn(4000, 256)
    assert ch03.EXERCISES.check("score_std", (q * k).sum(-1).std().item()).passed
    model = GPT(GPTConfig(vocab_size=4096, n_positions=384, n_embd=160, n_layer=5, n_head=5)).eval()
    with torch.no_grad():
        cache = model(torch.randint(0, 4096, (1, 384)), use_cache=True).past_key_values
    measured = sum(t.numel() * t.element_size() for kv in cache for t in kv)
    assert measured == ch03.kv_cache_bytes(**ch03.COURSE_GPT_SHAPE)
    assert ch03.EXERCISES.check("kv_cache_bytes", measured).passed
    sentence = "several words of explanation here"
    for seed in range(4):  # the range holds for any seed, with the library's attention
        g = torch.Generator().manual_seed(seed)
        q, k = torch.randn(1, 1, 1000, 64, generator=g), torch.randn(1, 1, 32, 64, generator=g)
        v = torch.zeros(1, 1, 32, 1)
        entropy = {}
        for label, scale in (("scaled", None), ("unscaled", 1.0)):
            _, w = lib.scaled_dot_product_attention(q, k, v, scale=scale)
            entropy[label] = -(w * torch.log(w.clamp_min(1e-12))).sum(-1).mean().item()
        assert ch03.EXERCISES.check("unscaled_entropy", entropy["unscaled"], explanation=sentence).passed
        assert not ch03.EXERCISES.check("unscaled_entropy", entropy["scaled"], explanation=sentence).passed


def test_chapter03_quiz_answers_are_what_the_library_computes():
    quiz = ch03.quiz()
    assert 3 <= len(quiz) <= 5
    # 1: the library scales by 1/sqrt(D) by default
    q, k, v = torch.randn(1, 1, 3, 16), torch.randn(1, 1, 4, 16), torch.randn(1, 1, 4, 16)
    _, w = lib.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(w, torch.softmax(q @ k.transpose(-2, -1) / 4, -1))
    # 2: the pairs the library's causal mask allows
    assert quiz.answer(2, int(lib.causal_mask(8).sum())).passed and not quiz.answer(2, 64).passed
    # 3: GPT-2 small's cache in float16, measured on one layer of the library's attention, times 12 layers
    mha = lib.MultiHeadAttention(768, 12).to(torch.float16).eval()
    with torch.no_grad():
        keys, values = mha(torch.randn(1, 1024, 768, dtype=torch.float16), use_cache=True).present_key_value
    per_layer = keys.numel() * keys.element_size() + values.numel() * values.element_size()
    assert quiz.answer(3, 12 * per_layer).passed and not quiz.answer(3, 24 * per_layer).passed
    # 4: the new query attends to every key; torch's is_causal with one query sees only the first
    qn, kk, vv = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    every, _ = lib.scaled_dot_product_attention(qn, kk, vv, attn_mask=lib.causal_mask(1, key_length=5))
    assert torch.allclose(every, F.scaled_dot_product_attention(qn, kk, vv), atol=1e-6)
    assert torch.allclose(F.scaled_dot_product_attention(qn, kk, vv, is_causal=True), vv[:, :, :1], atol=1e-6)
    for number, right in [(1, "b"), (4, "b"), (5, "c")]:
        letters = quiz.questions[number - 1].letters
        assert [quiz.answer(number, x).passed for x in letters] == [x == right for x in letters]


# ---------------------------------------------------------------------------------------------------
# The lesson: its key lines are on the page, short, and checked in the very next cell
# ---------------------------------------------------------------------------------------------------


def test_chapter03_key_lines_are_on_the_page_and_checked():
    nbformat = pytest.importorskip("nbformat")
    from llm_course.chapters import find_chapter

    nb = nbformat.read(find_chapter("03").notebook(), as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    checks = {"attention": "agree(attention, library_sdpa", "to_heads": "agree(to_heads, split_heads",
              "feed_forward": "agree(feed_forward, library_ffn", "kv_step": "agree(step_of, recompute"}
    for name, check in checks.items():
        where = next(i for i, s in enumerate(code) if f"def {name}(" in s)
        assert len(code[where].splitlines()) <= 30, f"the key-lines cell of {name} should be short enough to read"
        assert check in code[where + 1], f"the cell after {name}'s key lines must check it against the library"
    assert "agree(from_heads, merge_heads" in code[next(i for i, s in enumerate(code) if "def from_heads(" in s) + 1]
    assert "F.scaled_dot_product_attention" in code[next(i for i, s in enumerate(code) if "def attention(" in s) + 1]
    assert np.all([name in "".join(code) for name in ("chapter03.quiz()", "quiz.show()")])
