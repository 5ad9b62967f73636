"""The Russian edition stays in step with the English one (issue 19).

The Russian notebooks are built from the English ones and gettext catalogues (``llm-course translate ru``):
these tests fail when an English cell changed and its translation did not, when a committed Russian
notebook is not exactly what the build makes, when its code differs from the English code, when a link
in it leads nowhere, and when a message the package shows has no Russian (or a translation that lost one
of its ``{fields}``).
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

import pytest

polib = pytest.importorskip("polib")

from llm_course.core import i18n
from llm_course.core.i18n import get_language, set_language, tr
from llm_course.messages import chapter_messages, package_messages
from llm_course.translate import (
    LANGUAGE_CELL,
    build_notebook,
    catalogue_for,
    english_notebooks,
    glossary,
    glossary_page,
    readme,
    translated_chapters,
    translated_path,
    untranslated,
    update_catalogue,
)

ROOT = Path(__file__).resolve().parent.parent
LANG = "ru"
SOURCES = english_notebooks()
BUILT = [nb for nb in SOURCES if translated_path(nb, LANG).exists()]


def _nb(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


@pytest.fixture(autouse=True)
def english_afterwards():
    yield
    set_language("en")


def test_the_first_chapter_is_translated_lesson_and_exercises():
    names = {p.relative_to(ROOT).as_posix() for p in BUILT}
    assert {"notebooks/01_introduction_and_tokenization.ipynb",
            "exercises/01_introduction_and_tokenization_solutions.ipynb"} <= names
    assert (ROOT / "exercises" / LANG / "01_introduction_and_tokenization.ipynb").exists()  # the student version


@pytest.mark.parametrize("nb", SOURCES, ids=lambda p: p.name)
def test_catalogue_is_in_step_with_the_english_notebook(nb, tmp_path):
    """`llm-course translate ru` has been run since the English notebook last changed: the committed
    catalogue has an entry for each of its Markdown cells (translated or not yet)."""
    path = catalogue_for(nb, LANG)
    assert path.exists(), f"no catalogue for {nb.name}: run `llm-course translate ru`"
    before = path.read_text(encoding="utf-8")
    copy_root = tmp_path
    (copy_root / nb.parent.name).mkdir()
    (copy_root / nb.parent.name / nb.name).write_bytes(nb.read_bytes())
    target = catalogue_for(copy_root / nb.parent.name / nb.name, LANG, copy_root)
    target.parent.mkdir(parents=True)
    target.write_text(before, encoding="utf-8")
    update_catalogue(copy_root / nb.parent.name / nb.name, LANG, copy_root)
    assert target.read_text(encoding="utf-8") == before, f"{path.name} is stale: run `llm-course translate ru`"


@pytest.mark.parametrize("nb", BUILT, ids=lambda p: p.name)
def test_every_markdown_cell_of_a_translated_notebook_is_translated(nb):
    missing = untranslated(nb, LANG)
    assert not missing, ("English cells changed or added without a current translation (edit "
                         f"{catalogue_for(nb, LANG).relative_to(ROOT)}):\n" + "\n".join(map(str, missing)))


@pytest.mark.parametrize("nb", BUILT, ids=lambda p: p.name)
def test_committed_russian_notebook_is_what_the_build_makes(nb):
    built = {translated_path(p, LANG).resolve() for p in BUILT}
    built |= {(translated_path(p, LANG).parent / p.name.replace("_solutions", "")).resolve()
              for p in BUILT if p.stem.endswith("_solutions")}
    expected = build_notebook(nb, LANG, built=built)
    committed = _nb(translated_path(nb, LANG))
    assert committed == expected, f"{translated_path(nb, LANG).relative_to(ROOT)} is stale or edited by hand: " \
                                  "run `llm-course translate ru`"


@pytest.mark.parametrize("nb", BUILT, ids=lambda p: p.name)
def test_russian_code_is_the_english_code_plus_the_language_cell(nb):
    english = [c["source"] for c in _nb(nb)["cells"] if c["cell_type"] == "code"]
    russian_cells = _nb(translated_path(nb, LANG))["cells"]
    russian = ["".join(c["source"]) for c in russian_cells if c["cell_type"] == "code"]
    english = ["".join(s) for s in english]
    language = LANGUAGE_CELL.split("\n")[0]
    assert russian[0] == english[0] and russian[1].startswith(language) and 'set_language("ru")' in russian[1]
    assert russian[:1] + russian[2:] == english
    for cell in russian_cells:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, "Russian notebooks go into git empty"
    markdown = [c for c in russian_cells if c["cell_type"] == "markdown"]
    cyrillic = sum(bool(re.search("[а-яё]", "".join(c["source"]), re.I)) for c in markdown)
    assert cyrillic >= 0.9 * len(markdown), "most Markdown cells of a Russian notebook should be in Russian"


_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(notebook: Path) -> set[str]:
    """The anchors JupyterLab gives a notebook's headings: the heading's text, spaces as hyphens."""
    found = set()
    for cell in _nb(notebook)["cells"]:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("#"):
                    found.add(line.lstrip("#").strip().replace(" ", "-"))
    return found


def _russian_files() -> list[Path]:
    return sorted(p for folder in ("notebooks", "exercises") for p in (ROOT / folder / LANG).glob("*.ipynb"))


@pytest.mark.parametrize("path", _russian_files(), ids=lambda p: p.name)
def test_links_in_russian_notebooks_resolve_and_prefer_russian(path):
    text = "\n".join("".join(c["source"]) for c in _nb(path)["cells"] if c["cell_type"] == "markdown")
    for url in _LINK.findall(text):
        if url.startswith(("https://colab.research.google.com/github/", "https://mybinder.org/v2/")):  # badges
            assert f"/{LANG}/" in url or f"%2F{LANG}%2F" in url, f"{path.name}: a badge opens English: {url}"
            continue
        if re.match(r"^[a-z][a-z0-9+.-]*:", url):
            continue
        file, _, anchor = url.partition("#")
        target = (path.parent / file).resolve() if file else path
        assert target.exists(), f"{path.name}: the link {url} leads nowhere"
        if anchor and target.suffix == ".ipynb":
            assert anchor in _anchors(target), f"{path.name}: no heading {anchor!r} in {target.name} (link {url})"
        if target.suffix == ".ipynb" and target.parent.name != LANG:
            russian = target.parent / LANG / target.name
            assert not russian.exists(), f"{path.name}: {url} links the English notebook, a Russian one exists"
        assert target.name != "README.md", f"{path.name}: link README.ru.md, not README.md"


def test_the_build_refuses_an_incomplete_translation(tmp_path):
    nb = tmp_path / "notebooks" / "01_x.ipynb"
    nb.parent.mkdir()
    nb.write_text(json.dumps({"cells": [{"cell_type": "markdown", "id": "a", "metadata": {}, "source": "# Hello"}],
                              "metadata": {}, "nbformat": 4, "nbformat_minor": 5}), encoding="utf-8")
    update_catalogue(nb, LANG, tmp_path)
    with pytest.raises(ValueError, match="not translated yet.*cell a"):
        build_notebook(nb, LANG, tmp_path)
    po = polib.pofile(str(catalogue_for(nb, LANG, tmp_path)))
    po[0].msgstr = "# Привет"
    po.save()
    assert "".join(build_notebook(nb, LANG, tmp_path)["cells"][0]["source"]) == "# Привет"
    # The English cell changes: the old translation becomes obsolete (kept for reuse), the cell is untranslated.
    data = json.loads(nb.read_text())
    data["cells"][0]["source"] = "# Hello!"
    nb.write_text(json.dumps(data), encoding="utf-8")
    update_catalogue(nb, LANG, tmp_path)
    assert [m.cell for m in untranslated(nb, LANG, tmp_path)] == ["a"]
    assert "#~ msgstr \"# Привет\"" in catalogue_for(nb, LANG, tmp_path).read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------------
# What the package shows: checkers, quizzes
# ---------------------------------------------------------------------------------------------------


def _package_catalogue() -> dict[str, str]:
    po = polib.pofile(str(i18n.catalogue_path(LANG)))
    return {e.msgid: e.msgstr for e in po if not e.obsolete}


def test_every_message_of_the_package_is_translated():
    catalogue = _package_catalogue()
    missing = [f"{where}: {text!r}" for text, where in package_messages().items() if not catalogue.get(text)]
    assert not missing, "untranslated messages (llm_course/locale/ru/LC_MESSAGES/llm_course.po):\n" + "\n".join(missing)


@pytest.mark.parametrize("number", translated_chapters(LANG))
def test_quiz_and_exercise_texts_of_a_translated_chapter_are_translated(number):
    catalogue = _package_catalogue()
    missing = [f"{where}: {text[:70]!r}" for text, where in chapter_messages(number).items() if not catalogue.get(text)]
    assert not missing, f"chapter {number}'s texts without Russian:\n" + "\n".join(missing)


def test_translations_keep_every_field_and_write_cyrillic():
    for msgid, msgstr in _package_catalogue().items():
        if msgstr:
            assert _fields(msgstr) == _fields(msgid), (msgid, msgstr)


def test_set_language_switches_the_feedback():
    from llm_course.learn import chapter01

    quiz = chapter01.quiz()
    english = str(quiz.answer(2, 4096))
    assert english.startswith("✓ Right")
    set_language("ru")
    assert get_language() == "ru"
    russian = str(quiz.answer(2, 4096))
    assert russian.startswith("✓ Верно") and re.search("[а-я]", russian.split(":", 1)[1])
    wrong = str(chapter01.EXERCISES.check("perplexity", lambda probs, ids: 1.0))
    assert "расходится с эталоном" in wrong and "ожидалось" in wrong
    assert "не решено" in str(chapter01.EXERCISES.check("bigram_params", ...))
    set_language("en")
    assert str(quiz.answer(2, 4096)) == english


@pytest.mark.parametrize("bad, error", [("fr", ValueError), ("", ValueError), (1, TypeError)])
def test_set_language_bad_input(bad, error):
    with pytest.raises(error, match="language"):
        set_language(bad)
    assert get_language() == "en"


def test_a_message_without_translation_stays_english():
    set_language("ru")
    assert tr("no such message {x}", x=1) == "no such message 1"


# ---------------------------------------------------------------------------------------------------
# Glossary and README
# ---------------------------------------------------------------------------------------------------


def test_glossary_page_is_current_and_linked():
    page = ROOT / "docs" / f"glossary.{LANG}.md"
    assert page.read_text(encoding="utf-8") == glossary_page(LANG), "run `llm-course translate ru`"
    terms = glossary(LANG)
    assert len(terms) >= 50 and all(ru for _, ru, _ in terms)
    for en, ru in [("fine-tuning", "тонкая настройка"), ("pretraining", "предварительное обучение")]:
        assert (en, ru) in [(e, r) for e, r, _ in terms]  # the manual's own terms
    assert f"docs/glossary.{LANG}.md" in (ROOT / f"README.{LANG}.md").read_text(encoding="utf-8")


def _stems(term: str) -> list[str]:
    words = [w for w in re.findall(r"[а-яё]+", term.lower()) if len(w) >= 4]
    return [w[: max(4, len(w) - 2)] for w in words]


@pytest.mark.parametrize("nb", BUILT, ids=lambda p: p.name)
def test_translated_cells_use_the_glossary(nb):
    """Where an English cell uses a glossary term, its translation uses the glossary's Russian (by stem, so
    that Russian inflection passes); terms with several senses are flagged no-check in the glossary."""
    po = polib.pofile(str(ROOT / "locale" / LANG / "glossary.po"))
    checked = [(e.msgid, _stems(e.msgstr)) for e in po if "no-check" not in e.flags and _stems(e.msgstr)]
    cells = {e.msgid: e.msgstr for e in polib.pofile(str(catalogue_for(nb, LANG))) if e.msgstr and not e.obsolete}
    wrong = []
    for english, russian in cells.items():
        # not in code, links, formulas or italics (titles of papers, quoted English)
        plain = re.sub(r"`[^`]*`|\([^)]*\)|\$[^$]*\$|https?://\S+|(?<!\*)\*[^*\n]+\*(?!\*)", " ", english)
        for term, stems in checked:
            if re.search(rf"(?<![\w-]){re.escape(term)}s?(?![\w-])", plain, re.I) and \
                    not all(s in russian.lower() for s in stems):
                wrong.append(f"{term!r} -> {stems}: {russian[:80]!r}")
    assert not wrong, "translations that do not use the glossary's term:\n" + "\n".join(wrong)


def test_readme_ru_is_current_and_the_two_readmes_link_each_other():
    ru = (ROOT / f"README.{LANG}.md").read_text(encoding="utf-8")
    assert ru == readme(LANG), "README.ru.md is stale: run `llm-course translate ru`"
    assert "](README.md)" in ru and "make lab" in ru and "make test" in ru
    en = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "](README.ru.md)" in en.split("## ")[0], "README.md must link the Russian README at its top"
    for url in re.findall(r"\]\(((?:notebooks|exercises)/[^)]+)\)", ru):
        assert (ROOT / url).exists(), url
    assert f"notebooks/{LANG}/01_introduction_and_tokenization.ipynb" in ru


def test_an_error_message_is_english_for_programmers_and_translated_in_a_widget():
    from llm_course.core.i18n import Message, localized

    error = ValueError(Message("the newest message is {n} tokens as a prompt, longer than the {limit} tokens "
                               "available (the context window minus the room kept for the reply): shorten the "
                               "message, or ask for a shorter reply (max_new_tokens)", n=80, limit=48))
    assert str(error).startswith("the newest message is 80 tokens") and localized(error) == str(error)
    set_language("ru")
    assert str(error).startswith("the newest message is 80 tokens")  # a traceback stays English
    assert localized(error).startswith("последнее сообщение занимает 80 токенов") and "48" in localized(error)
    assert localized(ValueError("an unmarked message")) == "an unmarked message"
