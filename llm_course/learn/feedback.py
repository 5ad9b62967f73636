"""Feedback for a student: a verdict with its explanation, and how two answers differ. Chapter 01 on.

``Feedback`` is what a question (:mod:`llm_course.learn.quiz`) or an exercise checker
(:mod:`llm_course.learn.checker`) returns: its text is the message a student reads, ``bool(feedback)``
says whether the answer passed. ``difference(expected, actual)`` compares two values of any kind the
course's functions return (numbers, strings, lists, dicts, NumPy arrays, torch tensors) and says in one
sentence where they first differ, or returns None when they agree to the tolerance.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from llm_course.core.i18n import tr

__all__ = ["Feedback", "PASSED", "FAILED", "NOT_ATTEMPTED", "difference", "preview"]

PASSED, FAILED, NOT_ATTEMPTED = "passed", "failed", "not attempted"


@dataclass(frozen=True)
class Feedback:
    """A verdict (``status``: passed, failed or not attempted) and the message that explains it. Chapter 01.

    Shown in a notebook (or printed) it is the message itself; ``bool(feedback)`` is True only if passed.
    """

    status: str
    message: str

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return self.message

    __repr__ = __str__


def preview(value: Any, limit: int = 200) -> str:
    """A short, readable rendering of ``value`` for a message (arrays and tensors with their shape)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of the course
        torch = None
    if torch is not None and isinstance(value, torch.Tensor):
        body = np.array2string(value.detach().cpu().numpy(), threshold=12, edgeitems=2, precision=4)
        text = tr("tensor of shape {shape}, dtype {dtype}: {body}", shape=tuple(value.shape), dtype=value.dtype,
                  body=body)
    elif isinstance(value, np.ndarray):
        body = np.array2string(value, threshold=12, edgeitems=2, precision=4)
        text = tr("array of shape {shape}, dtype {dtype}: {body}", shape=value.shape, dtype=value.dtype, body=body)
    elif isinstance(value, np.generic):  # np.float64(2.5) -> 2.5
        text = repr(value.item())
    elif callable(value) and not isinstance(value, type) and hasattr(value, "__qualname__"):
        text = value.__qualname__  # a function argument: its name, not "<function f at 0x7f...>"
    else:
        text = repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return tr("a bool")
    if isinstance(value, numbers.Real):
        return tr("a number")
    if isinstance(value, str):
        return tr("a str")
    if isinstance(value, Mapping):
        return tr("a dict")
    if isinstance(value, np.ndarray):
        return tr("a NumPy array")
    if type(value).__name__ == "Tensor":
        return tr("a torch.Tensor")
    if isinstance(value, (list, tuple)):
        return tr("a list (or tuple)")
    return tr("a {type}", type=type(value).__name__)


