"""Chapter 03's questions and exercises: causal masks, attention, heads, the KV cache. Chapter 03.

The reference solutions below are the short teaching versions of the library's code; the tests check
each one against the library (``llm_course.nn.attention``: ``causal_mask``, ``scaled_dot_product_attention``,
``split_heads``, ``MultiHeadAttention``'s cache) and against PyTorch's own kernel, so an exercise can never
teach something the package does differently. ``quiz()`` is the end-of-lesson quiz of
``notebooks/03_attention.ipynb``; ``EXERCISES`` the checkers of ``exercises/03_attention.ipynb``.

The checkers recognise the typical wrong answers and say what they are: the manual's section-2 mask
(True = forbidden) where section 3 wants True = may attend, scaling by d instead of sqrt(d), a mask applied
after the softmax, the manual's -1e9 fill (a query that may see nothing gets uniform weights), reshaping
straight to (B, H, T, D), and ``is_causal=True`` for the one new query of a cache step (PyTorch aligns that
mask top-left, so the new token sees only the first key).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from llm_course.learn.checker import Case, ExerciseSet, FunctionExercise, ValueExercise
from llm_course.learn.feedback import difference
from llm_course.learn.quiz import Choice, MultipleChoice, Numeric, Quiz

__all__ = ["causal_mask", "attention", "split_heads", "kv_cache_step", "kv_cache_bytes", "quiz", "EXERCISES"]


# ---------------------------------------------------------------------------------------------------
# Reference solutions (checked against the library by tests/test_learn_chapter03.py)
# ---------------------------------------------------------------------------------------------------


def causal_mask(query_length: int, key_length: int) -> torch.Tensor:
    """Boolean (Tq, Tk) mask, True where query i may attend to key j. Chapter 03.

    The Tq queries are the last Tq of the Tk positions (with a KV cache the keys also hold the past), so
    query i sits at position Tk - Tq + i and may see every key up to it.
    """
    ones = torch.ones(query_length, key_length, dtype=torch.bool)
    return ones.tril(diagonal=key_length - query_length)  # diagonal 0 when Tq == Tk: the lower triangle


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(d), masked) v; returns ``(out, weights)``. Chapter 03.

    q: (B, H, Tq, D), k and v: (B, H, Tk, D); ``mask`` is None or bool, True = may attend, broadcasting to
    (B, H, Tq, Tk). A query that may see no key gets all-zero weights (not NaN, not uniform).
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, Tq, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # forbidden keys get exactly zero weight
    weights = torch.softmax(scores, dim=-1)
    weights = torch.nan_to_num(weights, nan=0.0)  # a row of only -inf: softmax gives NaN; make it zeros
    return weights @ v, weights  # (B, H, Tq, D), (B, H, Tq, Tk)


def split_heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """(B, T, C) -> (B, H, T, C // H): head h gets channels h*D .. (h+1)*D - 1 of every token. Chapter 03."""
    B, T, C = x.shape
    return x.view(B, T, n_head, C // n_head).transpose(1, 2)  # split the channels, then swap T and H


def kv_cache_step(q_new: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, k_cache: torch.Tensor,
                  v_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decoding step with a KV cache; returns ``(out, k_all, v_all)``. Chapter 03.

    The new token's q_new, k_new, v_new are (B, H, 1, D); the cache (B, H, t, D). Append the new key and
    value, then attend with the new query alone: it is the newest position, so it may see every key and
    needs no mask. ``out`` (B, H, 1, D) equals the last row of attention recomputed over all t + 1 tokens.
    """
    k_all = torch.cat([k_cache, k_new], dim=2)  # (B, H, t + 1, D): the past, then the new token
    v_all = torch.cat([v_cache, v_new], dim=2)
    scores = q_new @ k_all.transpose(-2, -1) / math.sqrt(q_new.shape[-1])  # (B, H, 1, t + 1)
    return torch.softmax(scores, dim=-1) @ v_all, k_all, v_all


def kv_cache_bytes(n_layer: int, n_embd: int, seq_len: int, bytes_per_value: int = 4, batch: int = 1) -> int:
    """Bytes of a full KV cache: a key and a value of width n_embd per layer and token. Chapter 03."""
    return 2 * n_layer * batch * seq_len * n_embd * bytes_per_value


# ---------------------------------------------------------------------------------------------------
# Typical wrong answers: recognised, so the feedback can say what they are
# ---------------------------------------------------------------------------------------------------


def _attention_variant(q, k, v, mask, *, scale=None, fill=float("-inf"), mask_after=False, use_mask=True,
                       zero_empty=True):
    """The reference with one thing changed (used to name a student's mistake)."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(-2, -1) * scale
    if mask is not None and use_mask and not mask_after:
        scores = scores.masked_fill(~mask, fill)
    weights = torch.softmax(scores, dim=-1)
    if mask is not None and use_mask and mask_after:
        weights = weights * mask
    if zero_empty:
        weights = torch.nan_to_num(weights, nan=0.0)
    return weights @ v, weights


_ATTENTION_MISTAKES = (
    (dict(scale=None, fill=-1e9), "a query that may see no key got uniform weights: that is the manual's "
     "masked_fill(..., -1e9); fill with float('-inf') and give such a row zero weights (torch.nan_to_num)"),
    (dict(zero_empty=False), "a query that may see no key got NaN (softmax of a row of only -inf); give such a "
     "row zero weights, e.g. torch.nan_to_num(weights, nan=0.0)"),
    ("d", "the scores are divided by d; divide by sqrt(d), the standard deviation of q·k"),
    (dict(scale=1.0), "the scores are not scaled; divide them by sqrt(d)"),
    (dict(mask_after=True), "the mask is applied after the softmax, so the rows no longer sum to 1; mask the "
     "scores (with -inf) before the softmax"),
    (dict(use_mask=False), "the mask is ignored: every query sees every key"),
)


def _close(a, b) -> bool:
    return difference(a, b, rtol=1e-5, atol=1e-6) is None


def _explain_attention(expected, actual, args) -> str | None:
    wrong = difference(expected, actual, rtol=1e-5, atol=1e-6)
    if wrong is None:
        return None
    q, k, v, mask = args
    for change, meaning in _ATTENTION_MISTAKES:
        options = dict(scale=1 / q.shape[-1]) if change == "d" else change
        if _close(_attention_variant(q, k, v, mask, **options), actual):
            return f"{meaning}\n  ({wrong})"
    if mask is not None and _close(_attention_variant(q, k, v, ~mask), actual):
        return (f"True is treated as forbidden: in this course (and in F.scaled_dot_product_attention) True = may "
                f"attend, so forbidden keys are where the mask is False\n  ({wrong})")
    return wrong


def _explain_mask(expected, actual, args) -> str | None:
    wrong = difference(expected, actual)
    if wrong is None:
        return None
    if isinstance(actual, torch.Tensor) and actual.shape == expected.shape and actual.dtype == torch.bool:
        if torch.equal(actual, ~expected):
            return ("True marks the *forbidden* keys: that is the manual's section-2 mask, torch.triu(..., "
                    "diagonal=1).bool(), the nn.Transformer convention. Section 3's attention (and this course, and "
                    "F.scaled_dot_product_attention) wants True = may attend; given the other one it attends only "
                    f"to the future\n  ({wrong})")
        if torch.equal(actual, expected.new_ones(expected.shape).tril()):
            return (f"the queries are the last {args[0]} of the {args[1]} positions: query i sits at position "
                    f"Tk - Tq + i, so use tril(diagonal=Tk - Tq)\n  ({wrong})")
    if isinstance(actual, torch.Tensor) and actual.dtype != torch.bool:
        return f"{wrong}: return a boolean mask (dtype=torch.bool), True where attending is allowed"
    return wrong


def _explain_split(expected, actual, args) -> str | None:
    wrong = difference(expected, actual, rtol=0, atol=0)
    if wrong is None:
        return None
    x, n_head = args
    B, T, C = x.shape
    if isinstance(actual, torch.Tensor) and actual.shape == expected.shape and torch.equal(
            actual, x.reshape(B, n_head, T, C // n_head)):
        return ("reshaped straight to (B, H, T, D): that cuts the sequence, not each token's channels, into heads; "
                f"view as (B, T, H, D) first, then transpose(1, 2)\n  ({wrong})")
    return wrong


def _explain_cache_step(expected, actual, args) -> str | None:
    wrong = difference(expected, actual, rtol=1e-5, atol=1e-6)
    if wrong is None:
        return None
    q, k_new, v_new, k_cache, v_cache = args
    if isinstance(actual, (tuple, list)) and len(actual) == 3:
        out = actual[0]
        k_all, v_all = torch.cat([k_cache, k_new], 2), torch.cat([v_cache, v_new], 2)
        first_key_only = torch.softmax((q @ k_all[..., :1, :].transpose(-2, -1)) / math.sqrt(q.shape[-1]), -1) @ \
            v_all[..., :1, :]
        if k_cache.shape[2] > 0 and _close(first_key_only, out):
            return ("the new token attended to the first key only: that is is_causal=True (or tril) on a 1 x (t+1) "
                    "score matrix, which PyTorch aligns top-left. The new query is the newest position: it may see "
                    f"every key, no mask needed\n  ({wrong})")
        if _close(expected[0], out) and not _close(expected[1], actual[1]):
            return f"the output is right but the returned keys are not the cache followed by the new key\n  ({wrong})"
        if k_cache.shape[2] > 0 and _close(kv_cache_step(q, k_new, v_new, k_cache[..., :0, :],
                                                         v_cache[..., :0, :])[0], out):
            return (f"the new query attended to its own key only: attend to the whole cache plus the new key"
                    f"\n  ({wrong})")
    return wrong


# ---------------------------------------------------------------------------------------------------
# Inputs for the checkers: edge cases first, then random ones
# ---------------------------------------------------------------------------------------------------


def _randn(rng: np.random.Generator, *shape: int, std: float = 1.0) -> torch.Tensor:
    return torch.from_numpy(rng.standard_normal(shape).astype(np.float32) * std)


def _mask_cases(rng: np.random.Generator):
    yield Case((1, 1), "one token: it sees itself")
    yield Case((4, 4), "no cache: the lower triangle")
    yield Case((1, 5), "one new query after 4 cached tokens: it sees all 5 keys")
    yield Case((2, 6), "two new queries after 4 cached tokens")
    for _ in range(12):
        tq = int(rng.integers(1, 9))
        yield Case((tq, tq + int(rng.integers(0, 6))))


def _attention_cases(rng: np.random.Generator):
    causal = causal_mask(5, 5)
    yield Case((_randn(rng, 1, 1, 5, 8), _randn(rng, 1, 1, 5, 8), _randn(rng, 1, 1, 5, 8), causal),
               "a causal mask (True = may attend)")
    yield Case((_randn(rng, 1, 1, 1, 4), _randn(rng, 1, 1, 1, 4), _randn(rng, 1, 1, 1, 4), None),
               "one query, one key: weight 1")
    yield Case((_randn(rng, 2, 2, 3, 16), _randn(rng, 2, 2, 3, 16), _randn(rng, 2, 2, 3, 16), None),
               "no mask, d = 16")
    left_padded = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)[:, None, None, :]
    yield Case((_randn(rng, 2, 1, 4, 8), _randn(rng, 2, 1, 4, 8), _randn(rng, 2, 1, 4, 8),
                left_padded & causal_mask(4, 4)),
               "padding + causal: the left-padded sequence's first queries may see no key at all")
    yield Case((_randn(rng, 1, 2, 2, 8), _randn(rng, 1, 2, 6, 8), _randn(rng, 1, 2, 6, 8), causal_mask(2, 6)),
               "2 queries, 6 keys (a cache): the mask is (Tq, Tk)")
    yield Case((_randn(rng, 1, 1, 4, 64, std=2.0), _randn(rng, 1, 1, 4, 64, std=2.0), _randn(rng, 1, 1, 4, 64),
                None), "large scores, d = 64")
    for _ in range(16):
        b, h, tq, d = (int(x) for x in (rng.integers(1, 3), rng.integers(1, 4), rng.integers(1, 7),
                                        rng.choice([1, 4, 8, 16])))
        tk = tq + int(rng.integers(0, 4))
        mask = None if rng.random() < 0.25 else (
            causal_mask(tq, tk) if rng.random() < 0.5 else torch.from_numpy(rng.random((b, 1, tq, tk)) < 0.7))
        yield Case((_randn(rng, b, h, tq, d), _randn(rng, b, h, tk, d), _randn(rng, b, h, tk, d), mask))


def _split_cases(rng: np.random.Generator):
    yield Case((torch.arange(24.0).reshape(1, 3, 8), 2), "readable numbers: head 0 = channels 0-3")
    yield Case((_randn(rng, 2, 4, 6), 1), "one head: (B, 1, T, C)")
    yield Case((_randn(rng, 1, 3, 4), 4), "as many heads as channels: D = 1")
    yield Case((_randn(rng, 2, 1, 8), 4), "one token")
    for _ in range(12):
        n_head, d = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        yield Case((_randn(rng, int(rng.integers(1, 3)), int(rng.integers(1, 7)), n_head * d), n_head))


def _cache_cases(rng: np.random.Generator):
    def step(b, h, t, d):
        return (_randn(rng, b, h, 1, d), _randn(rng, b, h, 1, d), _randn(rng, b, h, 1, d),
                _randn(rng, b, h, t, d), _randn(rng, b, h, t, d))

    yield Case(step(1, 1, 0, 4), "an empty cache: the first token attends to itself")
    yield Case(step(1, 1, 1, 4), "one cached token")
    yield Case(step(2, 3, 5, 8), "2 sequences, 3 heads, 5 cached tokens")
    for _ in range(12):
        yield Case(step(int(rng.integers(1, 3)), int(rng.integers(1, 4)), int(rng.integers(1, 9)),
                        int(rng.choice([2, 4, 8]))))


# course-gpt's shape (5 layers x 160 channels, 384-token context), float32, one sequence.
COURSE_GPT_SHAPE = dict(n_layer=5, n_embd=160, seq_len=384)


EXERCISES = ExerciseSet([
    FunctionExercise(
        "causal_mask", causal_mask, _mask_cases, compare=_explain_mask,
        task="implement: the boolean (Tq, Tk) causal mask, True where a query may attend; the Tq queries are the "
             "last Tq of the Tk positions",
        hint="start from torch.ones(Tq, Tk, dtype=torch.bool) and keep the lower triangle: .tril(diagonal=Tk - Tq) "
             "(not torch.triu(..., diagonal=1): that is True where attending is *forbidden*)"),
    FunctionExercise(
        "attention", attention, _attention_cases, compare=_explain_attention, rtol=1e-5, atol=1e-6,
        task="implement: scaled dot-product attention with an optional boolean mask (True = may attend); return "
             "(out, weights), zero weights for a query that may see no key",
        hint="scores = q @ k.transpose(-2, -1) / math.sqrt(d); scores.masked_fill(~mask, float('-inf')) before the "
             "softmax over the last dim; torch.nan_to_num(weights, nan=0.0) for rows with no visible key; "
             "out = weights @ v"),
    FunctionExercise(
        "split_heads", split_heads, _split_cases, compare=_explain_split, rtol=0, atol=0,
        task="implement: (B, T, C) -> (B, H, T, C // H), head h holding channels h*D to (h+1)*D - 1 of each token",
        hint="x.view(B, T, n_head, C // n_head) splits each token's channels into heads; .transpose(1, 2) then "
             "moves the head axis in front of the tokens"),
    FunctionExercise(
        "kv_cache_step", kv_cache_step, _cache_cases, compare=_explain_cache_step, rtol=1e-5, atol=1e-6,
        task="implement: one decoding step: append the new key and value to the cache, attend with the new query "
             "only; return (out, k_all, v_all)",
        hint="k_all = torch.cat([k_cache, k_new], dim=2) (likewise v); then softmax(q_new @ k_all^T / sqrt(d)) @ "
             "v_all, with no mask and no is_causal: the newest token may see every key"),
    ValueExercise(
        "score_std", kind="predict", expected=16.0, rtol=0.05,
        task="predict, then measure: the standard deviation of q·k for q, k with 256 independent N(0, 1) entries",
        hint="a sum of d independent products, each of variance 1: its variance is d; the std is its square root",
        why="The variance of q·k is d = 256, so its std is sqrt(256) = 16: dividing by sqrt(d) brings it back to 1.",
        mistakes={256.0: "that is the variance (d); the standard deviation is its square root",
                  1.0: "that is the std *after* dividing by sqrt(d); the raw dot product grows with d"}),
    ValueExercise(
        "kv_cache_bytes", kind="predict", expected=kv_cache_bytes(**COURSE_GPT_SHAPE), rtol=0.001,
        task="predict, then measure: the bytes of course-gpt's full KV cache (5 layers, width 160, 384 tokens, "
             "float32, one sequence)",
        hint="every layer keeps a key and a value of width n_embd (all heads together) per token, 4 bytes per number",
        why="2 (key and value) x 5 layers x 384 tokens x 160 channels x 4 bytes = 2,457,600 bytes (2.3 MiB); it "
            "grows linearly with the text and with the batch.",
        mistakes={kv_cache_bytes(**COURSE_GPT_SHAPE) / 2: "half of it: a layer keeps the keys *and* the values (or "
                  "float16, 2 bytes: this cache is float32, 4)",
                  kv_cache_bytes(**COURSE_GPT_SHAPE) / 5: "that is one layer's cache; every layer keeps its own",
                  kv_cache_bytes(**COURSE_GPT_SHAPE) / 4: "that is the number of values; each float32 takes 4 bytes"}),
    ValueExercise(
        "unscaled_entropy", kind="experiment", low=0.40, high=0.62,
        task="experiment: the mean entropy (nats) of attention rows over 32 keys with d = 64, *without* dividing "
             "the scores by sqrt(d)",
        hint="q = torch.randn(1000, 64), k = torch.randn(32, 64); w = torch.softmax(q @ k.T, -1); the entropy of a "
             "row is -(w * log w).sum(); average over the rows (clamp w to 1e-12 inside the log)",
        why="Without the scaling the scores have std 8, so the softmax puts almost all the weight on one key: the "
            "entropy drops from about 3.0 nats (scaled; 3.47 = ln 32 would be uniform) to about 0.5."),
])


def quiz() -> Quiz:
    """The end-of-lesson questions of chapter 03 (answers checked against the library by the tests)."""
    return Quiz([
        MultipleChoice("Why are the attention scores divided by sqrt(d)?", (
            Choice("to make each row of the weights sum to 1", False,
                   "the softmax does that whatever the scale; the scaling changes how peaked the rows are"),
            Choice("q·k of d-dimensional vectors has variance d; dividing by sqrt(d) keeps the scores at unit scale so "
                   "the softmax does not saturate on one key", True,
                   "without it a large head size makes the softmax nearly one-hot and its gradient vanishes"),
            Choice("to save computation in long sequences", False,
                   "it costs one multiplication per score; the T² cost is the same"),
        )),
        Numeric("How many (query, key) pairs does the causal mask of an 8-token sequence allow?", 36,
                "8·9/2 = 36: query i sees keys 0 to i, itself included.", rtol=0,
                mistakes={64: "that is every pair; the causal mask hides the future",
                          28: "the diagonal is allowed too: a token sees itself"}),
        Numeric("How many bytes is the KV cache of GPT-2 small (12 layers, width 768) for 1,024 tokens of one "
                "sequence in float16?", kv_cache_bytes(12, 768, 1024, bytes_per_value=2),
                "2 (key, value) x 12 layers x 1,024 tokens x 768 x 2 bytes = 37,748,736 bytes (36 MiB).",
                rtol=0.001, mistakes={kv_cache_bytes(12, 768, 1024, bytes_per_value=1): "half of it: every layer "
                                      "keeps keys and values",
                                      kv_cache_bytes(12, 768, 1024, bytes_per_value=4): "that is float32; float16 "
                                      "takes 2 bytes",
                                      kv_cache_bytes(1, 768, 1024, bytes_per_value=2): "that is one layer; each of "
                                      "the 12 keeps its own"}),
        MultipleChoice("One decoding step with a KV cache: which keys does the new token's query attend to?", (
            Choice("only its own key: the past is already summarised in the cache", False,
                   "the cache holds the past keys and values precisely so that the new query can attend to them"),
            Choice("all cached keys and its own, with no mask: it is the newest position", True,
                   "its output equals the last row of attention recomputed over the whole sequence"),
            Choice("the keys allowed by F.scaled_dot_product_attention(..., is_causal=True)", False,
                   "with one query and t+1 keys PyTorch aligns the causal mask top-left: the new token would see "
                   "only the first key"),
        )),
        MultipleChoice("The manual's section-2 mask, torch.triu(torch.ones(T, T), diagonal=1).bool(), passed to its "
                       "section-3 attention (masked_fill(mask == 0, -1e9)): what happens?", (
            Choice("nothing: both are causal masks", False,
                   "they use opposite conventions: True = forbidden vs 1 = may attend"),
            Choice("an error, because the dtypes differ", False, "mask == 0 works on a bool tensor; it runs silently"),
            Choice("anti-causal attention: each query sees only the tokens after it, and the last one gets uniform "
                   "weights", True,
                   "the forbidden and allowed positions swap; the last row has nothing allowed, and -1e9 everywhere "
                   "gives uniform weights"),
        )),
    ])
