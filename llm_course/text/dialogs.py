"""Dialogs: the conversations of chatterbot-corpus, as ``Dialog`` objects or as plain text. Chapter 01.

``chatterbot-corpus`` (installed with the course) holds short conversations in YAML files, one folder
per language (``english``, ``russian``, ...) and one file per category (``sports``, ``food``, ...).
The course trains its tokenizer and small chat models on them (chapters 01, 05, 08) and measures what
Russian costs a tokenizer (``llm_course.text.encoding.cyrillic_token_cost``):

* ``dialog_languages()`` / ``dialog_categories(language)``: what there is;
* ``load_dialogs(language, categories)``: the conversations, duplicates dropped, as ``Dialog`` objects
  (``dialog.pairs()``: the (message, reply) pairs a chat bot learns from);
* ``dialog_block(dialog)`` / ``dialogs_text(...)``: the same as text, one turn per line, a blank line
  between dialogs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from llm_course.core.deps import require

__all__ = ["Dialog", "dialog_languages", "dialog_categories", "load_dialogs", "dialog_block", "dialogs_text"]


@dataclass(frozen=True)
class Dialog:
    """One conversation: alternating turns, first speaker first. Chapter 01 (data)."""

    language: str
    category: str
    turns: tuple[str, ...]

    def pairs(self) -> list[tuple[str, str]]:
        """Consecutive (message, reply) pairs: what a chat bot is trained to answer."""
        return list(zip(self.turns, self.turns[1:]))


# yaml.safe_load's loader (plain str/int/list/dict only, never Python objects), in its
# C version when PyYAML was built with libyaml: the same result, about 10x faster.
_SAFE_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _dialog_data_dir() -> Path:
    """``chatterbot_corpus/data``: one folder per language, one YAML file per category."""
    package = require("chatterbot_corpus", "chatterbot-corpus")
    data = Path(package.__file__).parent / "data"
    if not data.is_dir():
        raise FileNotFoundError(
            f"chatterbot-corpus is installed but has no data folder at {data}; "
            "reinstall it: pip install --force-reinstall chatterbot-corpus"
        )
    return data


def dialog_languages() -> list[str]:
    """Languages available in chatterbot-corpus, sorted (``"english"``, ``"russian"``, ...). Chapter 01."""
    data = _dialog_data_dir()
    return sorted(p.name for p in data.iterdir() if p.is_dir() and any(p.glob("*.yml")))


def _language_dir(language: str) -> Path:
    """The folder of ``language``, or a ValueError listing the available languages."""
    if not isinstance(language, str):
        raise TypeError(f"language must be a string such as 'english', got {language!r}")
    languages = dialog_languages()
    if language.strip().lower() not in languages:
        raise ValueError(f"unknown dialog language {language!r}; available: {', '.join(languages)}")
    return _dialog_data_dir() / language.strip().lower()


def dialog_categories(language: str = "english") -> list[str]:
    """Categories (YAML file names) of one language, sorted. Chapter 01 (data).

    Russian has ``conversations``, ``food`` and ``money``; English has about twenty.
    """
    return sorted(p.stem for p in _language_dir(language).glob("*.yml"))


def _clean_turns(conversation: object) -> tuple[str, ...]:
    """A YAML conversation as a tuple of non-empty, stripped strings.

    YAML reads an unquoted ``42`` or ``yes`` as a number or a bool: turns are converted back
    to text. A bare string where a list was expected (a typo in the corpus) is one turn.
    """
    if conversation is None:
        return ()
    if not isinstance(conversation, list):
        conversation = [conversation]
    turns = (str(turn).strip() for turn in conversation if turn is not None)
    return tuple(turn for turn in turns if turn)


def load_dialogs(
    language: str = "english", categories: Sequence[str] | str | None = None, unique: bool = True
) -> list[Dialog]:
    """Conversations of chatterbot-corpus for ``language``. Chapter 01 (data).

    ``categories`` is a list of names from ``dialog_categories(language)`` (a single name is
    accepted too); ``None`` means all, in sorted order. Files are read with the loader of
    ``yaml.safe_load`` (plain data only, never arbitrary Python objects); empty dialogs are
    dropped. Unknown names raise ValueError listing the available ones.

    ``unique=True`` keeps the first copy of a repeated dialog: ``english/tech_support`` is
    10 dialogs repeated 1,050 times, and duplicates would both skew training and leak
    between a training and a validation split. ``unique=False`` keeps the files as they are.
    """
    folder = _language_dir(language)
    available = dialog_categories(language)
    if categories is None:
        chosen = available
    else:
        chosen = [categories] if isinstance(categories, str) else list(dict.fromkeys(categories))
        unknown = [c for c in chosen if c not in available]
        if unknown:
            raise ValueError(
                f"unknown {folder.name} dialog categor{'y' if len(unknown) == 1 else 'ies'} "
                f"{', '.join(map(repr, unknown))}; available: {', '.join(available)}"
            )
    dialogs = []
    for category in chosen:
        path = folder / f"{category}.yml"
        try:
            with open(path, encoding="utf-8") as f:
                content = yaml.load(f, Loader=_SAFE_YAML_LOADER)
        except yaml.YAMLError as err:
            raise ValueError(f"{path} is not plain YAML data ({err}); reinstall chatterbot-corpus") from err
        conversations = content.get("conversations") if isinstance(content, dict) else None
        if not isinstance(conversations, list):
            raise ValueError(f"{path} has no 'conversations' list; reinstall chatterbot-corpus")
        for conversation in conversations:
            turns = _clean_turns(conversation)
            if turns:
                dialogs.append(Dialog(language=folder.name, category=category, turns=turns))
    if unique:
        dialogs = list(dict.fromkeys(dialogs))  # dicts keep insertion order: first copies win
    return dialogs


def dialog_block(dialog: Dialog) -> str:
    """A dialog as text: one turn per line, blank lines inside a turn removed. Chapter 01 (data).

    The unit of ``dialogs_text`` and of the topic dataset (``llm_course.text.tasks.topic_dataset``).
    """
    return "\n".join(re.sub(r"\n(?:[ \t]*\n)+", "\n", turn) for turn in dialog.turns)


def dialogs_text(
    language: str = "english", categories: Sequence[str] | str | None = None, unique: bool = True
) -> str:
    """Dialogs as plain text for tokenizer or LM training. Chapter 01 (data).

    One turn per line, a blank line between dialogs (those of ``load_dialogs`` with the same
    arguments). Blank lines *inside* a turn (a code example in ``english/coding``) are
    removed, so a blank line always means a new dialog.
    """
    return "\n\n".join(dialog_block(d) for d in load_dialogs(language, categories, unique))
