"""The course's English prose corpus: the Python standard library's own documentation. Chapter 01.

Chapters 01-09 train tokenizers and language models offline, so the training text has to ship with
Python itself. ``docs_corpus()`` is that text: the pydoc topics (the language reference) and every
docstring of the standard library of at least ``MIN_DOCSTRING_CHARS`` characters, one ``Document`` each,
read by parsing the source (nothing is imported) and cached under ``cache_dir()``. It comes as a
``TextCorpus``: a train and a validation string, cut at a document boundary.

* ``Document`` / ``docs_documents()``: the documents with their kind, module and name;
* ``first_sentence(text)``: a document's first sentence (chapter 08's summaries are built from it);
* ``docs_corpus(val_fraction)``: the corpus as one ``TextCorpus``;
* ``train_val_split(items, val_fraction, seed)``: the same seeded split for any list of examples.

The conversations of chatterbot-corpus are in ``llm_course.text.dialogs``; checkable synthetic tasks in
``llm_course.text.tasks``.
"""

from __future__ import annotations

import ast
import bisect
import hashlib
import inspect
import json
import os
import platform
import random
import re
import sys
import sysconfig
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from llm_course.core.checks import check_fraction, check_int
from llm_course.core.paths import cache_dir

__all__ = ["train_val_split", "TextCorpus", "Document", "docs_corpus", "docs_documents", "first_sentence"]

T = TypeVar("T")


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to a temporary file beside ``path``, then rename it over ``path``.

    ``os.replace`` is atomic: a reader (another notebook, a crashed run) sees either the old
    file or the complete new one, never half a file.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def train_val_split(
    items: Sequence[T], val_fraction: float = 0.1, seed: int = 0
) -> tuple[list[T], list[T]]:
    """Split ``items`` at random into (train, val), the same way for the same seed. Chapter 01.

    ``round(len(items) * val_fraction)`` items go to validation, chosen with
    ``random.Random(seed)``; both parts keep the items' original order. Used by later
    chapters to hold out synthetic examples or dialogs.
    """
    val_fraction = check_fraction("val_fraction", val_fraction, hint="the share of the items kept for validation")
    check_int("seed", seed, minimum=0)
    items = list(items)
    n_val = round(len(items) * val_fraction)
    val_indices = set(random.Random(seed).sample(range(len(items)), n_val))
    train = [x for i, x in enumerate(items) if i not in val_indices]
    val = [x for i, x in enumerate(items) if i in val_indices]
    return train, val


# ----------------------------------------------------------------------------------------
# Prose: the standard library's documentation
# ----------------------------------------------------------------------------------------

MIN_DOCSTRING_CHARS = 80  # shorter docstrings ("Return self.") teach a model little prose
DOC_SEPARATOR = "\n\n"  # between documents in the corpus text
_CACHE_FORMAT = 1  # bump when the construction changes, so stale caches are ignored

# Folders of the standard library that are not documentation of the library itself.
_SKIPPED_DIRS = frozenset(
    {"test", "tests", "idlelib", "lib2to3", "site-packages", "__pycache__", "ensurepip", "turtledemo"}
)

_DEFINITIONS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


@dataclass(frozen=True)
class Document:
    """One entry of the standard library's documentation. Chapter 01 (data).

    ``kind`` is ``"topic"`` (a ``help()`` reference topic), ``"module"``, ``"class"`` or
    ``"function"`` (methods included). ``name`` is the qualified name (``"json.JSONDecoder.decode"``;
    the topic key such as ``"assert"`` for topics), ``title`` a human heading (the topic's own
    heading, e.g. ``'The "assert" statement'``, or the qualified name), ``text`` the cleaned
    text and ``path`` the source file relative to the standard library folder.
    """

    kind: str
    name: str
    title: str
    text: str
    path: str

    @property
    def body(self) -> str:
        """The text without its reST heading (topics start with a title line and an underline)."""
        lines = self.text.split("\n")
        if len(lines) > 2 and re.fullmatch(r"([*=\-~^#])\1+", lines[1]):
            return "\n".join(lines[2:]).strip()
        return self.text

    @property
    def summary(self) -> str:
        """The body's first sentence: a natural (text -> summary) pair for later chapters."""
        return first_sentence(self.body)

    def __repr__(self) -> str:
        preview = self.text[:60].replace("\n", " ")
        return f"Document(kind={self.kind!r}, name={self.name!r}, text={preview!r}... {len(self.text):,} chars)"


def first_sentence(text: str) -> str:
    """The first sentence of ``text``'s first paragraph, on one line. Chapter 01 (data).

    A sentence ends at ``.``, ``!`` or ``?`` followed by white space and a capital letter,
    a digit, a quote or an opening bracket (so ``"e.g. the"`` does not end one), or at the end of
    the paragraph. Docstring summary lines without a full stop are returned whole.
    """
    paragraph = text.strip().split("\n\n", 1)[0]
    flat = " ".join(paragraph.split())
    end = re.search(r"[.!?](?=\s+[A-Z0-9\"'(\[]|$)", flat)
    return flat[: end.end()] if end else flat


