"""English->Russian sentence pairs from the translation catalogues that software ships. Chapter 01.

Programs are translated with gettext: a catalogue (``.po`` text, or ``.mo`` compiled from it) maps each
English message (``msgid``) to its translation (``msgstr``). Django's and Sphinx's wheels, and many
Debian packages (``/usr/share/locale/ru/LC_MESSAGES/*.mo``), ship Russian catalogues: thousands of
short, human-made English->Russian pairs, offline. ``translation_pairs`` turns them into a clean data
set for a translation task (chapter 02's T5 is "text-to-text"; chapter 05's instruction tuning):

* only finished translations: untranslated, ``fuzzy`` (a guess gettext marks for review) and obsolete
  entries are dropped; so are messages over several lines, and targets with no Cyrillic letter;
* plural messages keep ``msgid`` -> ``msgstr[0]`` (Russian's form for 1, 21, 31, ...: a true
  translation of the English singular);
* placeholders (``%s``, ``%(name)s``, ``%d``, ``{name}``, ``{0}``) must be the same multiset in the
  English and the Russian: a pair that loses or invents one would teach a model to break programs;
* each English message is kept once (its first translation), and a pair is held out for validation
  by a hash of its English text (``is_held_out``), so the split never depends on which files were read.

``TranslationPairs.dropped`` counts what was dropped and why.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llm_course.core.checks import check_fraction
from llm_course.core.deps import require
from llm_course.text.manpages import is_held_out

__all__ = ["TranslationPair", "TranslationPairs", "placeholders", "catalogue_files", "translation_pairs"]

# Why a catalogue entry is not a pair (the keys of TranslationPairs.dropped), in the order checked.
DROP_REASONS = ("obsolete", "fuzzy", "untranslated", "multiline", "not_russian", "placeholders", "duplicate")

# printf-style: %s, %d, %5.2f, %1$s, %lu, %(name)s; "%%" is a literal percent sign, not a placeholder.
_PRINTF = r"%(?:\([^)]*\))?(?:\d+\$)?[-+ #0']*(?:\d+|\*)?(?:\.(?:\d+|\*))?(?:hh|h|ll|l|L|q|j|z|t)?[diouxXeEfFgGaAcsprn]"
# str.format: {}, {0}, {name}, {name!r}, {0:.2f}, {user.name}; "{{" and "}}" are literal braces.
_FORMAT = r"\{[A-Za-z_0-9]*(?:[.\[][^{}:!]*)?(?:![rsa])?(?::[^{}]*)?\}"
_PLACEHOLDER = re.compile(f"%%|{{{{|}}}}|{_PRINTF}|{_FORMAT}")
_CYRILLIC = re.compile("[\u0400-\u04ff]")


def placeholders(message: str) -> Counter[str]:
    """The placeholders of ``message`` as a multiset: ``"%s of %(n)d {x}"`` -> ``{"%s": 1, "%(n)d": 1, "{x}": 1}``.

    Chapter 01 (data). Literal ``%%``, ``{{`` and ``}}`` are not placeholders.
    """
    if not isinstance(message, str):
        raise TypeError(f"message must be a str, got {type(message).__name__}")
    return Counter(m for m in _PLACEHOLDER.findall(message) if m not in ("%%", "{{", "}}"))


@dataclass(frozen=True)
class TranslationPair:
    """One English message and its Russian translation; ``origin`` is the catalogue file. Chapter 01."""

    source: str
    target: str
    origin: str = ""


@dataclass(frozen=True, repr=False)
class TranslationPairs:
    """Pairs split into ``train`` and ``val`` by a hash of the English text, and what was dropped. Chapter 01.

    ``dropped`` maps each reason of ``DROP_REASONS`` to how many catalogue entries it removed;
    ``files`` are the catalogues read, in order.
    """

    train: list[TranslationPair]
    val: list[TranslationPair]
    dropped: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    @property
    def pairs(self) -> list[TranslationPair]:
        """All pairs kept, training ones first."""
        return self.train + self.val

    def __repr__(self) -> str:
        dropped = ", ".join(f"{k}={v:,}" for k, v in self.dropped.items() if v)
        return (f"TranslationPairs(train={len(self.train):,}, val={len(self.val):,}, files={len(self.files)}, "
                f"dropped: {dropped or 'none'})")


def _is_language_folder(part: str, language: str) -> bool:
    return part == language or part.startswith(language + "_")  # "ru" or "ru_RU"


def catalogue_files(paths: str | Path | Sequence[str | Path], language: str = "ru") -> list[Path]:
    """The gettext catalogues in ``paths``: files as given, folders searched for ``language``'s. Chapter 01.

    In a folder, a ``.po`` or ``.mo`` file counts if a folder on its path (below the given one, or the
    given one itself) is named ``language`` or ``language_XX`` (``ru``, ``ru_RU``), as in
    ``locale/ru/LC_MESSAGES/django.po``. Where both ``x.po`` and ``x.mo`` exist, only the ``.po`` is
    read (it still has its fuzzy flags; the ``.mo`` is compiled from it). Sorted, without repeats.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            for file in sorted(path.rglob("*")):
                if file.suffix not in (".po", ".mo") or not file.is_file():
                    continue
                parts = file.resolve().parent.parts
                if not any(_is_language_folder(p, language) for p in parts):
                    continue
                if file.suffix == ".mo" and file.with_suffix(".po").is_file():
                    continue
                found.append(file)
        else:
            raise FileNotFoundError(f"no catalogue file or folder at {path}")
    return list(dict.fromkeys(found))


