"""Argument checks with one rule, used by every module of the course. Chapter 01 on.

A student who passes a wrong argument should get a message that names the argument, says what it must
be and, where it helps, how to fix it — not an error from deep inside torch. Every public function of
the package checks its arguments with the helpers below, so the same mistake always gets the same
exception type:

* ``TypeError``: the value has the wrong type. ``True`` where an integer is wanted is a wrong type (a
  flag is not a count), and so are ``3.0`` (a float) and ``"3"`` (a string) where an integer is wanted.
* ``ValueError``: the type is right but the value is out of range (``0`` where at least one token is
  needed, ``nan`` for a learning rate) or not among the allowed choices.

Integers: Python ``int`` and NumPy integers (``np.int64(3)``, what a slider or ``np.argmax`` returns)
are accepted and returned as a plain ``int``; bools (``True``, ``np.True_``) are not. Numbers: any
real number except a bool (``int``, ``float``, NumPy numbers) is accepted and returned as a ``float``;
``nan`` is always out of range, and so are the infinities unless ``finite=False``.

Each helper returns the checked value, so a check and an assignment read as one line::

    self.max_new_tokens = check_positive_int("max_new_tokens", max_new_tokens, hint="ask for at least one token")
    # max_new_tokens=0   -> ValueError: max_new_tokens must be a positive integer, got 0: ask for at least one token
    # max_new_tokens=2.0 -> TypeError:  max_new_tokens must be a positive integer, got float 2.0: ...

``hint`` is appended to the message after a colon: say what the value means or how to fix it.
``llm_course.core`` is the lowest layer: this module imports nothing from the package.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "check_int",
    "check_positive_int",
    "check_index",
    "check_float",
    "check_positive",
    "check_fraction",
    "check_probability",
    "check_choice",
    "check_choices",
    "check_bool",
    "check_str",
]


# --------------------------------------------------------------------------------------------
# Building the messages
# --------------------------------------------------------------------------------------------


def _got(value: Any) -> str:
    """``"float 2.0"``: the type's name and the value, for a TypeError."""
    if isinstance(value, bool):
        return f"bool {value!r} (True/False is a flag, not a number)"
    return f"{type(value).__name__} {value!r}"


def _tail(hint: str) -> str:
    return f": {hint}" if hint else ""


def _int_wanted(minimum: int | None, maximum: int | None) -> str:
    """``"a positive integer"``, ``"an integer in [0, 9]"``, ...: what check_int asks for."""
    if maximum is None:
        if minimum is None:
            return "an integer"
        if minimum == 1:
            return "a positive integer"
        if minimum == 0:
            return "a non-negative integer"
        return f"an integer >= {minimum}"
    if minimum is None:
        return f"an integer <= {maximum}"
    return f"an integer in [{minimum}, {maximum}]"


def _float_wanted(low: float | None, high: float | None, low_open: bool, high_open: bool, finite: bool) -> str:
    """``"a finite number > 0"``, ``"a number in [0, 1)"``, ...: what check_float asks for."""
    if low is not None and high is not None:
        return f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    number = "a finite number" if finite else "a number"
    if low is not None:
        return f"{number} {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{number} {'<' if high_open else '<='} {high:g}"
    return number


