"""Chapter 09's learning content: references agree with the library, checkers reject typical mistakes. Issue 18.

References, independent of the code under test: the library's ``strided_windows``, ``sliding_window_mask``,
``activation_memory`` and training loop (``grad_accum_steps``); the transformers guide's perplexity loop
run for real on a GPT2LMHeadModel; the gradient of the whole batch at once; masks written as loops.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llm_course.infer.long_context import sliding_window_mask, strided_perplexity, strided_windows
from llm_course.learn import chapter09 as ch09
from llm_course.learn.feedback import FAILED, NOT_ATTEMPTED
from llm_course.models.gpt import GPT, GPTConfig
from llm_course.nn.attention import causal_mask
from llm_course.nn.objectives import IGNORE_INDEX
from llm_course.train.practices import activation_memory

SENTENCE = "a sentence of several words explaining it"


def _stub(*args):
    """Not written yet."""
    raise NotImplementedError()


def _tiny_gpt(n_layer: int = 2, n_embd: int = 32, vocab_size: int = 64, n_positions: int = 32, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                         n_head=4)).eval()


# ---------------------------------------------------------------------------------------------------
# The references agree with the library
# ---------------------------------------------------------------------------------------------------


def test_strided_windows_reference_is_the_librarys_plan_and_scores_what_the_guide_scores():
    for n in range(2, 60):
        for window in range(2, 14):
            for stride in range(1, window):
                ours = ch09.strided_windows(n, window, stride)
                assert ours == strided_windows(n, window, stride), (n, window, stride)
                guide = ch09.hf_guide_windows(n, window, stride)
                assert [(f, e) for _, e, f in ours] == [(f, e) for _, e, f in guide], (n, window, stride)
                assert guide[:-1] == ours[:-1] and guide[-1][0] >= ours[-1][0]  # only the last window differs


def _guide_perplexity(model, ids: torch.Tensor, max_length: int, stride: int) -> tuple[float, int]:
    """The transformers guide's loop, "Perplexity of fixed-length models", counting the labels really scored."""
    seq_len, nll_sum, n_tokens, prev_end_loc = ids.numel(), 0.0, 0, 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        input_ids = ids[None, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = IGNORE_INDEX
        with torch.no_grad():
            loss = model(input_ids, labels=target_ids).loss
        scored = int((target_ids[:, 1:] != IGNORE_INDEX).sum())  # the model shifts the labels by one
        nll_sum += loss.item() * scored
        n_tokens += scored
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return math.exp(nll_sum / n_tokens), n_tokens


@pytest.mark.parametrize("n, window, stride", [(12 + 4 * 5, 12, 4), (8 + 3 * 7, 8, 3), (10, 16, 4)])
def test_the_guides_loop_gives_the_librarys_perplexity_when_the_last_window_is_full(n, window, stride):
    """Where the last window is full anyway (n - window a multiple of stride, or one window), the plans are
    the same, and so are the perplexities: the library's strided evaluation is the guide's."""
    gpt = _tiny_gpt()
    hf = gpt.to_hf().eval()
    ids = torch.from_numpy(np.random.default_rng(n).integers(0, 64, size=n))
    assert ch09.hf_guide_windows(n, window, stride) == strided_windows(n, window, stride)
    ppl, count = _guide_perplexity(hf, ids, window, stride)
    ours = strided_perplexity(gpt, ids, window, stride)
    assert count == ours["tokens"] == n - 1
    assert ppl == pytest.approx(ours["perplexity"], rel=1e-5)


def test_sliding_window_mask_reference_is_the_librarys_and_the_definition():
    for q in range(1, 9):
        for extra in range(0, 5):
            for window in range(1, 12):
                k = q + extra
                ours = ch09.sliding_window_mask(q, window, k)
                assert ours.dtype == torch.bool
                assert torch.equal(ours, sliding_window_mask(q, window, key_length=k)), (q, window, k)
                loops = torch.tensor([[extra + i - window < j <= extra + i for j in range(k)] for i in range(q)])
                assert torch.equal(ours, loops)


def _whole_batch_gradient(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    table = table.detach().clone().requires_grad_()
    loss = F.cross_entropy(table[ids[:, :-1]].reshape(-1, table.shape[1]), ids[:, 1:].reshape(-1))
    (grad,) = torch.autograd.grad(loss, table)
    return grad


def test_accumulated_gradient_is_the_whole_batchs_gradient():
    for case in ch09.EXERCISES["accumulated_gradient"].all_cases():
        table, ids, k = case.args
        assert torch.allclose(ch09.accumulated_gradient(table, ids, k), _whole_batch_gradient(table, ids),
                              rtol=1e-10, atol=1e-13)


def test_the_librarys_loop_accumulates_to_the_whole_batchs_step():
    """The idea in the library: grad_accum_steps micro-batches make the same update as one batch of all of them."""
    from llm_course.train.loop import TrainConfig, train

    ids = torch.from_numpy(np.random.default_rng(0).integers(0, 64, size=(8, 16)))
    cfg = TrainConfig(max_steps=1, lr=1e-2, warmup_steps=0, log_interval=0, progress=False, live_plot=False,
                      seed=0, device="cpu")
    whole, accumulated = _tiny_gpt(), _tiny_gpt()
    r1 = train(whole, lambda i: {"input_ids": ids, "labels": ids}, cfg)
    halves = ids.chunk(4)
    r4 = train(accumulated, lambda i: {"input_ids": halves[i], "labels": halves[i]},
               dataclasses.replace(cfg, grad_accum_steps=4))
    assert r4.history[0]["grad_norm"] == pytest.approx(r1.history[0]["grad_norm"], rel=1e-5)
    for p, q in zip(whole.parameters(), accumulated.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_checkpointed_block_bytes_is_what_the_library_measures():
    """One more checkpointed block adds exactly its input to what autograd keeps; a plain one 16 times more."""
    ids = torch.randint(4096, (2, 128))
    batch = {"input_ids": ids, "labels": ids}
    saved = {}
    for layers in (1, 2):
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=4096, n_positions=384, n_embd=160, n_layer=layers, n_head=5))
        for on in (True, False):
            saved[layers, on] = activation_memory(model, batch, checkpointing=on)["saved_bytes"]
    per_block = saved[2, True] - saved[1, True]
    assert per_block == ch09.checkpointed_block_bytes(2, 128, 160) == 163_840
    assert ch09.EXERCISES.check("checkpointed_block_bytes", per_block).passed
    plain = saved[2, False] - saved[1, False]
    assert "without checkpointing" in str(ch09.EXERCISES.check("checkpointed_block_bytes", plain))


# ---------------------------------------------------------------------------------------------------
# The checkers
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["strided_windows", "sliding_window_mask", "accumulated_gradient"])
def test_each_chapter09_checker_accepts_the_reference_and_reports_a_stub(name):
    result = ch09.EXERCISES.check(name, ch09.EXERCISES[name].reference)
    assert result.passed and "edge case" in str(result)
    assert ch09.EXERCISES.check(name, _stub).status == NOT_ATTEMPTED