def _read_catalogue(path: Path) -> list:
    """The entries of one ``.po`` or ``.mo`` file, read with polib (obsolete entries included)."""
    polib = require("polib")
    try:
        catalogue = polib.mofile(str(path)) if path.suffix == ".mo" else polib.pofile(str(path))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not a gettext catalogue polib can read ({err})") from err
    return list(catalogue)


def _entry_pair(entry) -> tuple[str | None, str]:
    """``(target, "")`` for a usable entry, else ``(None, reason)``; the target of a plural is ``msgstr[0]``."""
    if entry.obsolete:
        return None, "obsolete"
    if "fuzzy" in entry.flags:
        return None, "fuzzy"
    target = entry.msgstr_plural.get(0, "") if entry.msgid_plural else entry.msgstr
    if not target.strip():
        return None, "untranslated"
    if "\n" in entry.msgid or "\n" in target:
        return None, "multiline"
    if not _CYRILLIC.search(target):
        return None, "not_russian"
    if placeholders(entry.msgid) != placeholders(target):
        return None, "placeholders"
    return target, ""


def translation_pairs(paths: str | Path | Sequence[str | Path], val_fraction: float = 0.1,
                      language: str = "ru") -> TranslationPairs:
    """English->Russian pairs from gettext catalogues, cleaned and split. Chapter 01 (data).

    ``paths``: catalogue files (``.po``/``.mo``) or folders holding them (see ``catalogue_files``).
    Entries are read in file order; the header entry (empty ``msgid``) is skipped. An entry is dropped,
    for the first reason that applies: ``obsolete``, ``fuzzy``, ``untranslated`` (empty translation),
    ``multiline`` (a line break in the English or the Russian), ``not_russian`` (no Cyrillic letter in
    the translation: ``"URL"`` -> ``"URL"``), ``placeholders`` (the multisets of ``placeholders()``
    differ), ``duplicate`` (the English message was already paired: the first translation wins).
    Plural entries pair ``msgid`` with ``msgstr[0]``. A pair is held out when
    ``is_held_out(source, val_fraction)``; both parts keep the reading order.
    """
    val_fraction = check_fraction("val_fraction", val_fraction, hint="the share of the pairs held out")
    files = catalogue_files(paths, language)
    dropped = dict.fromkeys(DROP_REASONS, 0)
    kept: dict[str, TranslationPair] = {}
    for file in files:
        for entry in _read_catalogue(file):
            if not entry.msgid:
                continue  # the header: the catalogue's metadata, not a message
            target, reason = _entry_pair(entry)
            if target is not None and entry.msgid in kept:
                reason = "duplicate"
            if reason:
                dropped[reason] += 1
                continue
            kept[entry.msgid] = TranslationPair(source=entry.msgid, target=target, origin=str(file))
    train = [p for p in kept.values() if not is_held_out(p.source, val_fraction)]
    val = [p for p in kept.values() if is_held_out(p.source, val_fraction)]
    return TranslationPairs(train=train, val=val, dropped=dropped, files=[str(f) for f in files])
