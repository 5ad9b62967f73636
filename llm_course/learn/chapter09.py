"""Chapter 09's questions and exercises: strided windows, local attention, accumulation, checkpointing. Chapter 09.

The reference solutions below are the short teaching versions of the library's code; the tests check
each one against the library (``infer.long_context.strided_windows`` and ``sliding_window_mask``, the
training loop's ``grad_accum_steps``) or against an independent computation (the gradient of the whole
batch at once), so an exercise can never teach something the package does differently. ``quiz()`` is the
end-of-lesson quiz of ``notebooks/09_best_practices.ipynb``; ``EXERCISES`` the checkers of
``exercises/09_best_practices.ipynb``.

Where the manual goes wrong (ERRATA section 9): its "sliding window attention" cuts a text into chunks
that start every ``stride`` tokens and uses *every* token of every chunk, so the tokens in the overlaps
count twice, and the chunks past the end are zero-padded. The strided-window checker recognises that
plan and says what is wrong with it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from llm_course.learn.checker import Case, ExerciseSet, FunctionExercise, ValueExercise
from llm_course.learn.feedback import difference
from llm_course.learn.quiz import Choice, MultipleChoice, Numeric, Quiz

__all__ = ["strided_windows", "hf_guide_windows", "sliding_window_mask", "accumulated_gradient",
           "checkpointed_block_bytes", "quiz", "EXERCISES"]

Window = tuple[int, int, int]  # (begin, end, first_target): read ids[begin:end], score first_target..end-1


# ---------------------------------------------------------------------------------------------------
# Reference solutions (checked against the library by tests/test_learn_chapter09.py)
# ---------------------------------------------------------------------------------------------------


def strided_windows(n_tokens: int, window: int, stride: int) -> list[Window]:
    """The strided evaluation's windows, ``(begin, end, first_target)`` each. Chapter 09.

    Consecutive windows end ``stride`` tokens apart; each scores only the tokens that are new in it
    (the overlap is context); the last one ends at ``n_tokens`` and is moved back to full length.
    """
    plan, first_target, end = [], 1, min(window, n_tokens)  # token 0 has nothing to be predicted from
    while True:
        plan.append((max(0, end - window), end, first_target))  # a full window of context where there is one
        if end == n_tokens:
            return plan
        first_target, end = end, min(end + stride, n_tokens)  # the next window scores only the new tokens


def hf_guide_windows(n_tokens: int, window: int, stride: int) -> list[Window]:
    """The transformers guide's loop ("Perplexity of fixed-length models") as ``(begin, end, first_target)``.

    An independent reference for which tokens each window scores: its windows begin every ``stride``
    tokens and label only the last ``end - prev_end`` tokens; the model's internal shift drops the first
    window's label 0. It scores the same tokens as ``strided_windows``; only its last window is shorter
    (it is not moved back). Chapter 09.
    """
    plan, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + window, n_tokens)
        trg_len = end - prev_end  # the guide's labels: -100 except the last trg_len tokens of the window
        plan.append((begin, end, max(end - trg_len, begin + 1)))
        prev_end = end
        if end == n_tokens:
            break
    return plan


def sliding_window_mask(query_length: int, window: int, key_length: int) -> torch.Tensor:
    """(Tq, Tk) bool mask of local causal attention: query i sees keys i-window+1..i. Chapter 09.

    With a KV cache (Tk > Tq) the queries are the last Tq positions, as in the causal mask.
    """
    i = torch.arange(key_length - query_length, key_length)[:, None]  # (Tq, 1): each query's position
    j = torch.arange(key_length)[None, :]  # (1, Tk): each key's position
    return (j <= i) & (j > i - window)  # not the future, and not older than the window


def accumulated_gradient(table: torch.Tensor, ids: torch.Tensor, micro_batches: int) -> torch.Tensor:
    """Gradient of a bigram LM's mean next-token loss on ``ids``, accumulated over micro-batches. Chapter 09.

    ``table`` (V, V): the logits of the next token given the previous one; ``ids`` (B, T), with B divisible
    by ``micro_batches``. Each micro-batch's loss is divided by ``micro_batches`` before its backward, so
    the gradients that add up in ``.grad`` are the gradient of the whole batch's mean loss.
    """
    table = table.detach().clone().requires_grad_()  # a fresh leaf: the caller's tensor is left alone
    for chunk in ids.chunk(micro_batches):  # (B / micro_batches, T) each
        logits = table[chunk[:, :-1]]  # (b, T-1, V): position t predicts token t + 1
        loss = F.cross_entropy(logits.reshape(-1, table.shape[1]), chunk[:, 1:].reshape(-1))
        (loss / micro_batches).backward()  # gradients add up in table.grad
    return table.grad


def checkpointed_block_bytes(batch: int, seq: int, width: int, bytes_per_value: int = 4) -> int:
    """What a checkpointed transformer block keeps for the backward: its input, (B, T, C) values. Chapter 09."""
    return batch * seq * width * bytes_per_value


# ---------------------------------------------------------------------------------------------------
# Inputs for the checkers: edge cases first, then random ones
# ---------------------------------------------------------------------------------------------------


def _plan_cases(rng: np.random.Generator):
    yield Case((10, 6, 2), "the lesson's example: windows [0, 6), [2, 8), [4, 10)")
    yield Case((5, 8, 3), "a text shorter than the window: one window")
    yield Case((8, 8, 4), "a text exactly one window long")
    yield Case((9, 8, 4), "one token past the window: the last window is moved back to full length")
    yield Case((2, 2, 1), "the smallest: two tokens, window 2")
    yield Case((21, 6, 5), "stride = window - 1: the naive chunks, sharing one token")
    yield Case((12, 4, 1), "stride 1: one new token per window")
    for _ in range(30):
        window = int(rng.integers(2, 40))
        yield Case((int(rng.integers(2, 200)), window, int(rng.integers(1, window))))


def _mask_cases(rng: np.random.Generator):
    yield Case((5, 2, 5), "the lesson's example: a band two keys wide")
    yield Case((1, 3, 1), "one query, one key")
    yield Case((4, 1, 4), "window 1: every token sees only itself")
    yield Case((6, 100, 6), "a window longer than the text: the plain causal mask")
    yield Case((2, 3, 6), "a KV cache: 2 new queries after 4 cached keys")
    for _ in range(20):
        q = int(rng.integers(1, 12))
        yield Case((q, int(rng.integers(1, 15)), q + int(rng.integers(0, 8))))


def _accumulation_cases(rng: np.random.Generator):
    def table(v: int) -> torch.Tensor:
        return torch.from_numpy(rng.normal(size=(v, v)))  # float64: the sums agree to 1e-12

    def ids(v: int, b: int, t: int) -> torch.Tensor:
        return torch.from_numpy(rng.integers(0, v, size=(b, t)))

    yield Case((table(3), ids(3, 2, 5), 1), "one micro-batch: the plain gradient")
    yield Case((table(5), ids(5, 4, 6), 4), "one sequence per micro-batch")
    yield Case((table(4), ids(4, 6, 2), 3), "two tokens per sequence: one prediction each")
    yield Case((table(2), torch.zeros(4, 3, dtype=torch.long), 2), "every token the same")
    for _ in range(15):
        v, k = int(rng.integers(2, 20)), int(rng.integers(1, 5))
        yield Case((table(v), ids(v, k * int(rng.integers(1, 4)), int(rng.integers(2, 16))), k))


# ---------------------------------------------------------------------------------------------------
# Feedback that names the mistake
# ---------------------------------------------------------------------------------------------------


def _compare_plans(expected: Any, actual: Any, args: tuple) -> str | None:
    wrong = difference(expected, actual, rtol=0, atol=0)
    if wrong is None:
        return None
    try:
        scored = Counter(t for _, end, first in actual for t in range(int(first), int(end)))
        begins = [int(b) for b, _, _ in actual]
    except (TypeError, ValueError):
        return wrong
    twice = sorted(t for t, n in scored.items() if n > 1)
    if twice:
        return (f"{wrong}\n  token {twice[0]} is scored by more than one window ({len(twice)} tokens are): the overlap "
                "is context, never scored again (the manual's chunks use every token of every chunk, so the "
                "overlaps count twice)")
    if set(scored) == set(range(1, args[0])) and begins[:-1] == [b for b, _, _ in expected][:-1]:
        return (f"{wrong}\n  every token is scored once, but the last window starts at {begins[-1]}: move it back to "
                "full length, begin = max(0, end - window), so its tokens get the most context")
    return wrong


def _compare_masks(expected: Any, actual: Any, args: tuple) -> str | None:
    wrong = difference(expected, actual, rtol=0, atol=0)
    if wrong is None or not isinstance(actual, torch.Tensor) or actual.shape != expected.shape:
        return wrong
    q_len, window, k_len = args
    a = actual.bool()
    future = torch.ones(q_len, k_len, dtype=torch.bool).triu(k_len - q_len + 1)  # keys after each query
    if (a & future).any():
        return f"{wrong}\n  a query attends to a key after it: the band must also be causal (keys j <= i only)"
    per_row, wanted = a.sum(1), expected.sum(1)
    if (per_row == torch.clamp(wanted + 1, max=torch.arange(k_len - q_len + 1, k_len + 1))).all():
        return (f"{wrong}\n  off by one: each query sees {window + 1} keys; a window of {window} means the query "
                f"itself and the {window - 1} keys before it")
    return wrong


# ---------------------------------------------------------------------------------------------------
# The exercises
# ---------------------------------------------------------------------------------------------------


def _window_count(n_tokens: int = 10_000, window: int = 384, stride: int = 128) -> int:
    return len(strided_windows(n_tokens, window, stride))


EXERCISES = ExerciseSet([
    FunctionExercise(
        "strided_windows", strided_windows, _plan_cases, compare=_compare_plans,
        task="implement: the windows of the strided evaluation of a long text, (begin, end, first_target) each",
        hint="start with end = min(window, n_tokens) and first_target = 1; append (max(0, end - window), end, "
             "first_target); stop when end == n_tokens, else the next window scores from the old end: "
             "first_target, end = end, min(end + stride, n_tokens)"),
    FunctionExercise(
        "sliding_window_mask", sliding_window_mask, _mask_cases, compare=_compare_masks,
        task="implement: the (Tq, Tk) boolean mask of sliding-window causal attention",
        hint="the queries sit at positions Tk - Tq .. Tk - 1 (a cache holds the earlier keys); with i a column of "
             "query positions and j a row of key positions, the mask is (j <= i) & (j > i - window)"),
    FunctionExercise(
        "accumulated_gradient", accumulated_gradient, _accumulation_cases, rtol=1e-9, atol=1e-12,
        task="implement: the gradient of a bigram LM's mean loss, accumulated over micro-batches",
        hint="table = table.detach().clone().requires_grad_(); for each of ids.chunk(micro_batches): the loss is "
             "F.cross_entropy(table[chunk[:, :-1]].reshape(-1, V), chunk[:, 1:].reshape(-1)); backward "
             "loss / micro_batches (not loss: the gradients add up), and return table.grad"),
    ValueExercise(
        "window_count", kind="predict", expected=_window_count(), rtol=0,
        task="predict, then run: how many windows does the strided evaluation of 10,000 tokens need, with "
             "window 384 and stride 128?",
        hint="the first window ends at 384; every further window ends 128 tokens later, until one ends at 10,000",
        why="1 + ceil((10,000 - 384) / 128) = 1 + 76 = 77: the first window, then one per 128 new tokens.",
        mistakes={79: "that is len(range(0, 10_000, 128)): the manual's chunks, one starting every 128 tokens even "
                      "where the text has already been covered (and zero-padded past the end)",
                  76: "1 + floor((10,000 - 384) / 128) leaves the last 16 tokens unscored: the last window is a "
                      "shorter step that ends exactly at 10,000",
                  27: "that is the naive chunking (stride 383): a stride of 128 needs about three times as many"}),
    ValueExercise(
        "checkpointed_block_bytes", kind="predict", expected=checkpointed_block_bytes(2, 128, 160), rtol=0,
        task="predict, then run: with gradient checkpointing, how many bytes does one more block (width 160) "
             "add to what autograd keeps, for a batch of 2 x 128 tokens in float32?",
        hint="a checkpointed block keeps only its input, a (batch, sequence, width) tensor of 4-byte floats",
        why="2 x 128 x 160 floats x 4 bytes = 163,840 bytes: the block's input, all it keeps; the rest is "
            "recomputed in the backward pass.",
        mistakes={2 * 128 * 160: "that is the number of values; each float32 takes 4 bytes",
                  2 * 2 * 128 * 160: "that is in 2-byte floats; the batch here is float32",
                  2_630_656: "that is what a block keeps without checkpointing (16 times more)"}),
    ValueExercise(
        "strided_gain", kind="experiment", low=0.965, high=0.99,
        task="experiment: course-gpt's perplexity on 1,500 docs tokens with window 128 and stride 32, over its "
             "perplexity with naive chunks of 128",
        hint="strided_perplexity(lm, ids, window=128, stride=32)['perplexity'] / naive_chunk_perplexity(lm, ids, "
             "window=128)['perplexity'], with ids = token_ids(tok, docs_corpus().val[:12_000])[:1500]",
        why="Every scored token now has at least 96 tokens of context instead of 0-127, so fewer tokens are "
            "predicted blind: a few percent lower perplexity, at four times the compute."),
    ValueExercise(
        "deep_checkpointing_ratio", kind="experiment", low=0.16, high=0.20,
        task="experiment: the activation memory with checkpointing over without, for a 12-layer GPT of width 160 "
             "(vocabulary 4,096) on a batch of 1 x 64 tokens",
        hint="activation_memory(model, batch, checkpointing=True)['saved_bytes'] divided by the same with "
             "checkpointing=False",
        why="Each checkpointed block keeps only its input, so the blocks' share shrinks 16-fold; what is left is "
            "mostly the logits and the loss, the same with or without, so deeper models gain more."),
])


def quiz() -> Quiz:
    """The end-of-lesson questions of chapter 09 (answers checked against the library by the tests)."""
    return Quiz([
        MultipleChoice("What does a block keep for the backward pass under gradient checkpointing?", (
            Choice("its activations, stored in bf16 to halve them", False,
                   "that is mixed precision (and it saves less than half: layer norms and the loss stay in "
                   "float32); checkpointing stores fewer tensors, not smaller ones"),
            Choice("only its input; the backward pass runs the block again to get the rest back", True,
                   "one (B, T, C) tensor per block, about 16 times fewer bytes, for one more forward pass per block"),
            Choice("nothing: the backward pass recomputes the whole model from the token ids", False,
                   "that would cost a whole forward pass per block; checkpointing keeps each block's input so "
                   "that a block is re-run on its own"),
        )),
        Numeric("How many windows does the strided evaluation of 2,000 tokens run with window 384 and stride 128?",
                len(strided_windows(2000, 384, 128)),
                "1 + ceil((2,000 - 384) / 128) = 14: the first window scores 383 tokens, each later one 128 new ones.",
                rtol=0, mistakes={16: "that is len(range(0, 2000, 128)), the manual's chunks: windows that start "
                                      "every 128 tokens re-score the overlaps and run past the end",
                                  6: "that is the naive chunking (stride 383)"}),
        Numeric("How many True entries has the sliding-window mask of 6 tokens with window 3?",
                int(sliding_window_mask(6, 3, 6).sum()),
                "rows see 1, 2, 3, 3, 3, 3 keys: the query itself and at most 2 before it, 15 in all.",
                rtol=0, mistakes={21: "that is the full causal mask (6 + 5 + ... + 1): the window cuts older keys",
                                  18: "off by one: window 3 is the query and the 2 keys before it, not 3 before it",
                                  24: "that band also looks ahead: the mask must stay causal"}),
        MultipleChoice("What does torch.cuda.empty_cache() do, as the manual uses it?", (
            Choice("it frees the memory of tensors the training step no longer needs", False,
                   "tensors nobody references are freed already; it frees nothing that a tensor still holds"),
            Choice("it makes a training step fit that did not fit before", False,
                   "the next step reserves the same memory again: it never lowers a step's peak"),
            Choice("it returns cached, unused blocks to the driver, which only helps another process", True,
                   "PyTorch keeps freed blocks reserved for reuse; empty_cache hands them back (nvidia-smi shows it)"),
        )),
        MultipleChoice("The manual's long-text function takes chunks every 256 tokens, each 512 long, and uses every "
                       "token of every chunk. What goes wrong?", (
            Choice("nothing: overlapping chunks just give more context", False,
                   "more context is good, but only if each token is used once; here the overlap is used twice"),
            Choice("each token in an overlap is used twice, and the zero-padded chunks past the end are attended", True,
                   "the overlap should be context only (scored or pooled once), and padding needs a mask"),
            Choice("the chunks are too short for the model", False,
                   "512 tokens fit a BERT-sized model; the problem is what is done with the overlap and the padding"),
        )),
    ])
