"""The argument checks every module uses (llm_course.core.checks): TypeError for a wrong type,
ValueError for a value out of range, messages that name the argument and the fix."""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_course.core.checks import (
    check_bool,
    check_choice,
    check_choices,
    check_float,
    check_fraction,
    check_index,
    check_int,
    check_positive,
    check_positive_int,
    check_probability,
    check_str,
)

NOT_INTS = [True, False, np.True_, 2.0, 2.5, "2", None, [2], b"2", Fraction(2, 1), complex(2, 0)]
NOT_NUMBERS = [True, False, np.False_, "0.1", None, [0.1], complex(0.1, 0), b"1"]


# --------------------------------------------------------------------------------------------
# Integers
# --------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    value=st.integers(-10**6, 10**6),
    minimum=st.none() | st.integers(-100, 100),
    span=st.none() | st.integers(0, 200),
)
def test_check_int_accepts_exactly_the_closed_range(value: int, minimum: int | None, span: int | None) -> None:
    maximum = None if span is None else (0 if minimum is None else minimum) + span
    inside = (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if inside:
        assert check_int("n", value, minimum, maximum) == value
    else:
        with pytest.raises(ValueError, match=rf"^n must be an? .*integer.*, got {value}$"):
            check_int("n", value, minimum, maximum)


@pytest.mark.parametrize("value", NOT_INTS, ids=repr)
def test_check_int_wrong_types_are_type_errors_even_in_range(value: object) -> None:
    # 2.0 == 2 and True == 1 lie inside [0, 10]: the rule is about the type, not the value.
    with pytest.raises(TypeError, match=r"^steps must be an integer in \[0, 10\], got "):
        check_int("steps", value, 0, 10)


def test_a_bool_is_a_flag_not_a_number() -> None:
    with pytest.raises(TypeError, match=r"got bool True \(True/False is a flag, not a number\)"):
        check_positive_int("batch_size", True)


@pytest.mark.parametrize("kind", [np.int8, np.int32, np.int64, np.uint16])
def test_numpy_integers_are_integers_and_come_back_as_int(kind: type) -> None:
    out = check_int("layer", kind(3), 0, 5)
    assert out == 3 and type(out) is int
    with pytest.raises(ValueError, match=r"got 7$"):
        check_int("layer", kind(7), 0, 5)


@pytest.mark.parametrize(
    ("minimum", "maximum", "wanted"),
    [
        (None, None, "an integer"),
        (1, None, "a positive integer"),
        (0, None, "a non-negative integer"),
        (2, None, "an integer >= 2"),
        (None, 9, "an integer <= 9"),
        (0, 9, r"an integer in \[0, 9\]"),
    ],
)
def test_check_int_says_what_it_wants(minimum: int | None, maximum: int | None, wanted: str) -> None:
    with pytest.raises(TypeError, match=rf"^x must be {wanted}, got str 'a'$"):
        check_int("x", "a", minimum, maximum)


def test_hint_and_none() -> None:
    with pytest.raises(ValueError) as info:
        check_positive_int("max_new_tokens", 0, hint="ask for at least one token")
    assert str(info.value) == "max_new_tokens must be a positive integer, got 0: ask for at least one token"
    assert check_positive_int("max_steps", None, allow_none=True) is None
    with pytest.raises(TypeError, match=r"^max_steps must be a positive integer, got NoneType None$"):
        check_positive_int("max_steps", None)
    with pytest.raises(ValueError, match=r"^max_steps must be a positive integer or None, got 0$"):
        check_positive_int("max_steps", 0, allow_none=True)


@settings(max_examples=100, deadline=None)
@given(size=st.integers(1, 50), value=st.integers(-60, 60))
def test_check_index_is_zero_to_size_minus_one(size: int, value: int) -> None:
    if 0 <= value < size:
        assert check_index("head", value, size) == value
    else:
        with pytest.raises(ValueError, match=rf"^head must be an integer in \[0, {size - 1}\], got {value}: 12 heads"):
            check_index("head", value, size, hint="12 heads")


def test_check_index_of_nothing() -> None:
    with pytest.raises(ValueError, match="nothing to index"):
        check_index("layer", 0, 0)
    with pytest.raises(TypeError):
        check_index("layer", 1.0, 4)


# --------------------------------------------------------------------------------------------
# Real numbers
# --------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    value=st.floats(allow_nan=True, allow_infinity=True) | st.integers(-5, 5),
    low=st.none() | st.sampled_from([-1.0, 0.0, 0.5]),
    high=st.none() | st.sampled_from([0.5, 1.0, 2.0]),
    low_open=st.booleans(),
    high_open=st.booleans(),
)
def test_check_float_matches_the_interval(
    value: float, low: float | None, high: float | None, low_open: bool, high_open: bool
) -> None:
    x = float(value)
    above = low is None or (x > low if low_open else x >= low)
    below = high is None or (x < high if high_open else x <= high)
    inside = math.isfinite(x) and above and below
    if inside:
        out = check_float("lr", value, low, high, low_open=low_open, high_open=high_open)
        assert out == x and type(out) is float
    else:
        with pytest.raises(ValueError, match=r"^lr must be a (finite )?number"):
            check_float("lr", value, low, high, low_open=low_open, high_open=high_open)