@dataclass(frozen=True, repr=False)
class TextCorpus:
    """A text split into training and validation parts. Chapter 01 (data).

    ``train + val == text``: the validation part is the *end* of the text, cut at a
    document boundary, so no document is half in training and half in validation (a model
    must not have seen the beginning of a validation document). ``source`` says where the
    text came from.
    """

    train: str
    val: str
    source: str = ""

    @property
    def text(self) -> str:
        """The whole text, training part first."""
        return self.train + self.val

    def __repr__(self) -> str:
        # Never print two megabytes into a notebook: show sizes only.
        return (
            f"TextCorpus(train={len(self.train):,} chars, val={len(self.val):,} chars, "
            f"source={self.source!r})"
        )


def _stdlib_root() -> Path:
    """The folder holding the standard library's ``.py`` files."""
    root = Path(sysconfig.get_paths()["stdlib"])
    if not (root / "os.py").is_file():
        raise FileNotFoundError(
            f"the Python standard library sources were not found in {root} (no os.py there); "
            "this Python seems to be installed without its .py files. Use a full Python "
            "installation (python.org, pyenv, conda, Colab) to build the docs corpus."
        )
    return root


def _stdlib_source_files(root: Path) -> list[str]:
    """Relative POSIX paths of the library's ``.py`` files, sorted, test suites etc. skipped.

    Folders whose names are not identifiers (``config-3.11-x86_64-linux-gnu``,
    ``lib-dynload``) cannot be packages, so they are skipped too.
    """
    files = []
    for folder, subfolders, filenames in os.walk(root):
        # Pruning ``subfolders`` in place stops os.walk from descending into them.
        subfolders[:] = [d for d in subfolders if d not in _SKIPPED_DIRS and d.isidentifier()]
        rel = Path(folder).relative_to(root)
        files += [(rel / f).as_posix() for f in filenames if f.endswith(".py")]
    return sorted(files)


def _module_name(rel_path: str) -> str:
    """``"json/decoder.py"`` -> ``"json.decoder"``; ``"json/__init__.py"`` -> ``"json"``."""
    parts = rel_path[: -len(".py")].split("/")
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _clean_docstring(node: ast.AST) -> str | None:
    """The node's docstring, dedented with ``inspect.cleandoc`` (as ``help()`` shows it)."""
    raw = ast.get_docstring(node, clean=False)
    if raw is None:
        return None
    return inspect.cleandoc(raw.replace("\r\n", "\n")).strip()


def _definitions(node: ast.AST) -> Iterator[ast.AST]:
    """Classes and functions defined directly in ``node``, in source order.

    Looks inside ``if``/``try``/``with`` blocks (``if sys.platform == "win32": def ...``) but
    not inside another definition: those are found when that definition is visited.
    """
    for child in ast.iter_child_nodes(node):
        if isinstance(child, _DEFINITIONS):
            yield child
        else:
            yield from _definitions(child)


def _module_documents(tree: ast.Module, module: str, rel_path: str) -> Iterator[Document]:
    """The module's, its classes' and its functions' docstrings, in source order."""

    def visit(node: ast.AST, qualname: str, kind: str) -> Iterator[Document]:
        doc = _clean_docstring(node)
        if doc is not None and len(doc) > MIN_DOCSTRING_CHARS:
            yield Document(kind=kind, name=qualname, title=qualname, text=doc, path=rel_path)
        # Like Python's __qualname__: a function's inner definitions live in "<locals>".
        prefix = f"{qualname}.<locals>" if kind == "function" else qualname
        for child in _definitions(node):
            child_kind = "class" if isinstance(child, ast.ClassDef) else "function"
            yield from visit(child, f"{prefix}.{child.name}", child_kind)

    yield from visit(tree, module, "module")


def _topic_documents() -> list[Document]:
    """The reference topics ``help("assert")`` shows, sorted by key.

    ``pydoc_data.topics`` is a plain data module (one big dict of strings): importing it
    runs no code, unlike importing the modules whose docstrings we read.
    """
    from pydoc_data.topics import topics

    docs = []
    for key in sorted(topics):
        text = topics[key].strip()
        heading = text.split("\n", 1)[0].strip()
        docs.append(Document(kind="topic", name=key, title=heading, text=text, path="pydoc_data/topics.py"))
    return docs


def _build_documents() -> list[Document]:
    """Build the documents from scratch (a few seconds: it parses ~600 source files)."""
    root = _stdlib_root()
    docs = _topic_documents()
    for rel_path in _stdlib_source_files(root):
        source = (root / rel_path).read_bytes()  # bytes: ast honours "# -*- coding: ... -*-"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. "invalid escape sequence" in old files
                tree = ast.parse(source, filename=rel_path)
        except (SyntaxError, ValueError):
            continue  # a file this Python cannot parse (none in CPython 3.11) is not prose
        docs.extend(_module_documents(tree, _module_name(rel_path), rel_path))
    return docs


