"""Check your understanding: questions with immediate feedback that explains the answer. Chapter 01 on.

Two kinds of question: ``MultipleChoice`` (each option says why it is right or wrong) and ``Numeric``
(a number within a tolerance; typical wrong numbers get their own explanation). A ``Quiz`` holds a
lesson's questions and works three ways:

* ``quiz.show()`` in JupyterLab or Colab (ipywidgets 8 or 7.7): each question with its options or a
  text box, a *Check* button and the feedback under it;
* ``quiz.answer(2, "b")`` anywhere, without a front end: the feedback for question 2, option b;
* ``print(quiz)``: the questions as text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

from llm_course.core.checks import check_float, check_int, check_str
from llm_course.core.i18n import N_, tr
from llm_course.learn.feedback import FAILED, PASSED, Feedback

__all__ = ["Choice", "MultipleChoice", "Numeric", "Quiz"]

LETTERS = "abcdefghij"


@dataclass(frozen=True)
class Choice:
    """One option of a multiple-choice question, whether it is right, and why. Chapter 01."""

    text: str
    correct: bool
    why: str


@dataclass(frozen=True)
class MultipleChoice:
    """A question with lettered options (a, b, c, ...), exactly one of them right. Chapter 01."""

    prompt: str
    choices: tuple[Choice, ...]

    def __post_init__(self) -> None:
        check_str("prompt", self.prompt, non_empty=True)
        if not 2 <= len(self.choices) <= len(LETTERS):
            raise ValueError(f"a multiple-choice question needs 2 to {len(LETTERS)} choices, got {len(self.choices)}")
        if sum(c.correct for c in self.choices) != 1:
            raise ValueError(f"exactly one choice must be correct, got {sum(c.correct for c in self.choices)}: "
                             f"{self.prompt[:60]!r}")

    @property
    def letters(self) -> str:
        return LETTERS[: len(self.choices)]

    def grade(self, response: Any) -> Feedback:
        """Feedback for the option ``response`` ("a", "b", ...; case and spaces ignored)."""
        if not isinstance(response, str):
            raise TypeError(tr("answer with the letter of an option as a string ({letters}), got {kind} {response}",
                               letters=", ".join(map(repr, self.letters)), kind=type(response).__name__,
                               response=repr(response)))
        key = response.strip().lower().rstrip(")")
        if len(key) != 1 or key not in self.letters:
            raise ValueError(tr("{response} is not one of the options: answer with one of {letters}",
                                response=repr(response), letters=", ".join(map(repr, self.letters))))
        choice = self.choices[self.letters.index(key)]
        verdict = N_("✓ Right: {why}") if choice.correct else N_("✗ Not quite: {why}")
        return Feedback(PASSED if choice.correct else FAILED, tr(verdict, why=tr(choice.why)))

    def text(self) -> str:
        return tr(self.prompt) + "\n" + "\n".join(f"  {k}) {tr(c.text)}" for k, c in zip(self.letters, self.choices))


@dataclass(frozen=True)
class Numeric:
    """A question whose answer is a number, right within ``rtol`` (relative tolerance). Chapter 01.

    ``why`` explains the right answer; ``mistakes`` maps typical wrong numbers to what they mean.
    """

    prompt: str
    answer: float
    why: str
    rtol: float = 0.01
    mistakes: dict[float, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_str("prompt", self.prompt, non_empty=True)
        check_float("answer", self.answer)
        check_float("rtol", self.rtol, low=0, high=1)

    def grade(self, response: Any) -> Feedback:
        """Feedback for the number ``response`` (a string such as "4,096" is read as a number too)."""
        if isinstance(response, str):
            try:
                response = float(response.replace(",", "").replace("_", "").replace(" ", ""))
            except ValueError:
                raise ValueError(tr("{response} is not a number: write digits only, e.g. 4096 or 0.25",
                                    response=repr(response))) from None
        value = check_float("answer", response, hint=tr("answer with a number, e.g. quiz.answer(1, 4096)"))
        if math.isclose(value, self.answer, rel_tol=self.rtol, abs_tol=1e-12):
            return Feedback(PASSED, tr("✓ Right: {why}", why=tr(self.why)))
        for wrong, meaning in self.mistakes.items():
            if math.isclose(value, wrong, rel_tol=self.rtol, abs_tol=1e-12):
                return Feedback(FAILED, tr("✗ Not quite: {why}", why=tr(meaning)))
        message = (N_("✗ Not quite: {value} is too high. Try again (the answer is within {percent}% of the exact "
                      "value).") if value > self.answer else
                   N_("✗ Not quite: {value} is too low. Try again (the answer is within {percent}% of the exact "
                      "value)."))
        return Feedback(FAILED, tr(message, value=f"{value:g}", percent=f"{self.rtol * 100:g}"))

    def text(self) -> str:
        return tr(self.prompt) + "\n  " + tr("(a number)")


Question = MultipleChoice | Numeric


class Quiz:
    """A lesson's questions: ``quiz.show()`` (widget), ``quiz.answer(n, response)`` (feedback). Chapter 01."""

    def __init__(self, questions: Sequence[Question], title: str = "Check your understanding") -> None:
        self.questions = tuple(questions)
        if not self.questions:
            raise ValueError("a quiz needs at least one question")
        for q in self.questions:
            if not isinstance(q, (MultipleChoice, Numeric)):
                raise TypeError(f"quiz questions must be MultipleChoice or Numeric, got {type(q).__name__}")
        self.title = check_str("title", title)

    def __len__(self) -> int:
        return len(self.questions)

    def answer(self, number: int, response: Any) -> Feedback:
        """The feedback for question ``number`` (counted from 1, as shown) and the student's response."""
        n = check_int("number", number, minimum=1, maximum=len(self.questions),
                      hint=f"the quiz has questions 1 to {len(self.questions)}")
        return self.questions[n - 1].grade(response)

    def __str__(self) -> str:
        body = "\n\n".join(f"{i}. {q.text()}" for i, q in enumerate(self.questions, 1))
        return (f"{tr(self.title)}\n\n{body}\n\n"
                + tr("Answer with quiz.answer(number, response), e.g. quiz.answer(1, 'a')."))

    __repr__ = __str__

    def widget(self) -> Any:
        """The quiz as ipywidgets (8.x and Colab's 7.7): per question, its controls, *Check* and feedback."""
        import ipywidgets as w

        boxes = [w.HTML(f"<h3>{escape(tr(self.title))}</h3>")]
        self.controls = []
        for i, q in enumerate(self.questions, 1):
            prompt = w.HTML(f"<b>{i}.</b> {escape(tr(q.prompt))}")
            if isinstance(q, MultipleChoice):
                entry = w.RadioButtons(options=[(f"{k}) {tr(c.text)}", k) for k, c in zip(q.letters, q.choices)],
                                       layout=w.Layout(width="auto"))
            else:
                entry = w.Text(placeholder=tr("a number"), layout=w.Layout(width="16em"))
            button = w.Button(description=tr("Check"))
            out = w.HTML("")
            button.on_click(lambda _b, n=i, e=entry, o=out: self._on_check(n, e, o))
            self.controls.append((entry, button, out))
            boxes.append(w.VBox([prompt, entry, button, out]))
        return w.VBox(boxes)

    def _on_check(self, number: int, entry: Any, out: Any) -> None:
        try:
            result = self.answer(number, entry.value)
        except (TypeError, ValueError) as exc:
            out.value = f"<span style='color:#a60'>{escape(str(exc))}</span>"
            return
        color = "#080" if result.passed else "#b00"
        out.value = f"<span style='color:{color}'>{escape(result.message)}</span>"

    def show(self) -> None:
        """Display the quiz: the widget in Jupyter, the questions as text without a front end."""
        import sys

        ipython = sys.modules.get("IPython")
        shell = ipython.get_ipython() if ipython is not None else None
        if shell is not None and getattr(shell, "kernel", None) is not None:
            try:
                from IPython.display import display

                display(self.widget())
                return
            except ImportError:  # no ipywidgets: fall back to text
                pass
        print(self)
