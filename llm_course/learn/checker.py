"""Exercise checkers: one call checks a student's answer and says specifically what is wrong. Chapter 01 on.

``FunctionExercise`` checks a student's function against the reference on generated inputs (edge cases
first, then random ones) and reports the first input on which they differ, with the expected and the
actual value. ``ValueExercise`` checks a number (a prediction, a measurement) against its closed-form
value or a range. ``ExerciseSet`` holds a chapter's exercises: ``ex.check("merge_pair", merge_pair)``.

A student's answer is bad input too, so the checker never crashes on it: a stub (``raise
NotImplementedError``, a body of ``...`` or ``pass``) is "not attempted yet"; a function that raises
gets its exception and its own line shown; one that returns the wrong type or shape, changes its input
in place or runs past the time limit gets a message saying so. The time limit interrupts the student's
code with a signal (SIGALRM, in the main thread of a Unix kernel) or else leaves it in a daemon thread:
a hang never hangs the checker.
"""

from __future__ import annotations

import ast
import copy
import inspect
import numbers
import signal
import textwrap
import threading
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llm_course.core.checks import check_bool, check_positive, check_str
from llm_course.core.i18n import N_, tr
from llm_course.learn.feedback import FAILED, NOT_ATTEMPTED, PASSED, Feedback, difference, preview

__all__ = ["Case", "Outcome", "call_with_time_limit", "is_stub", "FunctionExercise", "ValueExercise", "agree",
           "ExerciseSet"]


@dataclass(frozen=True)
class Case:
    """One input of a check: the positional arguments and, for edge cases, what is special about it."""

    args: tuple
    note: str = ""


@dataclass
class Outcome:
    """What calling the student's function did: ``kind`` is "returned", "raised", "stub" or "timeout"."""

    kind: str
    value: Any = None
    error: BaseException | None = None


class _TimeLimit(BaseException):
    """Raised inside the student's code when its time is up (a BaseException: ``except Exception`` in
    the student's code cannot swallow it)."""


def call_with_time_limit(fn: Callable, args: tuple, seconds: float) -> Outcome:
    """Call ``fn(*args)`` and say what happened, stopping it after ``seconds``. Chapter 01.

    Never raises for anything the student's code does (KeyboardInterrupt excepted: Ctrl-C / the
    notebook's stop button still stops everything).
    """
    if hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread():
        return _call_with_alarm(fn, args, seconds)
    return _call_in_thread(fn, args, seconds)


def _classify(fn: Callable, args: tuple) -> Outcome:
    try:
        return Outcome("returned", fn(*args))
    except NotImplementedError as exc:
        return Outcome("stub", error=exc)
    except (_TimeLimit, KeyboardInterrupt):
        raise
    except BaseException as exc:  # SystemExit too: a student's exit() must not end the kernel's cell
        return Outcome("raised", error=exc)


def _call_with_alarm(fn: Callable, args: tuple, seconds: float) -> Outcome:
    def on_alarm(signum, frame):
        raise _TimeLimit

    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            return _classify(fn, args)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _TimeLimit:
        return Outcome("timeout")
    finally:
        signal.signal(signal.SIGALRM, previous)


def _call_in_thread(fn: Callable, args: tuple, seconds: float) -> Outcome:
    box: list[Outcome] = []

    def run() -> None:
        try:
            box.append(_classify(fn, args))
        except _TimeLimit:
            pass  # stopped by _stop_thread once its time was up

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if box:
        return box[0]
    _stop_thread(worker)
    return Outcome("timeout")


