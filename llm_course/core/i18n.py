"""The language of what a student reads at run time: quiz feedback, exercise checkers, widgets. Chapter 01.

The course is written in English and has a Russian edition (``notebooks/ru/``, built from the English
notebooks by ``llm-course translate ru``). The text the package itself shows (a quiz's questions and
feedback, an exercise checker's verdict, a widget's labels) follows one setting::

    from llm_course.core.i18n import set_language
    set_language("ru")          # the first cell of every Russian notebook; "en" switches back

or the environment variable ``LLM_COURSE_LANG=ru``. ``tr("✓ Right: {why}", why=...)`` looks the English
text up in the catalogue of the current language (``llm_course/locale/<lang>/LC_MESSAGES/llm_course.po``,
a gettext PO file that translators' tools read, loaded with ``polib``) and fills in the fields; text
with no translation yet stays English. tests/test_translation.py checks that every message of the
package and of the translated chapters has a current translation.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

from llm_course.core.deps import require

__all__ = ["LANGUAGES", "set_language", "get_language", "tr", "N_", "Message", "localized", "catalogue_path",
           "translations"]

LANGUAGES = {"en": "English", "ru": "Русский"}
_current = [os.environ.get("LLM_COURSE_LANG", "en")]
if _current[0] not in LANGUAGES:  # a typo in the environment must not break every import
    _current[0] = "en"


def set_language(language: str) -> str:
    """Show the package's messages in ``language`` ("en" or "ru") from now on; returns it. Chapter 01."""
    if not isinstance(language, str):
        raise TypeError(f"language must be a string such as 'ru', got {type(language).__name__}")
    key = language.strip().lower()
    if key not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}: the course speaks {', '.join(map(repr, LANGUAGES))}")
    if key != "en":
        translations(key)  # fail now, with the fix, if polib or the catalogue is missing
    _current[0] = key
    return key


def get_language() -> str:
    """The language the package's messages are shown in ("en" unless set). Chapter 01."""
    return _current[0]


def catalogue_path(language: str) -> Path:
    """The PO catalogue of the package's own messages in ``language``."""
    return Path(__file__).resolve().parent.parent / "locale" / language / "LC_MESSAGES" / "llm_course.po"


@cache
def translations(language: str) -> dict[str, str]:
    """``{English text: translation}`` from ``language``'s catalogue (entries not yet translated left out)."""
    if language == "en":
        return {}
    polib = require("polib")
    path = catalogue_path(language)
    if not path.exists():
        raise FileNotFoundError(f"no catalogue for {language!r} at {path}: reinstall the course (pip install -e .)")
    entries = polib.pofile(str(path))
    return {e.msgid: e.msgstr for e in entries if e.msgstr and not e.obsolete and "fuzzy" not in e.flags}


def tr(text: str, /, **fields: object) -> str:
    """``text`` in the current language, with ``{fields}`` filled in. Chapter 01.

    The English ``text`` is the key (gettext's msgid), so a message without a translation is still shown,
    in English. Fields are filled after the lookup, so a translation may put them in another order.
    """
    language = _current[0]
    if language != "en":
        text = translations(language).get(text, text)
    return text.format(**fields) if fields else text


def N_(text: str) -> str:
    """Mark ``text`` as a message to translate without translating it here (gettext's ``N_``): for a
    message chosen among several before ``tr`` is called on it. ``llm-course translate`` collects both."""
    return text


class Message(str):
    """An error message a front end can show in the student's language. Chapter 01.

    ``raise ValueError(Message("the text is {n} tokens long ...", n=...))`` raises the English text (``str``
    of it, for programmers and tracebacks), and a widget that catches the error shows ``localized(error)``:
    the same message in the current language, looked up by its English template like ``tr``.
    """

    msgid: str
    fields: dict[str, object]

    def __new__(cls, text: str, /, **fields: object) -> Message:
        made = super().__new__(cls, text.format(**fields) if fields else text)
        made.msgid, made.fields = text, fields
        return made


def localized(error: BaseException | str) -> str:
    """An exception's message (or a message) in the current language, where it has a translation."""
    value = error.args[0] if isinstance(error, BaseException) and len(error.args) == 1 else error
    if isinstance(value, Message):
        return tr(value.msgid, **value.fields)
    return tr(str(value))