def _manual_chunks(n_tokens, window, stride):
    # the manual's plan: a chunk starts every stride tokens, and every token of every chunk is used
    return [(i, min(i + window, n_tokens), i + 1) for i in range(0, n_tokens, stride)]


def _guide_without_moving_back(n_tokens, window, stride):
    return ch09.hf_guide_windows(n_tokens, window, stride)


def _scores_token_zero(n_tokens, window, stride):
    return [(b, e, 0 if f == 1 else f) for b, e, f in ch09.strided_windows(n_tokens, window, stride)]


def _mask_not_causal(query_length, window, key_length):
    i = torch.arange(key_length - query_length, key_length)[:, None]
    j = torch.arange(key_length)[None, :]
    return (j - i).abs() < window  # forgets causality: a band on both sides of the diagonal


def _mask_off_by_one(query_length, window, key_length):
    i = torch.arange(key_length - query_length, key_length)[:, None]
    j = torch.arange(key_length)[None, :]
    return (j <= i) & (j >= i - window)  # window + 1 keys


def _mask_ignores_the_cache(query_length, window, key_length):
    i = torch.arange(query_length)[:, None]  # the queries placed at 0.. instead of after the cache
    j = torch.arange(key_length)[None, :]
    return (j <= i) & (j > i - window)


def _mask_as_ints(query_length, window, key_length):
    return ch09.sliding_window_mask(query_length, window, key_length).int()


def _accumulate_without_dividing(table, ids, micro_batches):
    table = table.detach().clone().requires_grad_()
    for chunk in ids.chunk(micro_batches):
        F.cross_entropy(table[chunk[:, :-1]].reshape(-1, table.shape[1]), chunk[:, 1:].reshape(-1)).backward()
    return table.grad  # micro_batches times the gradient


def _accumulate_last_only(table, ids, micro_batches):
    table = table.detach().clone().requires_grad_()
    for chunk in ids.chunk(micro_batches):
        table.grad = None  # zeroes the gradient every micro-batch: only the last one survives
        loss = F.cross_entropy(table[chunk[:, :-1]].reshape(-1, table.shape[1]), chunk[:, 1:].reshape(-1))
        (loss / micro_batches).backward()
    return table.grad


def _accumulate_shift_twice(table, ids, micro_batches):
    table = table.detach().clone().requires_grad_()
    for chunk in ids.chunk(micro_batches):
        logits = table[chunk[:, :-1]][:, :-1]  # shifts the labels a second time
        targets = chunk[:, 1:][:, 1:]
        loss = F.cross_entropy(logits.reshape(-1, table.shape[1]), targets.reshape(-1))
        (loss / micro_batches).backward()
    return table.grad