def difference(expected: Any, actual: Any, *, rtol: float = 1e-6, atol: float = 1e-9, where: str = "") -> str | None:
    """Where ``actual`` first differs from ``expected``, in one sentence; None if they agree. Chapter 01.

    Numbers agree within ``rtol``/``atol`` (math.isclose); arrays and tensors need the same shape and
    values within the tolerance; lists and tuples are interchangeable; dict keys must match exactly.
    ``where`` names the position inside a nested value (``[2][0]``, ``['a']``) in the message.
    """
    at = tr(" at {where}", where=where) if where else ""
    if type(expected).__name__ == "Tensor" or isinstance(expected, np.ndarray):
        return _array_difference(expected, actual, rtol, atol, at)
    if isinstance(expected, bool) or expected is None:
        return None if actual is expected or (isinstance(actual, np.bool_) and bool(actual) is expected) else (
            tr("expected {expected}{at}, got {actual}", expected=repr(expected), at=at, actual=preview(actual)))
    if isinstance(expected, numbers.Real):
        if not isinstance(actual, numbers.Real) or isinstance(actual, bool):
            if isinstance(actual, np.ndarray) and actual.ndim == 0:
                actual = actual.item()
            elif type(actual).__name__ == "Tensor" and actual.ndim == 0:
                actual = actual.item()
            else:
                return tr("expected {kind}{at}, got {got}: {actual}", kind=tr("a number"), at=at, got=_kind(actual),
                          actual=preview(actual))
        if isinstance(expected, numbers.Integral) and isinstance(actual, numbers.Integral):
            return None if int(expected) == int(actual) else tr("expected {expected}{at}, got {actual}",
                                                                   expected=int(expected), at=at, actual=int(actual))
        e, a = float(expected), float(actual)
        if math.isnan(e) and math.isnan(a):
            return None
        if math.isclose(e, a, rel_tol=rtol, abs_tol=atol):
            return None
        return tr("expected {expected}{at}, got {actual}", expected=f"{e:.6g}", at=at, actual=f"{a:.6g}")
    if isinstance(expected, str):
        if actual == expected:
            return None
        return tr("expected {expected}{at}, got {actual}", expected=preview(expected), at=at, actual=preview(actual))
    if isinstance(expected, Mapping):
        if not isinstance(actual, Mapping):
            return tr("expected {kind}{at}, got {got}: {actual}", kind=tr("a dict"), at=at, got=_kind(actual),
                      actual=preview(actual))
        missing = [k for k in expected if k not in actual]
        extra = [k for k in actual if k not in expected]
        if missing:
            return tr("key {key} is missing{at} ({count} missing keys in all)", key=repr(missing[0]), at=at,
                      count=len(missing))
        if extra:
            return tr("unexpected key {key}{at} ({count} extra keys in all)", key=repr(extra[0]), at=at,
                      count=len(extra))
        for key in expected:
            found = difference(expected[key], actual[key], rtol=rtol, atol=atol, where=f"{where}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(expected, Sequence):
        if not isinstance(actual, (list, tuple)):
            return tr("expected {kind}{at}, got {got}: {actual}", kind=_kind(expected), at=at, got=_kind(actual),
                      actual=preview(actual))
        if len(actual) != len(expected):
            return tr("expected {expected} items{at}, got {actual}", expected=len(expected), at=at, actual=len(actual))
        for i, (e, a) in enumerate(zip(expected, actual)):
            found = difference(e, a, rtol=rtol, atol=atol, where=f"{where}[{i}]")
            if found:
                return found
        return None
    return None if actual == expected else tr("expected {expected}{at}, got {actual}", expected=preview(expected),
                                              at=at, actual=preview(actual))


def _array_difference(expected: Any, actual: Any, rtol: float, atol: float, at: str) -> str | None:
    is_tensor = type(expected).__name__ == "Tensor"
    wanted = tr("a torch.Tensor") if is_tensor else tr("a NumPy array")
    if type(actual) is not type(expected):
        return tr("expected {kind}{at}, got {got}: {actual}", kind=wanted, at=at, got=_kind(actual),
                  actual=preview(actual))
    e = expected.detach().cpu().numpy() if is_tensor else expected
    a = actual.detach().cpu().numpy() if is_tensor else actual
    if e.shape != a.shape:
        return tr("expected shape {expected}{at}, got shape {actual}", expected=tuple(e.shape), at=at,
                  actual=tuple(a.shape))
    if e.dtype.kind != a.dtype.kind and not {e.dtype.kind, a.dtype.kind} <= {"f", "i", "u"}:
        return tr("expected dtype {expected}{at}, got {actual}", expected=e.dtype, at=at, actual=a.dtype)
    if e.size == 0:
        return None
    if e.dtype.kind in "fc" or a.dtype.kind in "fc":
        ok = np.isclose(a.astype(np.float64), e.astype(np.float64), rtol=rtol, atol=atol, equal_nan=True)
    else:
        ok = a == e
    if ok.all():
        return None
    index = tuple(int(i) for i in np.argwhere(~ok)[0])
    return tr("{count} of {size} values differ{at}; the first at index {index}: expected {expected}, got {actual}",
              count=int((~ok).sum()), size=e.size, at=at, index=index, expected=repr(e[index].item()),
              actual=repr(a[index].item()))
