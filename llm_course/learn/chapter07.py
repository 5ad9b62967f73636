"""Chapter 07's questions and exercises: sampling filters, beam search, the KV cache, int8. Chapter 07.

The reference solutions below are the short teaching versions of the library's code; the tests check
each one against the library (``top_k_filter``, ``top_p_filter`` and ``apply_temperature`` of
``llm_course.infer.logits_processors``, transformers' logits warpers, ``generate``'s beam search and
``llm_course.nn.quant_formats.int8_quantize``), so an exercise can never teach something the package does
differently. ``quiz()`` is the end-of-lesson quiz of ``notebooks/07_inference.ipynb``; ``EXERCISES`` the
checkers of ``exercises/07_inference.ipynb``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from llm_course.learn.checker import Case, ExerciseSet, FunctionExercise, ValueExercise
from llm_course.learn.quiz import Choice, MultipleChoice, Numeric, Quiz

__all__ = ["apply_temperature", "top_k_filter", "top_p_filter", "beam_step", "int8_absmax", "int8_dequantize",
           "positions_fed", "int8_linear_bytes", "quiz", "EXERCISES"]

NEG_INF = float("-inf")


# ---------------------------------------------------------------------------------------------------
# Reference solutions (checked against the library by tests/test_learn_chapter07.py)
# ---------------------------------------------------------------------------------------------------


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits divided by the temperature: < 1 sharper, > 1 flatter. Chapter 07."""
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """(B, V) logits with all but the k highest of each row set to -inf (ties with the k-th kept). Chapter 07."""
    if not k:  # None or 0: top-k is off
        return logits
    kth_best = torch.topk(logits, min(k, logits.shape[-1])).values[:, -1:]  # (B, 1); k > V keeps everything
    return logits.masked_fill(logits < kth_best, NEG_INF)  # "<", not the top-k indices: ties stay


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """(B, V) logits with every token outside the nucleus set to -inf. Chapter 07.

    The nucleus: the most likely tokens, in order, up to and including the one whose cumulative
    probability reaches ``p``. So a token stays if the tokens ranked above it have not reached ``p`` yet,
    and the most likely token always stays (nothing ranks above it).
    """
    sorted_logits, order = torch.sort(logits, descending=True)  # (B, V), best first
    probs = sorted_logits.softmax(dim=-1)
    above = probs.cumsum(dim=-1) - probs  # (B, V): the probability of the tokens ranked above each one
    drop_sorted = above >= p  # the nucleus was complete before this token
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, NEG_INF)


