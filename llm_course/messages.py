"""The package's own messages in other languages: checkers, quizzes, widgets. Chapter 01 (course set-up).

What a student reads from the package itself (an exercise checker's verdict, a quiz's questions and
feedback) is shown through :func:`llm_course.core.i18n.tr`, with the English text as the key. This module
finds every such text, so that the catalogue ``llm_course/locale/<lang>/LC_MESSAGES/llm_course.po`` can
be kept complete: the literal messages passed to ``tr(...)`` or ``N_(...)`` anywhere in the package, and
the texts of each chapter's quiz and exercises (questions, options, explanations, tasks, hints, the notes
of edge cases). ``llm-course translate ru`` calls :func:`update_messages`; tests/test_translation.py
checks that nothing the package shows is left untranslated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llm_course.core.deps import require
from llm_course.learn import (
    chapter01,
    chapter02,
    chapter03,
    chapter04,
    chapter05,
    chapter06,
    chapter07,
    chapter08,
    chapter09,
)

__all__ = ["CHAPTER_MODULES", "package_messages", "chapter_messages", "update_messages", "save_catalogue"]

# Each chapter's questions and exercises (llm_course/learn/chapterNN.py), imported by name, not computed.
CHAPTER_MODULES = {m.__name__[-2:]: m for m in (chapter01, chapter02, chapter03, chapter04, chapter05, chapter06,
                                                chapter07, chapter08, chapter09)}


def _literal(node: Any) -> str | None:
    import ast

    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def package_messages(package: Path | None = None) -> dict[str, str]:
    """Every literal message given to ``tr(...)``, ``N_(...)`` or ``Message(...)``: ``{text: where}``."""
    import ast

    package = package or Path(__file__).resolve().parent
    found: dict[str, str] = {}
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("tr", "N_", "Message") and node.args
                    and (text := _literal(node.args[0])) is not None):
                found.setdefault(text, f"{path.relative_to(package.parent).as_posix()}:{node.lineno}")
    return found


def chapter_messages(number: str) -> dict[str, str]:
    """The text a student reads in chapter ``number``'s quiz and exercise feedback: ``{message: where}``.

    Questions, options and their explanations; each exercise's task, hint, explanation, the meanings of
    typical mistakes and the notes of its edge cases (shown with the input a function failed on).
    """
    from llm_course.learn.checker import FunctionExercise
    from llm_course.learn.quiz import MultipleChoice

    if number not in CHAPTER_MODULES:
        raise ValueError(f"no chapter {number!r} with exercises: the chapters are {', '.join(CHAPTER_MODULES)}")
    module = CHAPTER_MODULES[number]
    where = f"llm_course/learn/chapter{number}.py"
    found: dict[str, str] = {}

    def add(text: str, what: str) -> None:
        if text:
            found.setdefault(text, f"{where} ({what})")

    quiz = module.quiz()
    add(quiz.title, "quiz title")
    for i, q in enumerate(quiz.questions, 1):
        add(q.prompt, f"question {i}")
        if isinstance(q, MultipleChoice):
            for c in q.choices:
                add(c.text, f"question {i}, option")
                add(c.why, f"question {i}, why")
        else:
            add(q.why, f"question {i}, why")
            for meaning in q.mistakes.values():
                add(meaning, f"question {i}, mistake")
    for name, e in module.EXERCISES.exercises.items():
        add(e.task, f"{name}, task")
        add(e.hint, f"{name}, hint")
        if isinstance(e, FunctionExercise):
            for case in e.all_cases():
                add(case.note, f"{name}, edge case")
        else:
            add(e.why, f"{name}, why")
            for meaning in e.mistakes.values():
                add(meaning, f"{name}, mistake")
    return found


def update_messages(language: str, chapters: list[str] | None = None) -> Path:
    """Bring the package's catalogue in step: the package's messages and those of ``chapters`` (default:
    every chapter with exercises), translations kept, messages that are gone marked obsolete."""
    from llm_course.core.i18n import catalogue_path

    polib = require("polib")
    path = catalogue_path(language)
    old = {e.msgid: e for e in polib.pofile(str(path), wrapwidth=0)} if path.exists() else {}
    messages = dict(package_messages())
    numbers = chapters if chapters is not None else sorted(CHAPTER_MODULES)
    for number in numbers:
        for text, where in chapter_messages(number).items():
            messages.setdefault(text, where)
    po = polib.POFile(wrapwidth=0)
    po.header = (f"The package's own messages in {language}: exercise checkers, quizzes, widgets, and each chapter's "
                 "questions and exercise texts. Updated by `llm-course translate`; msgid is the English text.")
    po.metadata = {"Project-Id-Version": "llm-course", "Language": language, "MIME-Version": "1.0",
                   "Content-Type": "text/plain; charset=UTF-8", "Content-Transfer-Encoding": "8bit"}
    for text, where in messages.items():
        before = old.get(text)
        entry = polib.POEntry(msgid=text, msgstr=before.msgstr if before is not None and not before.obsolete else "",
                              tcomment=before.tcomment if before is not None else "")
        entry.occurrences = [(where.split(" (")[0], "")]
        if " (" in where:
            entry.comment = where.split(" (", 1)[1].rstrip(")")
        po.append(entry)
    save_catalogue(po, old, messages, path)
    from llm_course.core.i18n import translations

    translations.cache_clear()
    return path


def save_catalogue(po: Any, previous: dict[str, Any], used: Any, path: Path) -> Path:
    """Write the catalogue ``po`` to ``path`` (only if it changed), after appending the ``previous`` entries
    whose English is no longer ``used`` but that have a translation, marked obsolete (``#~``): a translator's
    tool offers them again when the English comes back or changes a little."""
    for msgid, entry in previous.items():
        if msgid not in used and entry.msgstr:
            entry.obsolete = True
            po.append(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = str(po) + "\n"
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path
