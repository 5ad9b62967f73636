"""A bilingual training text: English documentation and Russian manual pages, each with its held-out part. Chapter 01.

Today's course models learn English from the Python documentation (about 1.7 M characters) and Russian
from the chatterbot dialogs alone (about 3 K characters): a tokenizer trained on that text learns
almost no Cyrillic merges, and Russian costs it about two tokens per letter
(``llm_course.text.encoding.cyrillic_token_cost``). ``bilingual_corpus()`` adds Russian prose of the
same size, Debian's Russian manual pages (``llm_course.text.manpages``):

* English: ``docs_corpus()`` (its own split: the last tenth of the text) and, for training only, the
  English chatterbot dialogs;
* Russian: ``manpages_corpus()`` (held-out pages chosen by a hash of their names) and, for training
  only, the Russian chatterbot dialogs.

``corpus.train`` is the text a tokenizer or a language model trains on; ``corpus.languages`` keeps each
language's own ``TextCorpus``, so a model is scored on each language's held-out text separately.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llm_course.core.checks import check_bool, check_fraction
from llm_course.text.corpora import TextCorpus, docs_corpus
from llm_course.text.dialogs import dialogs_text
from llm_course.text.manpages import manpages_corpus

__all__ = ["BilingualCorpus", "bilingual_corpus"]

SEPARATOR = "\n\n"  # between the parts of the training text, as between documents


@dataclass(frozen=True, repr=False)
class BilingualCorpus:
    """English and Russian text, each split into training and held-out parts. Chapter 01 (data).

    ``languages`` maps ``"english"`` and ``"russian"`` to a ``TextCorpus`` (dialogs, when included,
    are at the end of its ``train``); ``train`` is the whole training text, English first. Like a
    ``TextCorpus`` it has ``train``, ``val`` (both held-out parts, English first) and ``source``.
    """

    languages: dict[str, TextCorpus]

    @property
    def train(self) -> str:
        """The training text of every language, joined by a blank line."""
        return SEPARATOR.join(c.train.rstrip("\n") for c in self.languages.values())

    @property
    def val(self) -> str:
        """The held-out text of every language, joined by a blank line (score each language on its own)."""
        return SEPARATOR.join(c.val for c in self.languages.values())

    @property
    def source(self) -> str:
        return "; ".join(f"{language}: {c.source}" for language, c in self.languages.items())

    def sizes(self) -> dict[str, dict[str, int]]:
        """Characters per language and part: ``{"english": {"train": ..., "val": ...}, ...}``."""
        return {language: {"train": len(c.train), "val": len(c.val)} for language, c in self.languages.items()}

    def __repr__(self) -> str:
        parts = ", ".join(f"{language}: train {s['train']:,} / val {s['val']:,} chars"
                          for language, s in self.sizes().items())
        return f"BilingualCorpus({parts})"


def _with_dialogs(corpus: TextCorpus, dialogs: str, source: str) -> TextCorpus:
    """``corpus`` with ``dialogs`` appended to its training part only."""
    train = corpus.train.rstrip("\n") + SEPARATOR + dialogs if dialogs else corpus.train
    return TextCorpus(train=train, val=corpus.val, source=f"{corpus.source} + {source}")


def bilingual_corpus(val_fraction: float = 0.1, dialogs: bool = True,
                     manpages_folder: str | Path | None = None) -> BilingualCorpus:
    """English docs + Russian manual pages (+ chatterbot dialogs), split per language. Chapter 01 (data).

    English: ``docs_corpus(val_fraction)``; Russian: ``manpages_corpus(val_fraction, manpages_folder)``.
    With ``dialogs=True`` each language's chatterbot dialogs (``dialogs_text(language)``) are added to
    its training part: the chat models learn from them (chapters 05 and 08), and they are never held
    out here (the chat tuning holds out its own). A missing manual folder is a FileNotFoundError that
    says which package to install.
    """
    val_fraction = check_fraction("val_fraction", val_fraction, hint="the share of each language held out")
    dialogs = check_bool("dialogs", dialogs, hint="whether to add the chatterbot dialogs to the training text")
    english, russian = docs_corpus(val_fraction), manpages_corpus(val_fraction, manpages_folder)
    if dialogs:
        english = _with_dialogs(english, dialogs_text("english"), "English chatterbot dialogs")
        russian = _with_dialogs(russian, dialogs_text("russian"), "Russian chatterbot dialogs")
    return BilingualCorpus(languages={"english": english, "russian": russian})