def beam_step(log_probs: torch.Tensor, scores: torch.Tensor, k: int, eos_id: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One beam-search step: the k best continuations that go on, as (scores, beams, tokens). Chapter 07.

    ``log_probs`` (B, V): each beam's next-token log-probabilities; ``scores`` (B,): each beam's total
    log-probability so far. Every beam proposes every token; the 2k best totals are kept (at most one per
    beam ends with ``eos_id``, so at least k of them go on) and the k best that do not end are returned,
    best first: their totals (k,), the beam each extends (k,) and its new token (k,).
    """
    V = log_probs.shape[-1]
    total = (scores[:, None] + log_probs).reshape(-1)  # (B * V,): every one-token continuation
    top, index = torch.topk(total, 2 * k)  # the 2k best candidates, best first
    beams, tokens = index // V, index % V  # which beam each extends, with which token
    going_on = tokens != eos_id  # an eos candidate is a finished text, not a beam
    return top[going_on][:k], beams[going_on][:k], tokens[going_on][:k]


def int8_absmax(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float weight -> (int8 codes (out, in), float32 scales (out,)): absmax per row. Chapter 07."""
    absmax = weight.abs().amax(dim=1)  # (out,): the largest |w| of each row
    scale = torch.where(absmax > 0, absmax / 127, torch.ones_like(absmax))  # a row of zeros: any scale works
    q = torch.round(weight / scale[:, None]).to(torch.int8)  # integers in [-127, 127]
    return q, scale


def int8_dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float weight the int8 codes stand for: code x its row's scale. Chapter 07."""
    return q.float() * scale[:, None]


def positions_fed(prompt_length: int, new_tokens: int, use_cache: bool) -> int:
    """Token positions a causal LM reads to greedily add ``new_tokens`` to a prompt. Chapter 07.

    One forward pass per new token either way. Without the cache pass t (t = 0 .. n-1) reads the prompt
    and the t tokens made so far; with it the first pass reads the prompt and each later pass one token.
    """
    if new_tokens == 0:
        return 0
    if use_cache:
        return prompt_length + new_tokens - 1
    return new_tokens * prompt_length + new_tokens * (new_tokens - 1) // 2


def int8_linear_bytes(in_features: int, out_features: int, bias: bool = True) -> int:
    """Bytes of an ``Int8Linear``: 1 per weight, plus a float32 scale (and bias) per output. Chapter 07."""
    return in_features * out_features + 4 * out_features * (2 if bias else 1)


# ---------------------------------------------------------------------------------------------------
# Inputs for the checkers: edge cases first, then random ones
# ---------------------------------------------------------------------------------------------------


def _t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def _random_logits(rng: np.random.Generator) -> torch.Tensor:
    B, V = int(rng.integers(1, 4)), int(rng.integers(2, 60))
    return torch.from_numpy(rng.normal(0, rng.choice([0.5, 2.0, 5.0]), size=(B, V)).astype(np.float32))


def _top_k_cases(rng: np.random.Generator):
    yield Case((_t([[3.0, 1.0, 2.0, 0.0]]), 2), "the two highest of four")
    yield Case((_t([[3.0, 2.0, 2.0, 1.0]]), 2), "a tie with the k-th best: both tied tokens stay (as transformers)")
    yield Case((_t([[0.5, -1.0, 2.0]]), 1), "k = 1: only the most likely token (greedy)")
    yield Case((_t([[0.5, -1.0, 2.0]]), 5), "k larger than the vocabulary keeps everything (torch.topk would raise)")
    yield Case((_t([[0.5, -1.0, 2.0]]), 0), "k = 0 turns top-k off: every token stays")
    yield Case((_t([[1.0, NEG_INF, 3.0, 2.0]]), 2), "a token already removed (-inf) by an earlier filter")
    yield Case((_t([[1.0, 4.0, 3.0], [9.0, -2.0, 0.0]]), 2), "two rows: each keeps its own k best")
    for _ in range(20):
        logits = _random_logits(rng)
        yield Case((logits, int(rng.integers(1, logits.shape[-1] + 1))))


def _top_p_cases(rng: np.random.Generator):
    # probabilities 0.5, 0.3, 0.15, 0.05 (in vocabulary order 0.3, 0.05, 0.5, 0.15)
    crossing = torch.log(_t([[0.3, 0.05, 0.5, 0.15]]))
    yield Case((crossing, 0.7), "0.5 < 0.7 <= 0.5 + 0.3: the token that crosses p is kept, so two tokens stay")
    yield Case((crossing, 0.9), "0.9: it takes the three best (0.95 together) to reach it; the 0.05 token goes")
    yield Case((_t([[2.0, 1.0, 0.0, -1.0]]), 0.05), "the best token alone is more likely than p: it must stay "
                                                    "(a filter never removes every token)")
    yield Case((_t([[6.0, 0.0, 0.0, -1.0]]), 0.5), "one dominant token; the tied tokens below it all go")
    yield Case((crossing, 1.0), "p = 1 keeps every token")
    yield Case((_t([[2.0, NEG_INF, 1.0, 0.0]]), 0.9), "a token already removed (-inf) by top-k")
    yield Case((torch.cat([crossing, _t([[0.0, 0.0, 0.0, 5.0]])]), 0.7), "two rows, each with its own nucleus")
    for _ in range(25):
        yield Case((_random_logits(rng), float(rng.choice([0.1, 0.5, 0.8, 0.9, 0.95, 0.99]))))


def _beam_cases(rng: np.random.Generator):
    def log_softmax(rows):
        return torch.log_softmax(_t(rows), dim=-1)

    first = log_softmax([[2.0, 0.5, 1.0, -1.0, 0.0]])
    yield Case((first, _t([0.0]), 2, 4), "the first step: one beam, so every candidate extends beam 0")
    yield Case((first, _t([0.0]), 2, 0), "the best candidate ends with eos (token 0): it is finished, not kept")
    two = log_softmax([[3.0, 0.0, -1.0, 0.5], [1.0, 0.8, 0.0, -2.0]])
    yield Case((two, _t([-6.0, -1.0]), 2, 3),
               "beam 1's total is higher although beam 0 has the likelier token: rank by score + log-prob")
    yield Case((two, _t([-1.0, -1.2]), 2, 3), "the two best candidates may extend the same beam")
    yield Case((two, _t([-1.0, -1.2]), 1, 0), "k = 1: the best total that does not end")
    for _ in range(20):
        B, k = int(rng.integers(1, 5)), int(rng.integers(1, 4))
        V = int(rng.integers(max(2, 2 * k), 30))
        log_probs = torch.log_softmax(torch.from_numpy(rng.normal(0, 2, size=(B, V)).astype(np.float32)), -1)
        scores = torch.from_numpy(-rng.exponential(3, size=B).astype(np.float32))
        yield Case((log_probs, scores, k, int(rng.integers(0, V))))


def _int8_cases(rng: np.random.Generator):
    yield Case((_t([[0.5, -1.0, 0.25], [2.0, 1.0, -0.5]]),), "two rows, two scales: 1/127 and 2/127")
    yield Case((_t([[-2.0, 1.0, 0.5]]),), "the largest |value| is negative: absmax takes the absolute value")
    yield Case((_t([[0.0, 0.0, 0.0], [1.0, -1.0, 0.1]]),), "a row of zeros: scale 1 (0 / 0 would be nan)")
    yield Case((_t([[100.0, 0.01, -0.02], [0.01, 0.02, 0.03]]),),
               "one outlier row: per row, the small row keeps its precision (one scale for all would round it to 0)")
    yield Case((_t([[0.3], [-0.7]]),), "one weight per row: each becomes +-127")
    for _ in range(15):
        out, inp = int(rng.integers(1, 9)), int(rng.integers(1, 33))
        w = rng.normal(0, 0.02, size=(out, inp)).astype(np.float32)
        w[rng.random(size=w.shape) < 0.02] *= 50  # a few outliers, as trained weights have
        yield Case((torch.from_numpy(w),))


EXERCISES = ExerciseSet([
    FunctionExercise(
        "top_k_filter", top_k_filter, _top_k_cases, rtol=0, atol=0,
        task="implement: set all but the k highest logits of each row to -inf (k = 0 or None: keep all)",
        hint="the k-th best value of each row is torch.topk(logits, min(k, V)).values[:, -1:]; mask every logit "
             "strictly below it (logits < kth): picking exactly k indices would drop a token tied with the k-th"),
    FunctionExercise(
        "top_p_filter", top_p_filter, _top_p_cases, rtol=0, atol=0,
        task="implement: keep the most likely tokens up to and including the one whose cumulative probability "
             "reaches p; set the others to -inf",
        hint="sort each row descending, softmax, cumsum; a token stays if the probability of the tokens ranked "
             "ABOVE it (cumsum - its own probability) is still below p. 'cumsum < p' is the typical mistake: it "
             "drops the token that crosses p, and every token when the best one alone exceeds p (the manual "
             "has no top-p code of its own: it calls transformers' generate)"),
    FunctionExercise(
        "beam_step", beam_step, _beam_cases, rtol=1e-6, atol=1e-6,
        task="implement: one beam-search step: the k best (total, beam, token) that do not end with eos_id",
        hint="total = (scores[:, None] + log_probs).reshape(-1) ranks every continuation of every beam; "
             "torch.topk(total, 2 * k) gives the 2k best; beam = index // V, token = index % V; drop the ones "
             "whose token is eos_id and keep the first k"),
    FunctionExercise(
        "int8_absmax", int8_absmax, _int8_cases, rtol=1e-6, atol=0,
        task="implement: int8 absmax quantization per row: (codes (out, in) int8, scales (out,) float32)",
        hint="one scale per row (output channel): scale = max |row| / 127 (1 for a row of zeros), "
             "codes = round(w / scale) as int8. One scale for the whole matrix, the default of the torch "
             "quantize_dynamic the manual calls, wipes out the rows of small weights next to an outlier row"),
    ValueExercise(
        "positions_without_cache", kind="predict", expected=positions_fed(10, 50, use_cache=False), rtol=0.001,
        task="predict, then measure: token positions the model reads to greedily add 50 tokens to a 10-token "
             "prompt WITHOUT the KV cache",
        hint="pass t (t = 0 .. 49) reads the prompt and the t tokens made so far: sum of (10 + t)",
        why="50 x 10 + (0 + 1 + ... + 49) = 500 + 1225: quadratic in the length, where the cache reads "
            "10 + 49 = 59.",
        mistakes={50: "that is the number of forward passes: the same with and without the cache; count the "
                      "positions each pass reads",
                  positions_fed(10, 50, use_cache=True): "that is WITH the cache (the prompt once, then one "
                                                         "token per pass)",
                  50 * 10 + 50 * 51 // 2: "off by one: the pass that makes new token t reads the t - 1 tokens "
                                          "made before it, not t",
                  50 * 60: "not every pass reads all 60 tokens: the text grows by one token per pass"}),
    ValueExercise(
        "int8_layer_bytes", kind="predict", expected=int8_linear_bytes(768, 3072), rtol=0.001,
        task="predict, then measure: the bytes of Int8Linear.from_linear(nn.Linear(768, 3072)) (a GPT-2 MLP "
             "layer in int8)",
        hint="1 byte per weight code, and per output (3072 of them) a float32 scale and a float32 bias",
        why="768 x 3072 codes (1 byte each) + 3072 scales + 3072 biases (4 bytes each): about a quarter of "
            "float32's 9,449,472.",
        mistakes={4 * (768 * 3072 + 3072): "that is the float32 layer (4 bytes per weight)",
                  768 * 3072: "that is the codes only: each of the 3072 rows also keeps a float32 scale and bias",
                  768 * 3072 + 4 * 3072: "the bias is there too, 3072 float32 values",
                  2 * (768 * 3072 + 3072): "that is float16 (2 bytes per weight)"}),
    ValueExercise(
        "distinct_at_low_temperature", kind="experiment", low=0.2, high=0.6,
        task="experiment: the share of distinct tokens among 40 sampled tokens at temperature 0.3 (mean over "
             "seeds 0-4) with course-gpt",
        hint="for seed in range(5): generate(model, ids, max_new_tokens=40, do_sample=True, temperature=0.3, "
             "seed=seed); take the 40 new ids, len(set(new)) / 40, and average the five",
        why="A low temperature sharpens the distribution towards greedy decoding, and a small model's greedy text "
            "goes round in a loop: few distinct tokens."),
])


def quiz() -> Quiz:
    """The end-of-lesson questions of chapter 07 (answers checked against the library by the tests)."""
    return Quiz([
        MultipleChoice("Top-p with p = 0.9, and the most likely token alone has probability 0.95. What is kept?", (
            Choice("nothing: no set of tokens has a cumulative probability below 0.9", False,
                   "that is the 'cumsum < p' mistake: the nucleus includes the token that reaches p, so it is "
                   "never empty"),
            Choice("only the most likely token", True,
                   "it alone reaches 0.9, so the nucleus is that one token: sampling becomes greedy here"),
            Choice("the tokens that together make up 90% of the probability, about 90% of the vocabulary", False,
                   "top-p keeps the most likely tokens until their probability reaches p, not a share of the "
                   "vocabulary; here one token is enough"),
        )),
        Numeric("The manual's generate_text calls transformers' generate with max_length=100. How many new tokens "
                "does a 95-token prompt get?", 5,
                "max_length counts the prompt too: 100 - 95 = 5 (max_new_tokens=100 is what was meant).",
                rtol=0, mistakes={100: "that is max_new_tokens=100; max_length counts the prompt's 95 tokens too",
                                  195: "max_length bounds the whole text, prompt included, not the new part"}),
        MultipleChoice("Greedy decoding with the KV cache, compared with recomputing the whole text each step:", (
            Choice("gives other token ids, a little less accurate", False,
                   "the cached keys and values are the ones recomputation would make: the ids are the same"),
            Choice("runs fewer forward passes", False,
                   "one pass per new token either way; each pass is cheaper"),
            Choice("reads one new position per pass instead of the whole text", True,
                   "the earlier tokens' keys and values are stored, so a pass feeds only the newest token: n "
                   "positions in all instead of about n²/2"),
        )),
        Numeric("A 4096 × 4096 float32 weight (no bias) quantized to int8 with one float32 scale per row: how many "
                "bytes?", int8_linear_bytes(4096, 4096, bias=False),
                "4096² one-byte codes + 4096 four-byte scales = 16,793,600: about a quarter of float32.",
                rtol=0.0001, mistakes={4 * 4096 ** 2: "that is float32 (4 bytes per weight)",
                                       4096 ** 2: "the codes alone; each row also keeps its float32 scale",
                                       4096 ** 2 // 2: "that is 4 bits per weight (NF4 without its scales)"}),
        Numeric("Logits [2, 0] at temperature 0.5: what probability does the first token get?",
                1 / (1 + math.exp(-4)),
                "the logits become [4, 0]: softmax gives e⁴ / (e⁴ + 1) = 0.982, sharper than at temperature 1 (0.881).",
                rtol=0.002, mistakes={1 / (1 + math.exp(-2)): "that is at temperature 1: the logits are divided by "
                                                             "0.5 first",
                                      1 / (1 + math.exp(-1)): "that multiplies the logits by the temperature; it "
                                                             "divides them"}),
    ])
