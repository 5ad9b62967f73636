"""Russian prose: Debian's Russian manual pages, read from their roff source. Chapter 01.

The course's English corpus is the Python documentation (``llm_course.text.corpora``); its Russian
counterpart has to be just as offline. Debian's ``manpages-ru`` package (plus the Russian pages that
``man-db``, ``passwd``, ``vim`` and others ship) installs about 300 translated manual pages under
``/usr/share/man/ru``: technical prose about files, commands and system calls, in UTF-8 roff.

A manual page is a program for the ``roff`` typesetter, not text: ``.SH ИМЯ`` is a section title,
``\\fBls\\fR`` prints "ls" in bold, ``\\(em`` is a dash. ``roff_to_text`` turns it into plain paragraphs
without running ``groff``:

* comments (``.\\"``, ``\\"``), layout requests (``.PP``, ``.RS``, ``.in``, ``.sp``) and macro
  definitions (``.de`` ... ``..``) are dropped; tables (``.TS`` ... ``.TE``) are dropped too;
* macros whose arguments are text keep them (``.SH``, ``.B``, ``.BR``, ``.IR``, ``.TP`` tags, ...);
* escapes become the characters they print (``\\-`` -> ``-``, ``\\(lq`` -> ``“``, ``\\[u0435]`` -> ``е``)
  or nothing (fonts ``\\fB``, sizes ``\\s-1``, motions ``\\h'...'``);
* lines in fill mode are joined into paragraphs; ``.nf``/``.EX`` blocks keep their lines.

``manpage_documents()`` gives one ``ManPage`` per page; ``manpages_corpus()`` the text as a
``TextCorpus`` whose held-out pages are chosen by a hash of the page's name (``is_held_out``), so the
split never changes when pages are added or removed.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llm_course.core.checks import check_fraction
from llm_course.text.corpora import TextCorpus

__all__ = ["MANPAGES_DIR", "ManPage", "roff_to_text", "manpage_documents", "is_held_out", "manpages_corpus"]

MANPAGES_DIR = Path("/usr/share/man/ru")
DOC_SEPARATOR = "\n\n"  # between pages in the corpus text (as in docs_corpus)
MIN_PAGE_CHARS = 200  # shorter pages are stubs (".so" links to another page) or empty translations

_INSTALL_HINT = (
    "install Debian's Russian manual pages: sudo apt-get install manpages-ru "
    "(on a Debian/Ubuntu 'slim' image, first remove the path-exclude of /usr/share/man in /etc/dpkg/dpkg.cfg.d)"
)

# ------------------------------------------------------------------------------------------------
# Escapes: \X, \(xx, \[name], \*(xx (strings), \fB (fonts), \s-1 (sizes), \h'..' (motions), ...
# ------------------------------------------------------------------------------------------------

# Named characters (groff_char(7)) that Russian manual pages use, and a few common ones.
_GLYPHS = {
    "em": "—", "en": "–", "hy": "-", "mi": "-", "lq": "“", "rq": "”", "oq": "‘", "cq": "’", "dq": '"',
    "aq": "'", "bu": "•", "co": "©", "rg": "®", "tm": "™", "mu": "×", "di": "÷", "de": "°", "+-": "±",
    "Fo": "«", "Fc": "»", "fo": "‹", "fc": "›", "ha": "^", "ti": "~", "ga": "`", "aa": "´", "bv": "|",
    "ba": "|", "rs": "\\", "sl": "/", "<=": "≤", ">=": "≥", "!=": "≠", "->": "→", "<-": "←", "ua": "↑",
    "da": "↓", "sc": "§", "ps": "¶", "Eu": "€", "eu": "€", "mc": "µ", "pc": "·", "lB": "[", "rB": "]",
    "lC": "{", "rC": "}", "la": "⟨", "ra": "⟩", "at": "@", "sh": "#", "Do": "$", "ou": "‰", "shc": "",
    "dg": "†", "ss": "ß", "oe": "œ", "ae": "æ", "em-": "—", "or": "|", "no": "¬", "12": "½", "14": "¼",
}
# Predefined strings (\*(Aq, \*R): the man macros' own, before a page defines more with .ds.
_STRINGS = {"Aq": "'", "lq": "“", "rq": "”", "R": "®", "Tm": "™", "-": "—", "S": "", "HF": "", "softhyphen": ""}
# One-character escapes that print nothing: zero-width marks, breaks, hyphenation points, braces.
_SILENT = set("&|^:/,%){}acdpu!")

_NAME = r"(?:\[[^\]]*\]|\(..|.)"  # an escape's name: \*X, \*(XX or \*[long name]
_ESCAPE = re.compile(
    r"\\(?:"
    rf"(?P<font>[fFmM]{_NAME})"  # font or colour change: no text
    r"|(?P<size>s(?:[-+]?\d|[-+]?\(\d\d|\([-+]?\d\d|\[[^\]]*\]|'[^']*'))"  # point size: no text
    rf"|\*(?P<string>{_NAME})"  # an interpolated string
    rf"|(?P<register>n[-+]?{_NAME})"  # a number register: not prose
    r"|\((?P<glyph2>..)|\[(?P<glyph>[^\]]*)\]"  # named characters
    r"|(?P<quoted>[hvwlLDoXZbxHSRAN])'(?P<argument>[^']*)'"  # motions, widths, drawing; \N'65' a code
    rf"|(?P<other>[kz$gVYO]{_NAME})"  # marks, registers, macro arguments: no text
    r"|(?P<char>.)"  # one character: \- \e \& \  ...
    r")",
    re.S,
)


def _glyph(name: str) -> str:
    """A named character: ``em`` -> ``—``; ``u0435`` (a Unicode code point) -> ``е``; unknown -> nothing."""
    if re.fullmatch(r"u[0-9A-Fa-f]{4,6}(?:_[0-9A-Fa-f]{4,6})*", name):
        return "".join(chr(int(code, 16)) for code in name[1:].split("_"))
    return _GLYPHS.get(name, "")


def _strip_name(name: str) -> str:
    """``(xx`` -> ``xx``, ``[long]`` -> ``long``, ``x`` -> ``x``."""
    return name[1:] if name.startswith("(") else name[1:-1] if name.startswith("[") else name


def _strip_comment(line: str) -> str:
    """``line`` up to its first ``\\"`` or ``\\#`` comment (an escaped backslash ``\\\\"`` is not one)."""
    for m in re.finditer(r"\\(.)", line):
        if m.group(1) in '"#':
            return line[: m.start()]
    return line


# ------------------------------------------------------------------------------------------------
# Requests and macros
# ------------------------------------------------------------------------------------------------

_PARAGRAPH = {"PP", "LP", "P", "HP", "sp", "bp", "SY", "YS", "RS", "RE"}
_ALTERNATING = {"BR", "RB", "BI", "IB", "IR", "RI"}  # alternating fonts: arguments joined without spaces
_WORDS = {"B", "I", "SM", "SB"}  # one font: arguments joined with spaces
_BLOCKS = {"TS": "TE", "de": "..", "ig": "..", "am": "..", "EQ": "EN", "PS": "PE"}  # skipped up to the end line


# An argument: "quoted" (a doubled "" inside is one quote; a missing closing quote ends at the line's
# end) or a run of non-blanks, where an escaped blank "\ " does not end it.
_ARGUMENT = re.compile(r'"((?:[^"]|"")*)(?:"|$)|((?:\\.|[^\s\\])+)')


def _split_arguments(text: str) -> list[str]:
    """A request's arguments: ``.BR "two words" (1)`` -> ``["two words", "(1)"]``."""
    return [m.group(2) if m.group(1) is None else m.group(1).replace('""', '"') for m in _ARGUMENT.finditer(text)]