def _stop_thread(worker: threading.Thread, tries: int = 20, wait_s: float = 0.05) -> bool:
    """Stop a student's function that ran past its time in ``worker``: True if the thread has ended.

    A thread cannot be killed, but CPython can raise an exception inside it at its next bytecode
    (``PyThreadState_SetAsyncExc``): ``_TimeLimit``, which ``except Exception`` in the student's code does
    not catch. Without this, an endless loop would keep running in the background and take a CPU core
    (and the GIL) from everything after it. Code stuck inside one long C call stops when it returns; on
    another Python, or for code that catches ``BaseException``, the daemon thread is left behind (it
    never blocks the kernel's exit).
    """
    import ctypes

    set_async_exc = getattr(getattr(ctypes, "pythonapi", None), "PyThreadState_SetAsyncExc", None)
    if set_async_exc is None or worker.ident is None:
        return not worker.is_alive()
    for _ in range(tries):
        if not worker.is_alive():
            return True
        set_async_exc(ctypes.c_ulong(worker.ident), ctypes.py_object(_TimeLimit))
        worker.join(wait_s)
    alive = worker.is_alive()
    if alive:  # give up: clear the pending exception so it cannot fire somewhere unexpected later
        set_async_exc(ctypes.c_ulong(worker.ident), None)
    return not alive


def is_stub(fn: Any) -> bool:
    """True if ``fn``'s body is only a docstring, ``...``, ``pass`` or ``raise NotImplementedError``. Chapter 01."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return False
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if not funcs:
        return False
    for stmt in funcs[0].body:
        if isinstance(stmt, ast.Pass) or (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)):
            continue  # pass, ..., a docstring
        if isinstance(stmt, ast.Raise) and "NotImplementedError" in ast.unparse(stmt):
            continue
        return False
    return True


def _student_line(exc: BaseException) -> str:
    """``line 4: return counts[pair]``: the last line of the student's own code in the traceback."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "llm_course" not in f.filename.replace("\\", "/")]
    if not frames:
        return ""
    f = frames[-1]
    return tr("\n  at line {lineno} of {function}: {line}", lineno=f.lineno, function=f.name,
              line=(f.line or "").strip())


def _inputs(arg_names: Sequence[str], case: Case) -> str:
    names = list(arg_names) + [f"arg{i}" for i in range(len(arg_names), len(case.args))]
    text = ", ".join(f"{n}={preview(a, 160)}" for n, a in zip(names, case.args))
    return text + (f"  ({tr(case.note)})" if case.note else "")


