"""Chapter 01's questions and exercises: BPE merges, bigram counts, perplexity. Chapter 01.

The reference solutions below are the short teaching versions of the library's code; the tests check
each one against the library (``bpe_merge_steps``, ``ByteLevelBPETokenizer``, ``BigramLM``), so an
exercise can never teach something the package does differently. ``quiz()`` is the end-of-lesson quiz
of ``notebooks/01_introduction_and_tokenization.ipynb``; ``EXERCISES`` the checkers of
``exercises/01_introduction_and_tokenization.ipynb``.
"""

from __future__ import annotations

import numpy as np

from llm_course.learn.checker import Case, ExerciseSet, FunctionExercise, ValueExercise
from llm_course.learn.quiz import Choice, MultipleChoice, Numeric, Quiz

__all__ = ["merge_pair", "apply_merges", "bigram_counts", "bigram_probs", "perplexity", "quiz", "EXERCISES"]

Pair = tuple[str, str]


# ---------------------------------------------------------------------------------------------------
# Reference solutions (checked against the library by tests/test_learn_chapter01.py)
# ---------------------------------------------------------------------------------------------------


def merge_pair(word: list[str], pair: Pair) -> list[str]:
    """One word's tokens with every occurrence of ``pair`` merged, left to right. Chapter 01."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])  # the pair becomes one token
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def apply_merges(word: list[str], merges: list[Pair]) -> list[str]:
    """Encode one word: apply the learned merges in the order they were learned. Chapter 01."""
    for pair in merges:
        word = merge_pair(word, tuple(pair))
    return word


def bigram_counts(ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """(V, V) table: ``counts[a, b]`` = how often token b follows token a in ``ids``. Chapter 01."""
    counts = np.zeros((vocab_size, vocab_size))
    np.add.at(counts, (ids[:-1], ids[1:]), 1)  # not counts[a, b] += 1: that counts a repeated pair once
    return counts


def bigram_probs(counts: np.ndarray, alpha: float) -> np.ndarray:
    """Counts to probabilities with add-``alpha`` smoothing: each row sums to 1. Chapter 01."""
    smoothed = counts + alpha  # (V, V): no pair gets probability 0
    return smoothed / smoothed.sum(axis=1, keepdims=True)


def perplexity(probs: np.ndarray, ids: np.ndarray) -> float:
    """exp(mean negative log-likelihood) of each token of ``ids`` given the one before. Chapter 01."""
    p = probs[ids[:-1], ids[1:]]  # (T-1,): the probability of each actual next token
    return float(np.exp(-np.log(p).mean()))


# ---------------------------------------------------------------------------------------------------
# Inputs for the checkers: edge cases first, then random ones
# ---------------------------------------------------------------------------------------------------


def _random_word(rng: np.random.Generator, alphabet: str = "abcd", max_len: int = 8) -> list[str]:
    return [str(c) for c in rng.choice(list(alphabet), size=int(rng.integers(1, max_len + 1)))]


def _merge_cases(rng: np.random.Generator):
    yield Case((["a", "a", "a"], [("a", "a")]), "overlapping pairs: 'a a a' -> 'aa a'")
    yield Case((["l", "o", "w"], []), "no merges learned")
    yield Case((["a", "b", "c"], [("b", "c"), ("a", "bc")]), "a later merge uses an earlier one")
    yield Case((["a", "b", "c"], [("a", "b"), ("b", "c")]), "order matters: 'ab' is made first, 'bc' never")
    yield Case((["x"], [("x", "y")]), "a one-token word")
    for _ in range(30):
        word = _random_word(rng)
        merges = []
        for _ in range(int(rng.integers(1, 5))):
            a, b = (str(c) for c in rng.choice(list("abcd"), size=2))
            merges.append((a, b) if rng.random() < 0.7 or not merges else (merges[-1][0] + merges[-1][1], a))
        yield Case((word, merges))


def _id_cases(rng: np.random.Generator):
    yield Case((np.array([0, 1]), 2), "two tokens, one pair")
    yield Case((np.array([1, 1, 1, 1]), 3), "the same pair three times")
    yield Case((np.array([2]), 3), "one token: no pairs at all")
    for _ in range(20):
        v = int(rng.integers(2, 12))
        yield Case((rng.integers(0, v, size=int(rng.integers(2, 60))), v))


def _perplexity_cases(rng: np.random.Generator):
    yield Case((np.full((4, 4), 0.25), np.array([0, 3, 2, 1, 0])), "a uniform model over 4 tokens")
    yield Case((np.array([[0.9, 0.1], [0.5, 0.5]]), np.array([0, 0])), "two tokens, one prediction")
    for _ in range(20):
        v = int(rng.integers(2, 10))
        probs = bigram_probs(rng.integers(0, 5, size=(v, v)).astype(float), float(rng.choice([0.01, 0.1, 1.0])))
        yield Case((probs, rng.integers(0, v, size=int(rng.integers(2, 40)))))


def _bigram_params(vocab_size: int = 2048) -> int:
    return vocab_size * vocab_size


EXERCISES = ExerciseSet([
    FunctionExercise(
        "apply_merges", apply_merges, _merge_cases,
        task="implement: encode one word (a list of tokens) by applying the learned merges in order",
        hint="for each merge (a, b), in the order learned, walk through the word left to right; where a "
             "is followed by b, append a + b and skip two places, else append the token and move one"),
    FunctionExercise(
        "bigram_counts", bigram_counts, _id_cases,
        task="implement: count how often each token follows each other token, as a (V, V) array",
        hint="counts[ids[:-1], ids[1:]] += 1 counts a pair that repeats only once; use np.add.at, or a loop "
             "over zip(ids[:-1], ids[1:])"),
    FunctionExercise(
        "perplexity", perplexity, _perplexity_cases, rtol=1e-6,
        task="implement: exp of the mean negative log-probability of each next token",
        hint="the probabilities of the actual next tokens are probs[ids[:-1], ids[1:]]; take -log, the mean, "
             "then exp (the mean over the T-1 predictions, not the sum)"),
    ValueExercise(
        "bigram_params", kind="predict", expected=_bigram_params(), rtol=0,
        task="predict, then measure: how many parameters has BigramLM(2048)?",
        hint="the model is one table: a row per previous token, a column per next token",
        why="One probability per (previous, next) pair: V² = 2048².",
        mistakes={2048: "that is one row of the table (one previous token); there is a row per token"}),
    ValueExercise(
        "uniform_perplexity", kind="predict", expected=512, rtol=0.001,
        task="predict, then measure: the perplexity of a uniform model over 512 tokens",
        hint="every token has probability 1/V; perplexity is exp(-log(1/V))",
        why="Perplexity is the number of equally likely choices: a uniform model over V tokens scores V.",
        mistakes={float(np.log(512)): "that is the loss in nats (the log); perplexity is exp of the loss",
                  9.0: "that is the loss in bits (log2); perplexity is 2 to that power"}),
    ValueExercise(
        "small_data_perplexity", kind="experiment", low=28, high=36,
        task="experiment: the byte-level bigram (alpha=0.1) trained on 2,000 instead of 200,000 characters",
        hint="fit BigramLM(256, alpha=0.1) on the UTF-8 bytes of corpus.train[:2000], measure on the first "
             "50,000 characters of corpus.val",
        why="With 100x less text most byte pairs are never seen, so the model spreads probability blindly."),
    ValueExercise(
        "bpe_tokens_per_byte", kind="experiment", low=0.42, high=0.50,
        task="experiment: tokens per byte of 20,000 characters of docs after 200 BPE merges",
        hint="bpe_merge_steps(text, 200)[-1]['num_tokens'] / len(text.encode('utf-8'))",
        why="200 merges already halve the text: frequent words and word pieces become single tokens."),
])


def quiz() -> Quiz:
    """The end-of-lesson questions of chapter 01 (answers checked against the library by the tests)."""
    return Quiz([
        MultipleChoice("One step of BPE training merges which pair?", (
            Choice("the two most frequent tokens", False,
                   "two frequent tokens need not ever stand next to each other; BPE counts adjacent pairs"),
            Choice("the most frequent adjacent pair of tokens in the training text", True,
                   "it counts every adjacent pair (inside words) and merges the most frequent one into a new token"),
            Choice("the pair that makes the longest new token", False,
                   "length plays no part: only how often the pair occurs"),
        )),
        Numeric("What perplexity does a uniform model over 4,096 tokens get?", 4096,
                "exp(-log(1/4096)) = 4096: as unsure as picking among 4,096 equally likely tokens.",
                mistakes={float(np.log(4096)): "8.32 is the loss (cross-entropy in nats); perplexity is exp of it",
                          12.0: "12 is the loss in bits; perplexity is 2^12"}),
        Numeric("How many parameters has the lesson's bigram model (VOCAB_SIZE = 2048)?", 2048 ** 2,
                "one count per (previous token, next token) pair: 2048² = 4,194,304.",
                mistakes={2048: "that is one row; the table has a row for every previous token"}),
        Numeric("How many parameters has one GPT-2 block of width d = 768 (with biases and LayerNorms)?",
                12 * 768 ** 2 + 13 * 768,
                "12d² + 13d = 7,087,872: 4d² in attention, 8d² in the MLP, plus 13d of biases and LayerNorms.",
                rtol=0.0001, mistakes={12 * 768 ** 2: "that is 12d² without the biases and LayerNorms (13d)"}),
        MultipleChoice("Why does Russian cost more tokens than English under the tokenizer trained in this lesson?", (
            Choice("byte-level BPE cannot encode Cyrillic, so it drops letters", False,
                   "byte-level BPE encodes any text losslessly: every byte is in the vocabulary"),
            Choice("Russian words are much longer than English words", False,
                   "they are a little longer, but a tokenizer trained on Russian encodes them in few tokens"),
            Choice("a Cyrillic letter is 2 bytes in UTF-8 and the tokenizer learned few Cyrillic merges", True,
                   "its merges come from English docs, so Russian falls back to about one token per byte"),
        )),
    ])