class _Writer:
    """Collects output lines: words fill a line, breaks end it, paragraphs leave a blank line."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.current = ""
        self.glue = False  # the previous text ended with \c: the next one continues the same word

    def words(self, text: str) -> None:
        text = " ".join(text.split())
        if not text:
            return
        if self.current and not self.glue:
            self.current += " "
        self.current += text
        self.glue = False

    def line_break(self) -> None:
        if self.current:
            self.lines.append(self.current)
        self.current, self.glue = "", False

    def paragraph(self) -> None:
        self.line_break()
        if self.lines and self.lines[-1]:
            self.lines.append("")

    def verbatim(self, text: str) -> None:
        self.line_break()
        self.lines.append(text.rstrip())

    def text(self) -> str:
        self.line_break()
        return re.sub(r"\n{3,}", "\n\n", "\n".join(self.lines)).strip()


class _RoffReader:
    """Reads one page's roff source line by line into a ``_Writer`` (see ``roff_to_text``)."""

    def __init__(self, source: str) -> None:
        # A line ending in an unescaped backslash continues on the next one.
        source = re.sub(r"(?<!\\)((?:\\\\)*)\\\n", r"\1", source.replace("\r\n", "\n"))
        self.lines: Iterator[str] = iter(source.split("\n"))
        self.out = _Writer()
        self.strings = dict(_STRINGS)
        self.macros: set[str] = set()  # macros the page defines itself (.de q): their arguments are text
        self.fill = True
        self.tag = False  # the next text is a .TP tag: it gets a line of its own
        self.heading = False  # the next text is a .SH/.SS title without arguments
        self.url: str | None = None  # the target of an open .UR/.MT link
        self.link_text = False  # did the open link show any text?
        self.otherwise: list[bool] = []  # .ie conditions waiting for their .el

    # -- escapes ------------------------------------------------------------------------------
    def escapes(self, text: str) -> str:
        """``text`` with every escape replaced by what it prints."""
        return _ESCAPE.sub(self._escape, text)

    def _escape(self, m: re.Match) -> str:
        if m.group("string") is not None:
            return self.escapes(self.strings.get(_strip_name(m.group("string")), ""))
        if m.group("glyph2") is not None or m.group("glyph") is not None:
            return _glyph(m.group("glyph2") or m.group("glyph") or "")
        if m.group("quoted") == "N" and m.group("argument").isdigit():
            return chr(int(m.group("argument")))
        char = m.group("char")
        if m.group("quoted") == "h":
            return "" if m.group("argument").lstrip().startswith("-") else " "  # a move right is a blank
        if char is None:
            return ""  # fonts, sizes, registers, motions, widths: nothing a reader sees
        if char in "e\\":
            return "\\"
        if char in " ~0":
            return " "
        if char == "t":
            return "\t"
        return "" if char in _SILENT else char  # \- -> "-", \. -> ".", \' -> "'", an unknown \X -> "X"

    # -- text ---------------------------------------------------------------------------------
    def emit(self, raw: str) -> None:
        """A text line (or a macro's text argument): escapes resolved, then filled or kept as it is."""
        text = self.escapes(raw)
        # "\c" at the end: the next text continues this word, unless a motion already left a blank
        continues = bool(re.search(r"(?<!\\)(?:\\\\)*\\c\s*$", raw)) and not text[-1:].isspace()
        if self.url is not None and text.strip():
            self.link_text = True
        if not self.fill:
            self.out.verbatim(text)
        elif not text.strip():
            if not raw.strip():
                self.out.paragraph()  # a blank line in fill mode is a paragraph break
            return
        else:
            if raw[:1] in " \t":
                self.out.line_break()  # a line that starts with a blank starts a new output line
            self.out.words(text)
        self.out.glue = continues
        if self.heading or self.tag:
            self.out.paragraph() if self.heading else self.out.line_break()
            self.heading = self.tag = False

    # -- requests -----------------------------------------------------------------------------
    def skip_until(self, end: str) -> None:
        """Drop lines up to and including the control line ``.end`` (a table, a macro definition)."""
        pattern = re.compile(r"\.\.(?:\s|$)" if end == ".." else rf"[.']\s*{re.escape(end)}(?:\s|$)")
        for line in self.lines:
            if pattern.match(line):
                return

    def skip_block(self, body: str) -> None:
        """Drop a false condition's ``\\{ ... \\}`` block, nested blocks included."""
        depth = body.count("\\{") - body.count("\\}")
        while depth > 0:
            line = next(self.lines, None)
            if line is None:
                return
            depth += line.count("\\{") - line.count("\\}")

    def condition(self, rest: str) -> tuple[bool, str]:
        """Evaluate ``.if``'s condition: ``n`` (true: we format for a terminal), ``t`` (false), ``\\n(.g``
        (true: groff), ``'a'b'`` (string equality), each negated by ``!``; anything else is false."""
        rest = rest.lstrip()
        negate = rest.startswith("!")
        rest = rest[1:] if negate else rest
        if m := re.match(r"([ntoev])(?=[\s\\]|$)", rest):
            value, rest = m.group(1) == "n", rest[1:]
        elif m := re.match(r"\\n(?:\(\.g|\[\.g\])", rest):
            value, rest = True, rest[m.end():]
        elif rest and not rest[0].isalnum() and rest[0] not in "\\(":
            parts = rest[1:].split(rest[0], 2)
            value = len(parts) == 3 and self.escapes(parts[0]) == self.escapes(parts[1])
            rest = parts[2] if len(parts) == 3 else ""
        else:
            value, rest = False, rest.split(None, 1)[1] if len(rest.split(None, 1)) > 1 else ""
        return value != negate, rest.lstrip()

    def run_condition(self, value: bool, body: str) -> None:
        if value:
            body = re.sub(r"^\\\{\s*", "", body)
            if body.strip():
                self.line(body)
        elif body.startswith("\\{"):
            self.skip_block(body)

    def request(self, name: str, rest: str) -> None:
        """One control line ``.name rest``."""
        out = self.out
        if name in _BLOCKS:
            if name == "de" and rest.split():
                self.macros.add(rest.split()[0])
            self.skip_until(_BLOCKS[name])
        elif name in ("if", "ie"):
            value, body = self.condition(rest)
            if name == "ie":
                self.otherwise.append(not value)
            self.run_condition(value, body)
        elif name == "el":
            self.run_condition(self.otherwise.pop() if self.otherwise else False, rest.lstrip())
        elif name == "ds":
            key, _, value = rest.lstrip().partition(" ")
            self.strings[key] = value[1:] if value.startswith('"') else value
        elif name in ("SH", "SS"):
            out.paragraph()
            args = _split_arguments(rest)
            if args:
                self.emit(" ".join(args))
                out.paragraph()
            else:
                self.heading = True
        elif name == "TP":
            out.paragraph()
            self.tag = True
        elif name == "TQ":
            out.line_break()
            self.tag = True
        elif name == "IP":
            out.paragraph()
            args = _split_arguments(rest)
            tag = self.escapes(args[0]).strip() if args else ""
            if tag:
                out.words(tag)
                if len(tag) > 3:  # an option or a term: its own line; a bullet or "1." stays before the text
                    out.line_break()
        elif name in _PARAGRAPH:
            out.paragraph()
        elif name in ("br", "ti"):
            out.line_break()
        elif name in ("nf", "EX"):
            out.paragraph()
            self.fill = False
        elif name in ("fi", "EE"):
            self.fill = True
            out.paragraph()
        elif name in _WORDS or name in self.macros:
            args = _split_arguments(rest)
            if args:
                self.emit(" ".join(args))
        elif name in _ALTERNATING:
            self.emit("".join(_split_arguments(rest)))
        elif name == "OP":
            self.emit("[" + " ".join(_split_arguments(rest)) + "]")
        elif name in ("UR", "MT"):
            args = _split_arguments(rest)
            self.url, self.link_text = (self.escapes(args[0]) if args else ""), False
        elif name in ("UE", "ME"):
            url, self.url = self.url or "", None
            trailer = "".join(_split_arguments(rest))
            if url:
                self.emit(f"<{url}>{trailer}" if self.link_text else url + trailer)
            elif trailer:
                self.emit(trailer)
        # anything else (.TH, .in, .PD, .ad, .nh, .ft, .so, .\}, ...) carries no text

    def line(self, line: str) -> None:
        line = _strip_comment(line)
        if line[:1] in ".'":
            m = re.match(r"[.']\s*(\\}|[^\s\\]+)?(.*)$", line, re.S)
            if m and m.group(1):
                self.request(m.group(1), m.group(2))
        else:
            self.emit(line)

    def read(self) -> str:
        for line in self.lines:
            self.line(line)
        return self.out.text()