@dataclass
class FunctionExercise:
    """"Implement ``name``": the student's function must agree with ``reference`` on every case. Chapter 01.

    ``cases(rng)`` yields the inputs (``Case`` objects or argument tuples), edge cases first;
    ``compare(expected, actual, args)`` may replace the default :func:`difference` where several answers
    are right (it returns None, or what is wrong). ``time_limit`` (seconds) applies to each call.
    """

    name: str
    reference: Callable
    cases: Callable[[np.random.Generator], Iterable[Case | tuple]]
    hint: str
    task: str = ""
    compare: Callable[[Any, Any, tuple], str | None] | None = None
    rtol: float = 1e-6
    atol: float = 1e-9
    time_limit: float = 2.0
    seed: int = 0
    kind: str = "implement"

    def __post_init__(self) -> None:
        self.time_limit = check_positive("time_limit", self.time_limit, hint="seconds allowed for each call")

    def all_cases(self) -> list[Case]:
        return [c if isinstance(c, Case) else Case(tuple(c)) for c in self.cases(np.random.default_rng(self.seed))]

    def check(self, answer: Any) -> Feedback:
        """Run the student's function on every case; the first failure is the feedback."""
        name = self.name
        if not callable(answer):
            return Feedback(FAILED, tr("✗ {name}: expected your function itself, got {got}: pass {name}, not "
                                       "{name}(...)", name=name, got=preview(answer, 80)))
        if is_stub(answer):
            return self._not_attempted()
        arg_names = list(inspect.signature(self.reference).parameters)
        cases = self.all_cases()
        for case in cases:
            expected = self.reference(*copy.deepcopy(case.args))
            given = copy.deepcopy(case.args)
            outcome = call_with_time_limit(answer, given, self.time_limit)
            on = tr("\n  on input {inputs}", inputs=_inputs(arg_names, case))
            if outcome.kind == "stub":
                return self._not_attempted()
            if outcome.kind == "timeout":
                return Feedback(FAILED, tr("✗ {name} did not finish within {seconds} s{on}\n  (an endless loop? check "
                                           "that every loop moves forward)", name=name, seconds=f"{self.time_limit:g}",
                                           on=on))
            if outcome.kind == "raised":
                err = outcome.error
                return Feedback(FAILED, tr("✗ {name} raised {error_type}: {error}{on}{line}", name=name,
                                           error_type=type(err).__name__, error=err, on=on, line=_student_line(err)))
            if outcome.value is None and expected is not None:
                return Feedback(FAILED, tr("✗ {name} returned None{on}\n  (a missing `return`?)", name=name, on=on))
            for i, (before, after) in enumerate(zip(case.args, given)):
                changed = difference(before, after, rtol=0, atol=0)
                if changed:
                    arg = arg_names[i] if i < len(arg_names) else f"argument {i + 1}"
                    return Feedback(FAILED, tr("✗ {name} changed its input `{arg}` in place ({changed}){on}\n  "
                                               "(build a new value instead of modifying the argument)", name=name,
                                               arg=arg, changed=changed, on=on))
            wrong = (self.compare(expected, outcome.value, case.args) if self.compare else
                     difference(expected, outcome.value, rtol=self.rtol, atol=self.atol))
            if wrong:
                return Feedback(FAILED, tr("✗ {name} differs from the reference{on}\n  {wrong}\n  expected: "
                                           "{expected}\n  actual:   {actual}", name=name, on=on, wrong=wrong,
                                           expected=preview(expected), actual=preview(outcome.value)))
        edge = sum(1 for c in cases if c.note)
        message = (N_("✓ {name}: correct on all {total} inputs ({edge} edge case, {random} random).") if edge == 1
                   else N_("✓ {name}: correct on all {total} inputs ({edge} edge cases, {random} random)."))
        return Feedback(PASSED, tr(message, name=name, total=len(cases), edge=edge, random=len(cases) - edge))

    def _not_attempted(self) -> Feedback:
        return Feedback(NOT_ATTEMPTED, tr("… {name}: not attempted yet: replace `raise NotImplementedError()` with "
                                          "your code. Stuck? ex.hint({quoted})", name=self.name,
                                          quoted=repr(self.name)))


@dataclass
class ValueExercise:
    """"Predict, then run" or "experiment": a number checked against ``expected`` or ``[low, high]``. Chapter 01.

    ``mistakes`` maps typical wrong answers to what they mean (the loss instead of the perplexity, ...);
    ``why`` explains the right answer once the student has it.
    """

    name: str
    hint: str
    task: str = ""
    expected: float | None = None
    rtol: float = 0.01
    low: float | None = None
    high: float | None = None
    why: str = ""
    mistakes: dict[float, str] = field(default_factory=dict)
    kind: str = "predict"

    def check(self, answer: Any) -> Feedback:
        name = self.name
        if answer is None or answer is Ellipsis:
            return Feedback(NOT_ATTEMPTED, tr("… {name}: not attempted yet: put your number in place of `...`. "
                                              "Stuck? ex.hint({quoted})", name=name, quoted=repr(name)))
        if type(answer).__name__ == "Tensor" and answer.ndim == 0:
            answer = answer.item()
        if isinstance(answer, np.ndarray) and answer.ndim == 0:
            answer = answer.item()
        if isinstance(answer, bool) or not isinstance(answer, numbers.Real):
            return Feedback(FAILED, tr("✗ {name}: expected a number, got {got}", name=name, got=preview(answer, 80)))
        value = float(answer)
        for wrong, meaning in self.mistakes.items():
            if np.isclose(value, wrong, rtol=self.rtol):
                return Feedback(FAILED, tr("✗ {name}: {value} is not it: {meaning}", name=name, value=f"{value:g}",
                                           meaning=tr(meaning)))
        if self.expected is not None and not np.isclose(value, self.expected, rtol=self.rtol):
            message = (N_("✗ {name}: {value} is too high. Stuck? ex.hint({quoted})") if value > self.expected else
                       N_("✗ {name}: {value} is too low. Stuck? ex.hint({quoted})"))
            return Feedback(FAILED, tr(message, name=name, value=f"{value:g}", quoted=repr(name)))
        if self.low is not None and value < self.low or self.high is not None and value > self.high:
            return Feedback(FAILED, tr("✗ {name}: {value} is outside the range this experiment gives, [{low}, {high}]: "
                                       "check the settings the task asks for", name=name, value=f"{value:g}",
                                       low=f"{self.low:g}", high=f"{self.high:g}"))
        return Feedback(PASSED, tr("✓ {name}: {value} is right.", name=name, value=f"{value:g}")
                        + (f" {tr(self.why)}" if self.why else ""))