@pytest.mark.parametrize("value", NOT_NUMBERS, ids=repr)
def test_check_float_wrong_types_are_type_errors(value: object) -> None:
    with pytest.raises(TypeError, match=r"^dropout must be a number in \[0, 1\), got "):
        check_fraction("dropout", value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, np.float32("nan")])
def test_nan_and_infinities_are_out_of_range(value: float) -> None:
    with pytest.raises(ValueError, match=r"^lr must be a finite number > 0, got "):
        check_positive("lr", value)
    with pytest.raises(ValueError, match=r"^x must be a finite number, got "):
        check_float("x", value)


def test_infinity_allowed_when_asked_but_never_nan() -> None:
    assert check_float("time_budget_s", math.inf, 0, low_open=True, finite=False) == math.inf
    with pytest.raises(ValueError, match="got nan"):
        check_float("time_budget_s", math.nan, finite=False)


def test_ints_and_numpy_numbers_are_numbers() -> None:
    assert check_positive("lr", 1) == 1.0
    assert type(check_positive("lr", np.float32(0.5))) is float
    assert check_float("x", np.int64(-3)) == -3.0


@pytest.mark.parametrize(
    ("fn", "accepted", "refused"),
    [
        (check_fraction, [0, 0.0, 0.5, 0.999], [1, 1.0, -0.01]),
        (check_probability, [0, 0.5, 1], [-0.1, 1.01]),
        (lambda n, v: check_probability(n, v, low_open=True), [0.1, 1], [0, 0.0]),
        (lambda n, v: check_probability(n, v, high_open=True), [0, 0.99], [1]),
        (check_positive, [1e-12, 3], [0, -1e-12]),
    ],
)
def test_named_intervals(fn: Callable[[str, float], float], accepted: list[float], refused: list[float]) -> None:
    for v in accepted:
        assert fn("p", v) == float(v)
    for v in refused:
        with pytest.raises(ValueError, match=r"^p must be a (finite )?number"):
            fn("p", v)


# --------------------------------------------------------------------------------------------
# Choices, flags, strings
# --------------------------------------------------------------------------------------------


def test_check_choice() -> None:
    allowed = ("fp32", "fp16", "bf16")
    assert check_choice("precision", "bf16", allowed) == "bf16"
    with pytest.raises(ValueError) as info:
        check_choice("precision", "fp61", allowed, hint="see TrainConfig")
    assert str(info.value) == (
        "precision must be one of 'fp32', 'fp16', 'bf16', got 'fp61' (did you mean 'fp16'?): see TrainConfig"
    )
    # not among the choices, whatever the type: a ValueError (and no suggestion for a non-string)
    with pytest.raises(ValueError, match=r"got 16$"):
        check_choice("precision", 16, allowed)
    with pytest.raises(ValueError, match=r"got \['fp16'\]$"):
        check_choice("precision", ["fp16"], frozenset(allowed))


def test_check_choices() -> None:
    allowed = ("en", "ru")
    assert check_choices("languages", "ru", allowed) == ("ru",)  # one string is one value
    assert check_choices("languages", ["ru", "en", "ru"], allowed) == ("ru", "en")  # order kept, repeats dropped
    with pytest.raises(ValueError, match=r"^languages: unknown 'de', 'fr'; choose from 'en', 'ru'$"):
        check_choices("languages", ["en", "de", "fr"], allowed)
    with pytest.raises(ValueError, match=r"^languages is empty: choose at least one of 'en', 'ru'$"):
        check_choices("languages", [], allowed)
    with pytest.raises(TypeError, match=r"^languages must be a list of choices from 'en', 'ru', got int 3$"):
        check_choices("languages", 3, allowed)


def test_check_bool() -> None:
    assert check_bool("train_layer_norms", True) is True
    assert check_bool("train_layer_norms", np.False_) is False
    for value in (1, 0, "yes", None, 1.0):
        with pytest.raises(TypeError, match=r"^train_layer_norms must be True or False, got "):
            check_bool("train_layer_norms", value)


def test_check_str() -> None:
    assert check_str("text", "") == ""
    assert check_str("prompt", "Hi", non_empty=True) == "Hi"
    with pytest.raises(TypeError, match=r"^text must be a string, got bytes b'hi'$"):
        check_str("text", b"hi")
    with pytest.raises(ValueError, match=r"^prompt must be a non-empty string, got '': the model needs a token"):
        check_str("prompt", "", non_empty=True, hint="the model needs a token")