def roff_to_text(source: str) -> str:
    """Plain text of a manual page's roff source: markup dropped, paragraphs joined. Chapter 01 (data).

    Paragraphs are separated by a blank line; a section title (``.SH``) and a ``.TP`` tag each get a
    line of their own; ``.nf``/``.EX`` blocks keep their lines. See the module's docstring for what
    becomes of each kind of markup.

    >>> roff_to_text('.TH LS 1\\n.SH ИМЯ\\nls \\\\- выводит \\\\fBсодержимое\\\\fP каталога')
    'ИМЯ\\n\\nls - выводит содержимое каталога'
    """
    if not isinstance(source, str):
        raise TypeError(f"source must be the roff text of a manual page (str), got {type(source).__name__}")
    return _RoffReader(source).read()


# ------------------------------------------------------------------------------------------------
# Pages, the held-out split and the corpus
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManPage:
    """One Russian manual page: ``name`` (``"ls"``), ``section`` (``"1"``), its plain ``text``. Chapter 01.

    ``path`` is the source file relative to the manual's folder (``"man1/ls.1.gz"``); ``key``
    (``"ls.1"``) names the page in the held-out split.
    """

    name: str
    section: str
    text: str
    path: str

    @property
    def key(self) -> str:
        return f"{self.name}.{self.section}"

    def __repr__(self) -> str:
        preview = self.text[:60].replace("\n", " ")
        return f"ManPage({self.key!r}, text={preview!r}... {len(self.text):,} chars)"


