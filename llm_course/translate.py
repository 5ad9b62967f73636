"""The Russian edition: notebooks built from the English ones and gettext catalogues. Chapter 01 (course set-up).

One source: the English notebooks. Each one has a catalogue, ``locale/ru/<folder>/<name>.po`` (a gettext
PO file, read and written with ``polib``, so any translator's tool such as Poedit or Lokalize opens it),
with one entry per Markdown cell: ``msgid`` the English cell, ``msgstr`` its Russian. ``build`` writes
``notebooks/ru/<name>.ipynb`` (and ``exercises/ru/...``) from them:

* every Markdown cell is replaced by its translation; links are rewritten to the Russian notebooks
  where one exists (and to ``README.ru.md``), Colab and Binder badges open the Russian notebook;
* the code cells are the English ones, unchanged, and one cell is added after the Colab install cell:
  ``set_language("ru")`` (:mod:`llm_course.core.i18n`), so quizzes, checkers and widgets speak Russian;
* the Russian student exercise notebooks are generated from the Russian solutions by nbgrader's own
  preprocessors (:mod:`llm_course.learn.assignments`), as the English ones are.

A notebook is built only when its catalogue translates every Markdown cell (a half-English notebook is
worse than none); ``status`` says how far each one is. When an English cell changes, its old entry
becomes obsolete (kept in the file, marked ``#~``, for the translator to reuse) and the new text waits
untranslated, so the test that every cell is translated names the cell until someone translates it.
Entries a translator is unsure of carry a ``# review:`` comment. The glossary
(``locale/ru/glossary.po``: every English term and the Russian the edition uses) is rendered to
``docs/glossary.ru.md``; ``README.ru.md`` is rendered from ``locale/ru/README.md`` plus the chapter table.

    llm-course translate ru            # update the catalogues, build every complete notebook, the README
    llm-course translate ru --status   # how many cells of each notebook are translated
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_course.chapters import CHAPTERS
from llm_course.core.deps import require
from llm_course.learn.assignments import SOLUTIONS_SUFFIX, student_version
from llm_course.messages import save_catalogue, update_messages
from llm_course.report import BINDER_URL, COLAB_URL, EXERCISE_BINDER_URL, EXERCISE_COLAB_URL, load_notebook_stats

__all__ = ["LANGUAGE_CELL", "FOLDERS", "repo_root", "english_notebooks", "catalogue_for", "update_catalogue",
           "cell_translations", "untranslated", "translated_path", "build_notebook", "build", "status",
           "glossary", "glossary_page", "readme", "Missing", "translated_chapters", "anchor_map"]

FOLDERS = ("notebooks", "exercises")
LANGUAGE_CELL = 'from llm_course.core.i18n import set_language\nset_language("{language}")   # {comment}'
_COMMENT = {"ru": "квизы, проверки упражнений и виджеты говорят по-русски"}
_HEADER = {"ru": "Russian translation of {path}: one entry per Markdown cell (msgid: the English cell). "
                 "Rebuild with `llm-course translate ru`; a '# review:' comment marks a translation to check."}


def repo_root() -> Path:
    """The checkout this package was installed from (notebooks/, exercises/, locale/ live there)."""
    return Path(__file__).resolve().parent.parent


def english_notebooks(root: Path | None = None) -> list[Path]:
    """The notebooks that are translated: every lesson and every exercise solutions notebook.

    The student exercise notebooks are not translated directly: they are generated from the translated
    solutions, as the English ones are from the English solutions.
    """
    root = root or repo_root()
    lessons = sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    solutions = sorted((root / "exercises").glob(f"[0-9][0-9]_*{SOLUTIONS_SUFFIX}.ipynb"))
    return lessons + solutions


def _rel(path: Path, root: Path) -> str:
    return path.resolve().relative_to(root.resolve()).as_posix()


def catalogue_for(notebook: Path, language: str, root: Path | None = None) -> Path:
    """``locale/<language>/<folder>/<name>.po`` for the English ``notebook``."""
    root = root or repo_root()
    folder = notebook.resolve().parent.name
    return root / "locale" / language / folder / (notebook.stem + ".po")


def translated_path(notebook: Path, language: str, root: Path | None = None) -> Path:
    """Where the translated notebook goes: ``notebooks/ru/<name>`` for ``notebooks/<name>``."""
    root = root or repo_root()
    return root / notebook.resolve().parent.name / language / notebook.name


def _markdown_cells(nb: dict[str, Any]) -> list[tuple[int, str]]:
    return [(i, "".join(c["source"])) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "markdown"]


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def update_catalogue(notebook: Path, language: str, root: Path | None = None) -> Path:
    """Bring the catalogue in step with the English notebook: new cells added (untranslated), cells that
    are gone marked obsolete (kept for reuse), the order of the notebook kept. Returns its path."""
    polib = require("polib")
    root = root or repo_root()
    path = catalogue_for(notebook, language, root)
    old = polib.pofile(str(path), wrapwidth=0) if path.exists() else None
    po = polib.POFile(wrapwidth=0)
    po.header = _HEADER.get(language, "Translation of {path}").format(path=_rel(notebook, root))
    po.metadata = {"Project-Id-Version": "llm-course", "Language": language, "MIME-Version": "1.0",
                   "Content-Type": "text/plain; charset=UTF-8", "Content-Transfer-Encoding": "8bit"}
    known = {e.msgid: e for e in old} if old is not None else {}
    seen = set()
    nb = _read(notebook)
    for index, text in _markdown_cells(nb):
        if text in seen or not text.strip():
            continue
        seen.add(text)
        cell_id = nb["cells"][index].get("id", str(index))
        before = known.get(text)
        entry = polib.POEntry(msgid=text, msgstr=before.msgstr if before is not None and not before.obsolete else "",
                              occurrences=[(_rel(notebook, root), f"cell-{cell_id}")],
                              tcomment=before.tcomment if before is not None else "")
        po.append(entry)
    return save_catalogue(po, known, seen, path)  # text no longer in the notebook: kept, obsolete, for reuse


def cell_translations(notebook: Path, language: str, root: Path | None = None) -> dict[str, str]:
    """``{English cell: translation}`` for the notebook (translated, current entries only)."""
    polib = require("polib")
    path = catalogue_for(notebook, language, root)
    if not path.exists():
        return {}
    return {e.msgid: e.msgstr for e in polib.pofile(str(path)) if e.msgstr and not e.obsolete
            and "fuzzy" not in e.flags}


@dataclass(frozen=True)
class Missing:
    """A Markdown cell of an English notebook with no current translation."""

    notebook: str
    cell: str
    start: str

    def __str__(self) -> str:
        return f"{self.notebook}, cell {self.cell}: {self.start!r}"


def untranslated(notebook: Path, language: str, root: Path | None = None) -> list[Missing]:
    """The Markdown cells of ``notebook`` whose text has no translation in its catalogue (changed or new)."""
    root = root or repo_root()
    done = cell_translations(notebook, language, root)
    nb = _read(notebook)
    return [Missing(_rel(notebook, root), nb["cells"][i].get("id", str(i)), text[:60])
            for i, text in _markdown_cells(nb) if text.strip() and text not in done]


# ---------------------------------------------------------------------------------------------------
# Links: to the Russian notebooks where they exist
# ---------------------------------------------------------------------------------------------------

_LINK = re.compile(r"(\]\()([^)\s]+)(\))")


def _counterpart(target: Path, language: str, root: Path, built: set[Path]) -> Path:
    """The translated file for a repository file, where there is one (else the file itself)."""
    target = target.resolve()
    if target == (root / "README.md").resolve():
        return root / f"README.{language}.md"
    if target.parent.resolve() in {(root / f).resolve() for f in FOLDERS}:
        candidate = (target.parent / language / target.name).resolve()
        if candidate in built:
            return candidate
    return target


def _rewrite_links(text: str, notebook: Path, out: Path, language: str, root: Path, built: set[Path]) -> str:
    folder = notebook.resolve().parent.name
    colab, binder = (COLAB_URL, BINDER_URL) if folder == "notebooks" else (EXERCISE_COLAB_URL, EXERCISE_BINDER_URL)

    def one(m: re.Match) -> str:
        url = m.group(2)
        for template in (colab, binder):  # the badges of this very notebook (or its student twin)
            prefix = template.split("{name}")[0]
            if url.startswith(prefix):
                name = url[len(prefix):]
                sep = "/" if template is colab else "%2F"
                return f"{m.group(1)}{prefix}{language}{sep}{name}{m.group(3)}"
        if re.match(r"^[a-z][a-z0-9+.-]*:", url) or url.startswith("#"):
            return m.group(0)  # another site, or an anchor in this page
        path, _, anchor = url.partition("#")
        source = (notebook.parent / path).resolve()
        target = _counterpart(source, language, root, built)
        if anchor and target != source and source.suffix == ".ipynb":  # a heading of a translated notebook
            anchor = anchor_map(source, language, root).get(anchor, anchor)
        rel = Path(_relpath(target, out.parent))
        return f"{m.group(1)}{rel.as_posix()}{'#' + anchor if anchor else ''}{m.group(3)}"

    return _LINK.sub(one, text)


def _headings(text: str) -> list[str]:
    """The anchors JupyterLab makes for a Markdown cell's headings: the heading text, spaces as hyphens."""
    return [line.lstrip("#").strip().replace(" ", "-") for line in text.splitlines() if line.startswith("#")]