class ExerciseSet:
    """A chapter's exercises by name: ``ex.check(name, answer)``, ``ex.hint(name)``. Chapter 01."""

    def __init__(self, exercises: Iterable[FunctionExercise | ValueExercise]) -> None:
        self.exercises = {e.name: e for e in exercises}

    def __getitem__(self, name: str) -> FunctionExercise | ValueExercise:
        check_str("name", name)
        if name not in self.exercises:
            raise ValueError(f"no exercise named {name!r}; this chapter has {', '.join(self.exercises)}")
        return self.exercises[name]

    def check(self, name: str, answer: Any, *, explanation: Any = None, hint: bool = False) -> Feedback:
        """Check ``answer`` for exercise ``name``; ``hint=True`` adds the hint to anything but a pass.

        An experiment also wants ``explanation``: one sentence (at least four words) on what the
        measurement shows.
        """
        check_bool("hint", hint)
        exercise = self[name]
        result = exercise.check(answer)
        if result.passed and exercise.kind == "experiment" and (
                not isinstance(explanation, str) or len(explanation.split()) < 4):
            more = tr("\n✗ {name}: the measurement is right; now explain it in one sentence: "
                      "ex.check({quoted}, value, explanation=\"...\")", name=name, quoted=repr(name))
            result = Feedback(FAILED, result.message + more)
        if hint and not result.passed:
            return Feedback(result.status, result.message + tr("\n  hint: {hint}", hint=tr(exercise.hint)))
        return result

    def hint(self, name: str) -> str:
        """The hint for exercise ``name``."""
        return tr("hint for {name}: {hint}", name=name, hint=tr(self[name].hint))

    def __repr__(self) -> str:
        return "exercises: " + ", ".join(f"{n} ({e.kind})" for n, e in self.exercises.items())


def agree(ours: Callable, library: Callable, cases: Iterable[Case | tuple], *, rtol: float = 1e-6,
          atol: float = 1e-9, name: str = "") -> int:
    """Check a notebook's teaching version against the library's: the number of inputs checked. Chapter 01 on.

    The cell after a lesson's key lines calls ``agree(bigram_probs, library_version, cases, rtol=1e-12)``
    on random and edge-case inputs; an AssertionError names the first input on which they differ (or
    what else went wrong: an exception, a changed input), so the page and the package cannot drift apart.
    """
    cases = list(cases)
    if not cases:
        raise ValueError("agree needs at least one input case: give random and edge-case inputs")
    label = name or getattr(ours, "__name__", "the teaching version")
    result = FunctionExercise(label, library, lambda rng: cases, hint="", rtol=rtol, atol=atol,
                              time_limit=60.0).check(ours)
    if not result.passed:
        raise AssertionError(result.message.replace(tr("the reference"), tr("the library")))
    return len(cases)