_CYRILLIC = re.compile("[\u0400-\u04ff]")
_LATIN_WORD = re.compile("[A-Za-z]{2,}")
UNTRANSLATED_MIN_WORDS = 5  # a line without Cyrillic and with this many Latin words was left in English


def _russian_lines(text: str) -> str:
    """``text`` without its untranslated lines: no Cyrillic letter and ``UNTRANSLATED_MIN_WORDS`` Latin words.

    Translators leave what they have not done yet in English (about a sixth of the text), often a
    paragraph under a translated ``.TP`` tag; short Latin-only lines (a file name, an option,
    ``ls -l``) belong to Russian prose and stay. A line here is a whole filled paragraph or tag.
    """
    lines = text.split("\n")
    kept = [x for x in lines if _CYRILLIC.search(x) or len(_LATIN_WORD.findall(x)) < UNTRANSLATED_MIN_WORDS]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()


def _read_page(path: Path) -> str:
    """A page's roff source: gunzipped, decoded as UTF-8 (Debian's pages are), else as KOI8-R."""
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("koi8-r", errors="replace")


def _manual_folder(folder: str | Path | None) -> Path:
    root = MANPAGES_DIR if folder is None else Path(folder)
    if not root.is_dir() or not any(root.glob("man*/*")):
        raise FileNotFoundError(f"no Russian manual pages in {root}: {_INSTALL_HINT}")
    return root


