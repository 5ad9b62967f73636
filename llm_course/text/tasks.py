"""Labelled and checkable data: a topic-classification set and synthetic tasks. Chapter 01 (data).

* ``topic_dataset()``: chatterbot dialogs labelled sports / politics / technology / culture
  (``TOPIC_CATEGORIES``), the four topics of the manual's classification example (chapter 08);
* ``make_task(name, n)``: ``Example``s of a synthetic task (``TASKS``: copy, reverse, sort, addition,
  arithmetic, upper/lower case, word count) whose answer is computed, so ``check(example, prediction)``
  marks a model's output exactly right or wrong. Chapter 05 fine-tunes and instruction-tunes on them.
"""

from __future__ import annotations

import inspect
import random
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llm_course.core.checks import check_choice, check_int, check_str
from llm_course.text.dialogs import dialog_block, load_dialogs

__all__ = ["LabeledText", "TOPIC_CATEGORIES", "topic_dataset", "Example", "TASKS", "make_task", "check"]


# The four topics of the manual's classification example (section 8: "спорт", "политика",
# "технологии", "культура"), each made of English chatterbot categories.
TOPIC_CATEGORIES: dict[str, tuple[str, ...]] = {
    "sports": ("sports",),
    "politics": ("politics",),
    "technology": ("computers", "tech_support"),
    "culture": ("literature", "movies"),
}


@dataclass(frozen=True)
class LabeledText:
    """A text and its class label, for classification. Chapter 01 (data)."""

    text: str
    label: str


def topic_dataset(per_label: int | None = 15, seed: int = 0) -> list[LabeledText]:
    """English dialogs labelled sports / politics / technology / culture. Chapter 01 (data).

    Each distinct dialog of the categories in ``TOPIC_CATEGORIES`` becomes one text (its
    turns, one per line). ``per_label`` dialogs are drawn per label with
    ``random.Random`` (all of them if a label has fewer, or if ``per_label`` is None): the
    default 15 gives four balanced classes, since "politics" has 15 dialogs. Sorted by label,
    then in corpus order.
    """
    if per_label is not None:
        check_int("per_label", per_label, 1)
    check_int("seed", seed, 0)
    examples = []
    for label in sorted(TOPIC_CATEGORIES):
        texts = list(dict.fromkeys(dialog_block(d) for d in load_dialogs("english", TOPIC_CATEGORIES[label])))
        if per_label is not None and len(texts) > per_label:
            keep = sorted(random.Random(f"{label}:{seed}").sample(range(len(texts)), per_label))
            texts = [texts[i] for i in keep]
        examples += [LabeledText(text=t, label=label) for t in texts]
    return examples


# ----------------------------------------------------------------------------------------
# Synthetic tasks with exactly checkable answers
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """One task example: the model sees ``prompt`` and must produce ``answer``. Chapter 01."""

    prompt: str
    answer: str
    task: str


# A sampler draws one (prompt, answer) pair from a random generator.
Sampler = Callable[[random.Random], tuple[str, str]]

_ALPHABETS = {
    "letters": string.ascii_lowercase,
    "digits": string.digits,
    "alnum": string.ascii_lowercase + string.digits,
}
_CONSONANTS, _VOWELS = "bdfgklmnprstvz", "aeiou"


def _sequence_sampler(
    instruction: str, transform: Callable[[str], str], min_len: int, max_len: int, alphabet: str
) -> Sampler:
    """Prompt ``"<instruction>: <random characters>"``, answer ``transform(characters)``."""
    check_int("min_len", min_len, minimum=1)
    check_int("max_len", max_len, minimum=min_len, hint="at least min_len")
    check_choice("alphabet", alphabet, list(_ALPHABETS))
    chars = _ALPHABETS[alphabet]

    def sample(rng: random.Random) -> tuple[str, str]:
        seq = "".join(rng.choice(chars) for _ in range(rng.randint(min_len, max_len)))
        return f"{instruction}: {seq}", transform(seq)

    return sample


def copy_task(min_len: int = 3, max_len: int = 8, alphabet: str = "letters") -> Sampler:
    """``"copy: kq3x"`` -> ``"kq3x"``. Chapter 01 (tasks). ``alphabet``: letters, digits or alnum."""
    return _sequence_sampler("copy", lambda s: s, min_len, max_len, alphabet)


def reverse_task(min_len: int = 3, max_len: int = 8, alphabet: str = "letters") -> Sampler:
    """``"reverse: abc"`` -> ``"cba"``. Chapter 01 (tasks)."""
    return _sequence_sampler("reverse", lambda s: s[::-1], min_len, max_len, alphabet)


def sort_task(min_len: int = 3, max_len: int = 8, alphabet: str = "letters") -> Sampler:
    """``"sort: dba"`` -> ``"abd"`` (characters in code-point order, repeats kept). Chapter 01 (tasks)."""
    return _sequence_sampler("sort", lambda s: "".join(sorted(s)), min_len, max_len, alphabet)


def _random_number(rng: random.Random, min_digits: int, max_digits: int) -> int:
    """A number whose digit count is uniform in [min_digits, max_digits] (so short ones are common)."""
    digits = rng.randint(min_digits, max_digits)
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(low, 10**digits - 1)


def addition_task(min_digits: int = 1, max_digits: int = 3) -> Sampler:
    """``"123+45="`` -> ``"168"``; each operand has min_digits..max_digits digits. Chapter 01 (tasks)."""
    check_int("min_digits", min_digits, minimum=1)
    check_int("max_digits", max_digits, minimum=min_digits, hint="at least min_digits")

    def sample(rng: random.Random) -> tuple[str, str]:
        a, b = _random_number(rng, min_digits, max_digits), _random_number(rng, min_digits, max_digits)
        return f"{a}+{b}=", str(a + b)

    return sample