def anchor_map(notebook: Path, language: str, root: Path | None = None) -> dict[str, str]:
    """``{English heading anchor: translated heading anchor}`` for ``notebook``, heading by heading, so that a
    link into a translated notebook lands on the same section."""
    done = cell_translations(notebook, language, root)
    found: dict[str, str] = {}
    for _, text in _markdown_cells(_read(notebook)):
        english, translated = _headings(text), _headings(done.get(text, ""))
        if len(english) == len(translated):
            found.update(zip(english, translated))
    return found


def _relpath(target: Path, start: Path) -> str:
    import os

    return os.path.relpath(target.resolve(), start.resolve())


# ---------------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------------


def _language_cell(language: str) -> dict[str, Any]:
    return {"cell_type": "code", "execution_count": None, "id": f"set-language-{language}", "metadata": {},
            "outputs": [], "source": LANGUAGE_CELL.format(language=language, comment=_COMMENT.get(language, ""))}


def build_notebook(notebook: Path, language: str, root: Path | None = None,
                   built: set[Path] | None = None) -> dict[str, Any]:
    """The translated notebook (as JSON data): Markdown translated, code unchanged, the language cell added.

    Raises ValueError naming the first untranslated cell if the catalogue is not complete.
    """
    root = root or repo_root()
    missing = untranslated(notebook, language, root)
    if missing:
        raise ValueError(f"{len(missing)} cell(s) not translated yet, first: {missing[0]}; translate them in "
                         f"{_rel(catalogue_for(notebook, language, root), root)}")
    done = cell_translations(notebook, language, root)
    out = translated_path(notebook, language, root)
    built = built if built is not None else set()
    nb = copy.deepcopy(_read(notebook))
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            text = "".join(cell["source"])
            if text.strip():
                cell["source"] = _rewrite_links(done[text], notebook, out, language, root, built)
    install = next((i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"), 0)
    nb["cells"].insert(install + 1, _language_cell(language))
    nb.setdefault("metadata", {})["language_info"] = nb.get("metadata", {}).get("language_info", {"name": "python"})
    nb["metadata"]["llm_course"] = {"language": language, "source": _rel(notebook, root)}
    return nb


def _write_notebook(nb: dict[str, Any], path: Path) -> bool:
    text = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    path.write_text(text, encoding="utf-8")
    return True


def build(language: str = "ru", root: Path | None = None, update: bool = True) -> dict[str, list[str]]:
    """Update the catalogues, build every completely translated notebook, the student exercise notebooks,
    the glossary page and ``README.<language>.md``; remove translated notebooks whose source is gone.

    Returns ``{"built": [...], "incomplete": [...], "removed": [...]}`` (repository-relative paths).
    """
    nbformat = require("nbformat")
    root = root or repo_root()
    sources = english_notebooks(root)
    if update:
        for nb in sources:
            update_catalogue(nb, language, root)
        update_messages(language)
    complete = [nb for nb in sources if not untranslated(nb, language, root)]
    built = {translated_path(nb, language, root).resolve() for nb in complete}
    from llm_course.learn.assignments import student_path

    for nb in complete:  # the student twins of translated solutions are built too: links may point at them
        if nb.stem.endswith(SOLUTIONS_SUFFIX):
            built.add((translated_path(nb, language, root).parent / student_path(nb).name).resolve())
    report: dict[str, list[str]] = {"built": [], "incomplete": [], "removed": []}
    wanted = set()
    for nb in sources:
        out = translated_path(nb, language, root)
        if nb not in complete:
            report["incomplete"].append(_rel(nb, root))
            continue
        data = build_notebook(nb, language, root, built)
        _write_notebook(data, out)
        wanted.add(out.resolve())
        report["built"].append(_rel(out, root))
        if nb.stem.endswith(SOLUTIONS_SUFFIX):
            student = out.parent / student_path(nb).name
            node = nbformat.reads(json.dumps(data), as_version=4)
            text = nbformat.writes(student_version(node, out.name, student.name)) + "\n"
            if not student.exists() or student.read_text(encoding="utf-8") != text:
                student.write_text(text, encoding="utf-8")
            wanted.add(student.resolve())
            report["built"].append(_rel(student, root))
    for folder in FOLDERS:
        for old in sorted((root / folder / language).glob("*.ipynb")):
            if old.resolve() not in wanted:
                old.unlink()
                report["removed"].append(_rel(old, root))
    page = root / "docs" / f"glossary.{language}.md"
    page.parent.mkdir(parents=True, exist_ok=True)
    if not page.exists() or page.read_text(encoding="utf-8") != glossary_page(language, root):
        page.write_text(glossary_page(language, root), encoding="utf-8")
    target = root / f"README.{language}.md"
    text = readme(language, root)
    if not target.exists() or target.read_text(encoding="utf-8") != text:
        target.write_text(text, encoding="utf-8")
    return report


def status(language: str = "ru", root: Path | None = None) -> list[tuple[str, int, int]]:
    """``(notebook, translated cells, Markdown cells)`` for every English notebook."""
    root = root or repo_root()
    rows = []
    for nb in english_notebooks(root):
        cells = [t for _, t in _markdown_cells(_read(nb)) if t.strip()]
        rows.append((_rel(nb, root), len(cells) - len(untranslated(nb, language, root)), len(cells)))
    return rows


def translated_chapters(language: str = "ru", root: Path | None = None) -> list[str]:
    """The chapters whose lesson is built in ``language`` (their quiz and exercises must be translated too)."""
    root = root or repo_root()
    return [ch.number for ch in CHAPTERS if (nb := ch.notebook(root / "notebooks")) is not None
            and translated_path(nb, language, root).exists()
            and (Path(__file__).resolve().parent / "learn" / f"chapter{ch.number}.py").exists()]


# ---------------------------------------------------------------------------------------------------
# Glossary and README
# ---------------------------------------------------------------------------------------------------


def glossary(language: str = "ru", root: Path | None = None) -> list[tuple[str, str, str]]:
    """``(English term, translation, note)`` from ``locale/<language>/glossary.po``, in its order."""
    polib = require("polib")
    path = (root or repo_root()) / "locale" / language / "glossary.po"
    return [(e.msgid, e.msgstr, e.tcomment or "") for e in polib.pofile(str(path)) if not e.obsolete]


_GLOSSARY_INTRO = {"ru": (
    "# Глоссарий русской редакции курса\n\n"
    "Каждый английский термин курса и русский, которым его передаёт русская редакция; где у пособия есть свой "
    "термин, взят он. Источник: `locale/ru/glossary.po` (эта страница собирается из него командой "
    "`llm-course translate ru`; тесты проверяют, что переводы ячеек пользуются этими терминами).\n\n"
    "| English | Русский | Примечание |\n|---|---|---|\n")}


def glossary_page(language: str = "ru", root: Path | None = None) -> str:
    """The glossary as a Markdown page (``docs/glossary.<language>.md``)."""
    rows = [f"| {en} | {tr} | {note.replace(chr(10), ' ')} |" for en, tr, note in
            sorted(glossary(language, root), key=lambda r: r[0].lower())]
    return _GLOSSARY_INTRO[language] + "\n".join(rows) + "\n"


_README_TABLE = {"ru": ("| # | Урок (раздел пособия) | Открыть | Упражнения | Время (2 ядра) |\n"
                        "|---|---|---|---|---|\n")}
_WORDS = {"ru": {"coming": "английский оригинал, перевод готовится", "exercises": "упражнения",
                 "solutions": "решения", "seconds": "с"}}


def _chapter_rows(language: str, root: Path) -> str:
    words = _WORDS[language]
    stats = load_notebook_stats()
    lines = []
    for ch in CHAPTERS:
        nb = ch.notebook(root / "notebooks")
        if nb is None:
            continue
        ru = translated_path(nb, language, root)
        title = ch.manual_section.split(". ", 1)[-1]
        if ru.exists():
            cell = f"[{title}](notebooks/{language}/{nb.name})"
            colab = COLAB_URL.format(name=f"{language}/{nb.name}")
            binder = BINDER_URL.format(name=f"{language}%2F{nb.name}")
        else:
            cell = f"[{title}](notebooks/{nb.name}) ({words['coming']})"
            colab, binder = COLAB_URL.format(name=nb.name), BINDER_URL.format(name=nb.name)
        exercises = ""
        solutions = sorted((root / "exercises").glob(f"{ch.number}_*{SOLUTIONS_SUFFIX}.ipynb"))
        if solutions:
            sol = solutions[0]
            student = sol.name.replace(SOLUTIONS_SUFFIX, "")
            folder = f"exercises/{language}" if (root / "exercises" / language / sol.name).exists() else "exercises"
            exercises = f"[{words['exercises']}]({folder}/{student}) · [{words['solutions']}]({folder}/{sol.name})"
        s = stats.get(f"{language}/{nb.name}") or stats.get(nb.name, {})
        t = f"{s['seconds']:.0f} {words['seconds']}" if "seconds" in s else ""
        lines.append(f"| {ch.number} | {cell} | [Colab]({colab}) · [Binder]({binder}) | {exercises} | {t} |")
    return _README_TABLE[language] + "\n".join(lines) + "\n"


def readme(language: str = "ru", root: Path | None = None) -> str:
    """``README.<language>.md``: ``locale/<language>/README.md`` with the chapter table filled in."""
    root = root or repo_root()
    template = (root / "locale" / language / "README.md").read_text(encoding="utf-8")
    return template.replace("<!-- chapters -->", _chapter_rows(language, root).rstrip("\n"))


def main(argv: list[str] | None = None) -> int:
    """``llm-course translate LANGUAGE [--status]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="llm-course translate", description=__doc__.splitlines()[0])
    parser.add_argument("language", choices=["ru"])
    parser.add_argument("--status", action="store_true", help="only say how much of each notebook is translated")
    args = parser.parse_args(argv)
    if args.status:
        for name, done, total in status(args.language):
            print(f"{done:>4}/{total:<4} {name}")
        return 0
    report = build(args.language)
    for key in ("built", "incomplete", "removed"):
        for name in report[key]:
            print(f"{key:>10}: {name}")
    return 0