@pytest.mark.parametrize("name, wrong, words", [
    ("strided_windows", _manual_chunks, ["differs", "scored by more than one window", "manual's chunks"]),
    ("strided_windows", _guide_without_moving_back, ["differs", "move it back to full length"]),
    ("strided_windows", _scores_token_zero, ["differs", "expected 1 at [0][2], got 0"]),
    ("sliding_window_mask", _mask_not_causal, ["differs", "must also be causal"]),
    ("sliding_window_mask", _mask_off_by_one, ["differs", "off by one"]),
    ("sliding_window_mask", _mask_ignores_the_cache, ["differs", "a KV cache"]),
    ("sliding_window_mask", _mask_as_ints, ["expected dtype bool"]),
    ("accumulated_gradient", _accumulate_without_dividing, ["differs", "one sequence per micro-batch"]),
    ("accumulated_gradient", _accumulate_last_only, ["differs", "one sequence per micro-batch"]),
    ("accumulated_gradient", _accumulate_shift_twice, ["differs", "one micro-batch: the plain gradient"]),
    ("window_count", 79, ["manual's chunks"]),
    ("window_count", 76, ["unscored"]),
    ("window_count", 27, ["naive chunking"]),
    ("checkpointed_block_bytes", 2 * 128 * 160, ["number of values"]),
    ("checkpointed_block_bytes", 2 * 2 * 128 * 160, ["2-byte floats"]),
    ("checkpointed_block_bytes", 2_630_656, ["without checkpointing"]),
    ("strided_gain", 1.0, ["outside the range"]),  # naive chunks over naive chunks
    ("strided_gain", 1 / 0.979, ["outside the range"]),  # the ratio upside down
    ("deep_checkpointing_ratio", 0.30, ["outside the range"]),  # the 5-layer model's ratio
])
def test_each_chapter09_checker_rejects_a_typical_wrong_answer(name, wrong, words):
    result = ch09.EXERCISES.check(name, wrong, explanation=SENTENCE)
    assert result.status == FAILED
    for w in words:
        assert w in result.message, result.message


def test_chapter09_experiment_ranges_hold_what_the_library_measures():
    from llm_course.infer.long_context import naive_chunk_perplexity, token_ids
    from llm_course.text.corpora import docs_corpus
    from llm_course.zoo.loading import load_pretrained

    lm, tok = load_pretrained("course-gpt")
    ids = token_ids(tok, docs_corpus().val[:12_000])[:1500]
    strided = strided_perplexity(lm, ids, window=128, stride=32)["perplexity"]
    naive = naive_chunk_perplexity(lm, ids, window=128)["perplexity"]
    assert ch09.EXERCISES.check("strided_gain", strided / naive, explanation=SENTENCE).passed
    stride_127 = strided_perplexity(lm, ids, window=128, stride=127)["perplexity"]
    assert not ch09.EXERCISES.check("strided_gain", stride_127 / naive, explanation=SENTENCE).passed

    ratios = {}
    ids = torch.randint(4096, (1, 64))
    for layers in (5, 12):
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=4096, n_positions=384, n_embd=160, n_layer=layers, n_head=5))
        on, off = (activation_memory(model, {"input_ids": ids, "labels": ids}, checkpointing=c)["saved_bytes"]
                   for c in (True, False))
        ratios[layers] = on / off
    assert ch09.EXERCISES.check("deep_checkpointing_ratio", ratios[12], explanation=SENTENCE).passed
    assert not ch09.EXERCISES.check("deep_checkpointing_ratio", ratios[5], explanation=SENTENCE).passed
    assert ch09.EXERCISES.check("window_count", len(strided_windows(10_000, 384, 128))).passed


def test_chapter09_quiz_answers_are_what_the_library_computes():
    quiz = ch09.quiz()
    assert 3 <= len(quiz) <= 5
    assert quiz.answer(2, len(strided_windows(2000, 384, 128))).passed
    assert "manual's chunks" in str(quiz.answer(2, len(range(0, 2000, 128))))
    assert "naive chunking" in str(quiz.answer(2, len(strided_windows(2000, 384, 383))))
    assert quiz.answer(3, int(sliding_window_mask(6, 3).sum())).passed
    assert "full causal mask" in str(quiz.answer(3, int(causal_mask(6).sum())))
    assert "off by one" in str(quiz.answer(3, int(sliding_window_mask(6, 4).sum())))
    for number, right in [(1, "b"), (4, "c"), (5, "b")]:
        q = quiz.questions[number - 1]
        assert [quiz.answer(number, k).passed for k in q.letters] == [k == right for k in q.letters]


def test_chapter09_key_lines_are_on_the_page_and_checked():
    import nbformat

    from llm_course.chapters import find_chapter

    nb = nbformat.read(find_chapter("09").notebook(), as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    checks = {"block_step": "agree(", "strided_windows": "agree(strided_windows, library_windows",
              "sliding_window_mask": "agree(sliding_window_mask, "}
    for name, check in checks.items():
        i = next(i for i, s in enumerate(code) if f"def {name}(" in s)
        assert len(code[i].splitlines()) <= 30, f"the key lines of {name} should be short enough to read"
        assert check in code[i + 1], f"the cell after {name}'s key lines must check them against the library"
    i = next(i for i, s in enumerate(code) if "def block_step(" in s)
    assert "checkpoint(" in code[i] and "block_step(x, checkpointed=False)" in code[i + 1]
    assert "hf_guide_windows" in code[next(i for i, s in enumerate(code) if "def strided_windows(" in s) + 1]