def _evaluate(numbers: Sequence[int], operators: Sequence[str]) -> int:
    """Value of ``n0 op0 n1 op1 n2 ...`` with the usual precedence (``*`` before ``+``/``-``)."""
    # Each "+"/"-" starts a new term; a "*" multiplies into the current term.
    terms, signs = [numbers[0]], [1]
    for op, x in zip(operators, numbers[1:]):
        if op == "*":
            terms[-1] *= x
        else:
            terms.append(x)
            signs.append(1 if op == "+" else -1)
    return sum(sign * term for sign, term in zip(signs, terms))


def arithmetic_task(min_digits: int = 1, max_digits: int = 2, n_terms: int = 2, ops: str = "+-*") -> Sampler:
    """``"12*3-4="`` -> ``"32"``: ``n_terms`` numbers joined by operators from ``ops``. Chapter 01 (tasks).

    Multiplication binds tighter than addition and subtraction, as in Python; answers can be
    negative.
    """
    check_int("min_digits", min_digits, minimum=1)
    check_int("max_digits", max_digits, minimum=min_digits, hint="at least min_digits")
    check_int("n_terms", n_terms, minimum=2)
    check_str("ops", ops, non_empty=True, hint="the operators to use, e.g. '+-*'")
    if set(ops) - set("+-*"):
        raise ValueError(f"ops must be made of the operators '+', '-', '*', got {ops!r}")

    def sample(rng: random.Random) -> tuple[str, str]:
        numbers = [_random_number(rng, min_digits, max_digits) for _ in range(n_terms)]
        operators = [rng.choice(ops) for _ in range(n_terms - 1)]
        expression = str(numbers[0]) + "".join(f"{op}{x}" for op, x in zip(operators, numbers[1:]))
        return f"{expression}=", str(_evaluate(numbers, operators))

    return sample


def _random_words(rng: random.Random, min_words: int, max_words: int, upper_prob: float) -> list[str]:
    """Pronounceable pseudo-words ("kato", "mire"); each letter upper-case with ``upper_prob``."""
    words = []
    for _ in range(rng.randint(min_words, max_words)):
        word = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(rng.randint(1, 3)))
        words.append("".join(c.upper() if rng.random() < upper_prob else c for c in word))
    return words


def _words_sampler(
    instruction: str, transform: Callable[[list[str]], str], min_words: int, max_words: int, upper_prob: float
) -> Sampler:
    """Prompt ``"<instruction>: <random words>"``, answer ``transform(words)``."""
    check_int("min_words", min_words, minimum=1)
    check_int("max_words", max_words, minimum=min_words, hint="at least min_words")

    def sample(rng: random.Random) -> tuple[str, str]:
        words = _random_words(rng, min_words, max_words, upper_prob)
        return f"{instruction}: {' '.join(words)}", transform(words)

    return sample


def uppercase_task(min_words: int = 1, max_words: int = 5) -> Sampler:
    """``"uppercase: kaTo mire"`` -> ``"KATO MIRE"``. Chapter 01 (tasks)."""
    return _words_sampler("uppercase", lambda w: " ".join(w).upper(), min_words, max_words, 0.5)


def lowercase_task(min_words: int = 1, max_words: int = 5) -> Sampler:
    """``"lowercase: KAto MIre"`` -> ``"kato mire"``. Chapter 01 (tasks)."""
    return _words_sampler("lowercase", lambda w: " ".join(w).lower(), min_words, max_words, 0.5)


def count_words_task(min_words: int = 1, max_words: int = 12) -> Sampler:
    """``"count words: kato mire lu"`` -> ``"3"``. Chapter 01 (tasks)."""
    return _words_sampler("count words", lambda w: str(len(w)), min_words, max_words, 0.0)


# The registry make_task() draws from: task name -> function(**options) -> sampler.
TASKS: dict[str, Callable[..., Sampler]] = {
    "copy": copy_task,
    "reverse": reverse_task,
    "sort": sort_task,
    "addition": addition_task,
    "arithmetic": arithmetic_task,
    "uppercase": uppercase_task,
    "lowercase": lowercase_task,
    "count_words": count_words_task,
}


def make_task(name: str, n: int, seed: int = 0, **options: object) -> list[Example]:
    """``n`` examples of the task ``name``; the same seed gives the same examples. Chapter 01.

    ``options`` are the task's own (``min_len``/``max_len``/``alphabet`` for copy, reverse,
    sort; ``min_digits``/``max_digits`` for addition, plus ``n_terms``/``ops`` for arithmetic;
    ``min_words``/``max_words`` for the word tasks). They are checked before anything is
    generated. The answers are computed from the generated input, never stored.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available tasks: {', '.join(TASKS)}")
    check_int("n", n, 0)
    check_int("seed", seed, 0)
    factory = TASKS[name]
    parameters = inspect.signature(factory).parameters
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        valid = ", ".join(f"{p.name}={p.default!r}" for p in parameters.values())
        raise TypeError(f"task {name!r} has no option {', '.join(unknown)}; its options (defaults) are: {valid}")
    sample = factory(**options)  # validates the option values once, up front
    # Seeding with "name:seed" (hashed with SHA-512 by random.Random, the same on every
    # machine) gives each task its own stream: "copy" and "reverse" with seed 0 do not
    # share their inputs.
    rng = random.Random(f"{name}:{seed}")
    return [Example(*sample(rng), task=name) for _ in range(n)]


def check(example: Example, prediction: str) -> bool:
    """True if ``prediction`` is exactly the answer, ignoring surrounding white space. Chapter 01."""
    check_str("prediction", prediction, hint="the decoded model output")
    return prediction.strip() == example.answer.strip()