_PAGES: dict[Path, list[ManPage]] = {}  # built once per process and folder


def manpage_documents(folder: str | Path | None = None) -> list[ManPage]:
    """Every Russian manual page as plain text, sorted by section and name. Chapter 01 (data).

    Reads ``folder/man*/*`` (default ``MANPAGES_DIR``, ``/usr/share/man/ru``). A page installed under
    several names (symbolic links such as ``vi.1.gz`` -> ``vim.1.gz``) is read once, under its real
    name; untranslated lines (no Cyrillic letter, ``UNTRANSLATED_MIN_WORDS`` or more Latin words:
    English the translators have not done yet, long code examples) are dropped; pages whose text is
    shorter than ``MIN_PAGE_CHARS`` (``.so`` stubs) are left out. No cache is needed: reading all of
    them takes about a second. A missing folder is a FileNotFoundError that says which package to install.
    """
    root = _manual_folder(folder).resolve()
    if root not in _PAGES:
        pages, seen = [], set()
        for path in sorted(root.glob("man*/*")):
            real = path.resolve()
            if not real.is_file() or real in seen or not real.is_relative_to(root):
                continue
            seen.add(real)
            name, _, section = real.name.removesuffix(".gz").rpartition(".")
            text = _russian_lines(roff_to_text(_read_page(real)))
            if len(text) >= MIN_PAGE_CHARS:
                pages.append(ManPage(name=name, section=section, text=text, path=real.relative_to(root).as_posix()))
        _PAGES[root] = sorted(pages, key=lambda p: (p.section, p.name))
    return list(_PAGES[root])


def is_held_out(key: str, val_fraction: float = 0.1) -> bool:
    """Whether the page (or any example) named ``key`` is held out for validation. Chapter 01 (data).

    The first 8 bytes of ``sha256(key)`` as a number in [0, 1) are compared with ``val_fraction``:
    the same pages are held out on every machine and in every run, and adding a page never moves
    another one across the split. About ``val_fraction`` of the keys are held out.
    """
    if not isinstance(key, str):
        raise TypeError(f"key must be a string (a page name such as 'ls.1'), got {type(key).__name__}")
    val_fraction = check_fraction("val_fraction", val_fraction, hint="the share of the items held out")
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


def manpages_corpus(val_fraction: float = 0.1, folder: str | Path | None = None) -> TextCorpus:
    """Russian prose: the manual pages as one text, held-out pages at the end. Chapter 01 (data).

    The training pages, then the held-out ones (``is_held_out(page.key, val_fraction)``), each part
    in ``manpage_documents()`` order, joined by blank lines; ``train`` keeps the separator at its end,
    so ``train + val`` is the whole text and no page is split between the two.
    """
    val_fraction = check_fraction("val_fraction", val_fraction, hint="the share of the pages held out")
    pages = manpage_documents(folder)
    train = [p.text for p in pages if not is_held_out(p.key, val_fraction)]
    val = [p.text for p in pages if is_held_out(p.key, val_fraction)]
    train_text = DOC_SEPARATOR.join(train) + (DOC_SEPARATOR if train and val else "")
    source = f"Russian manual pages in {_manual_folder(folder)} ({len(pages)} pages, {len(val)} held out)"
    return TextCorpus(train=train_text, val=DOC_SEPARATOR.join(val), source=source)