_DOCUMENTS: list[Document] | None = None  # built once per process


def docs_documents() -> list[Document]:
    """Every documentation entry, topics first, then modules by sorted path. Chapter 01 (data).

    Built once per process by parsing the standard library (nothing is imported but the
    data module ``pydoc_data.topics``); the order is deterministic: topics sorted by key,
    then source files in sorted path order, each in source order (module docstring, then
    classes and functions as they appear). Returns a new list each call.
    """
    global _DOCUMENTS
    if _DOCUMENTS is None:
        _DOCUMENTS = _build_documents()
    return list(_DOCUMENTS)


def _join_documents(texts: Sequence[str]) -> tuple[str, list[int]]:
    """Join texts with ``DOC_SEPARATOR``; also return where each one starts in the result."""
    starts, position = [], 0
    for text in texts:
        starts.append(position)
        position += len(text) + len(DOC_SEPARATOR)
    return DOC_SEPARATOR.join(texts), starts


def _split_point(text: str, starts: Sequence[int], val_fraction: float) -> int:
    """Where validation begins: the first document whose separator lies at/after the cut.

    The cut is at ``(1 - val_fraction) * len(text)`` characters. Validation starts with the
    first document whose preceding ``"\\n\\n"`` begins at or after that point, so the
    separator stays at the end of the training part. If no document starts late enough (the
    last document alone is longer than the validation share), validation is the last document.
    """
    if val_fraction == 0 or len(starts) < 2:
        return len(text)
    cut = (1.0 - val_fraction) * len(text)
    # starts is increasing; find the first start s with s - len(separator) >= cut.
    i = bisect.bisect_left(starts, cut + len(DOC_SEPARATOR))
    return starts[min(max(i, 1), len(starts) - 1)]


def _cache_paths() -> tuple[Path, Path]:
    """The cached corpus text and its index, keyed by the Python version."""
    key = f"docs-{sys.implementation.name}-{platform.python_version()}-v{_CACHE_FORMAT}"
    folder = cache_dir()
    return folder / f"{key}.txt", folder / f"{key}.json"


def _read_cache() -> tuple[str, list[int]] | None:
    """The cached (text, document starts), or None if missing, empty or inconsistent.

    The index records the text's length, SHA-256 and where each document starts; a text
    file that does not match it (truncated, edited, empty) is not trusted.
    """
    try:
        text_path, index_path = _cache_paths()
        text = text_path.read_text(encoding="utf-8")
        index = json.loads(index_path.read_text(encoding="utf-8"))
        starts = index["starts"]
        ok = (
            len(text) > 0
            and index["chars"] == len(text)
            and index["sha256"] == hashlib.sha256(text.encode("utf-8")).hexdigest()
            and isinstance(starts, list)
            and starts[:1] == [0]
            and all(isinstance(s, int) for s in starts)
            and all(a < b for a, b in zip(starts, starts[1:]))
            and all(text[s - len(DOC_SEPARATOR) : s] == DOC_SEPARATOR for s in starts[1:])
        )
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None
    return (text, starts) if ok else None


def _write_cache(text: str, starts: list[int]) -> None:
    """Save the text (plain UTF-8) and its index (JSON), each written atomically."""
    index = {
        "python": platform.python_version(),
        "format": _CACHE_FORMAT,
        "chars": len(text),
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "starts": starts,
    }
    try:
        text_path, index_path = _cache_paths()
        _write_atomically(text_path, text)
        _write_atomically(index_path, json.dumps(index))
    except OSError as err:  # a read-only home folder must not stop the lesson
        warnings.warn(
            f"could not cache the docs corpus ({err}); set LLM_COURSE_CACHE to a writable folder "
            "to avoid rebuilding it next time",
            stacklevel=3,
        )


def docs_corpus(val_fraction: float = 0.1, cache: bool = True) -> TextCorpus:
    """English prose: the standard library's documentation as one text. Chapter 01 (data).

    The documents of ``docs_documents()`` joined by blank lines (``"\\n\\n"``); about 1.9 M
    characters on CPython 3.11. The last ``val_fraction`` of the characters is the
    validation part, cut at a document boundary at or after the ``1 - val_fraction`` point.

    With ``cache=True`` the text is read from (or, the first time, written to)
    ``cache_dir()``, keyed by the Python version; a damaged cache is rebuilt.
    """
    val_fraction = check_fraction("val_fraction", val_fraction, hint="the share of the text kept for validation")
    cached = _read_cache() if cache else None
    if cached is None:
        text, starts = _join_documents([d.text for d in docs_documents()])
        if cache:
            _write_cache(text, starts)
    else:
        text, starts = cached
    split = _split_point(text, starts, val_fraction)
    source = f"Python {platform.python_version()} standard library docs (pydoc topics + docstrings)"
    return TextCorpus(train=text[:split], val=text[split:], source=source)