def _is_int(value: Any) -> bool:
    """``int`` or a NumPy integer, but not a bool (``np.bool_`` is no ``numbers.Integral``)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------
# Integers
# --------------------------------------------------------------------------------------------


def check_int(
    name: str,
    value: Any,
    minimum: int | None = None,
    maximum: int | None = None,
    *,
    hint: str = "",
    allow_none: bool = False,
) -> int:
    """``value`` as an ``int`` if it is an integer in ``[minimum, maximum]`` (both inclusive). Chapter 01.

    A bound left as ``None`` is not checked. ``allow_none=True`` lets ``None`` through (returned as is)
    for arguments where ``None`` means "no limit" or "the default". TypeError for a bool, a float or
    anything else that is not an integer; ValueError for an integer out of range.
    """
    if value is None and allow_none:
        return None
    wanted = _int_wanted(minimum, maximum) + (" or None" if allow_none else "")
    if not _is_int(value):
        raise TypeError(f"{name} must be {wanted}, got {_got(value)}{_tail(hint)}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {wanted}, got {value}{_tail(hint)}")
    return value


def check_positive_int(name: str, value: Any, *, hint: str = "", allow_none: bool = False) -> int:
    """``value`` if it is an integer >= 1 (a count: tokens, steps, layers, ...). Chapter 01.

    Same rule as ``check_int(name, value, minimum=1)``.
    """
    return check_int(name, value, minimum=1, hint=hint, allow_none=allow_none)


def check_index(name: str, value: Any, size: int, *, hint: str = "") -> int:
    """``value`` if it is a valid index into ``size`` things, ``0 <= value < size``. Chapter 01.

    For a layer, a head or a token id: ``check_index("layer", layer, n_layer, hint=f"the model has
    {n_layer} layers")``. Negative indices from the end are not accepted: the course counts from 0.
    """
    if size < 1:
        raise ValueError(f"{name}: there is nothing to index (size {size}){_tail(hint)}")
    return check_int(name, value, minimum=0, maximum=size - 1, hint=hint)


# --------------------------------------------------------------------------------------------
# Real numbers
# --------------------------------------------------------------------------------------------


def check_float(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    finite: bool = True,
    hint: str = "",
    allow_none: bool = False,
) -> float:
    """``value`` as a ``float`` if it is a real number between ``low`` and ``high``. Chapter 01.

    The bounds are inclusive unless ``low_open`` / ``high_open`` (``low=0, low_open=True``: ``> 0``);
    a bound left as ``None`` is not checked. ``nan`` is always out of range; so are ``inf`` and
    ``-inf`` unless ``finite=False``. Ints are numbers too (``lr=1`` is fine). TypeError for a bool, a
    string or anything else that is not a real number; ValueError for a number out of range.
    """
    if value is None and allow_none:
        return None
    wanted = _float_wanted(low, high, low_open, high_open, finite) + (" or None" if allow_none else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {wanted}, got {_got(value)}{_tail(hint)}")
    value = float(value)
    out = (
        math.isnan(value)
        or (finite and math.isinf(value))
        or (low is not None and (value <= low if low_open else value < low))
        or (high is not None and (value >= high if high_open else value > high))
    )
    if out:
        raise ValueError(f"{name} must be {wanted}, got {value!r}{_tail(hint)}")
    return value


def check_positive(name: str, value: Any, *, hint: str = "", allow_none: bool = False) -> float:
    """``value`` as a ``float`` if it is a finite number > 0 (a learning rate, a temperature). Chapter 01."""
    return check_float(name, value, low=0.0, low_open=True, hint=hint, allow_none=allow_none)


def check_fraction(name: str, value: Any, *, hint: str = "") -> float:
    """``value`` as a ``float`` in ``[0, 1)``: a share of something, e.g. ``val_fraction`` or ``dropout``. Chapter 01.

    1 is excluded: keeping all the data for validation, or dropping every activation, leaves nothing.
    """
    return check_float(name, value, low=0.0, high=1.0, high_open=True, hint=hint)


def check_probability(
    name: str, value: Any, *, low_open: bool = False, high_open: bool = False, hint: str = ""
) -> float:
    """``value`` as a ``float`` in ``[0, 1]``; ``low_open`` / ``high_open`` exclude 0 / 1. Chapter 01.

    ``top_p`` is a probability in ``(0, 1]`` (``low_open=True``): 0 would keep no token at all.
    """
    return check_float(name, value, low=0.0, high=1.0, low_open=low_open, high_open=high_open, hint=hint)


# --------------------------------------------------------------------------------------------
# Choices, flags and strings
# --------------------------------------------------------------------------------------------


def check_choice(name: str, value: Any, allowed: Sequence[Any], *, hint: str = "") -> Any:
    """``value`` if it is one of ``allowed``, else a ValueError that lists them. Chapter 01.

    For a string, the message also suggests the closest allowed one (``'fp61'``: did you mean
    ``'fp16'``?). Any value that is not among the choices, whatever its type, is a ValueError.
    """
    try:
        if value in allowed:
            return value
    except TypeError:  # an unhashable value asked of a set or dict: certainly not a choice
        pass
    options = ", ".join(repr(a) for a in allowed)
    close = difflib.get_close_matches(value, [a for a in allowed if isinstance(a, str)], n=1) \
        if isinstance(value, str) else []
    guess = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"{name} must be one of {options}, got {value!r}{guess}{_tail(hint)}")


def check_choices(name: str, values: Any, allowed: Sequence[Any], *, hint: str = "") -> tuple[Any, ...]:
    """``values``, one or several of ``allowed``, as a tuple without repeats (in their order). Chapter 01.

    A single string counts as one value (``languages="en"`` is ``("en",)``). TypeError when ``values``
    is not a string or an iterable of values; ValueError when it is empty or holds a value that is not
    allowed (the message names the unknown ones and lists the choices).
    """
    if isinstance(values, str):
        values = (values,)
    try:
        values = tuple(dict.fromkeys(values))
    except TypeError:
        raise TypeError(f"{name} must be a list of choices from {', '.join(map(repr, allowed))}, got "
                        f"{_got(values)}{_tail(hint)}") from None
    options = ", ".join(repr(a) for a in allowed)
    if not values:
        raise ValueError(f"{name} is empty: choose at least one of {options}{_tail(hint)}")
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ValueError(f"{name}: unknown {', '.join(map(repr, unknown))}; choose from {options}{_tail(hint)}")
    return values


def check_bool(name: str, value: Any, *, hint: str = "") -> bool:
    """``value`` if it is ``True`` or ``False`` (a NumPy bool too), else a TypeError. Chapter 01.

    ``1`` or ``"yes"`` are not accepted: a flag written as a number is usually a mixed-up argument.
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}{_tail(hint)}")


def check_str(name: str, value: Any, *, non_empty: bool = False, hint: str = "") -> str:
    """``value`` if it is a ``str`` (TypeError otherwise); ``non_empty=True`` also refuses ``""``. Chapter 01."""
    wanted = "a non-empty string" if non_empty else "a string"
    if not isinstance(value, str):
        raise TypeError(f"{name} must be {wanted}, got {_got(value)}{_tail(hint)}")
    if non_empty and not value:
        raise ValueError(f"{name} must be {wanted}, got ''{_tail(hint)}")
    return value
