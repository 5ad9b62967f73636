"""The notebooks' prose: cross-references that resolve, one value per stated figure, errata coverage.

**Cross-references.** In a Markdown cell, a mention of another chapter or of a section is a
Markdown link, and the link resolves:

* A *chapter mention* is "chapter(s)" or "notebook(s)" (any case) followed by numbers:
  "chapter 05", "Chapter 9", "chapters 02–03", "chapters 04, 05 and 06". Each number must lie
  inside the text of a link to that chapter's notebook: ``[chapter 06](06_lora_qlora_adapters.ipynb)``,
  ``chapters [02](02_architectures.ipynb)–[03](03_attention.ipynb)``. A mention of the notebook's
  own chapter needs no link.
* A *section mention* is "section", "sections" or "§" followed by numbers ("section 3", "§2",
  "section 1.1", "sections 2 and 3"). Each number must lie inside the text of a link whose anchor
  is a heading of the target notebook (the same notebook for ``#anchor``) numbered exactly so:
  ``[section 3](#3.-Long-inputs)``, ``[chapter 09 §2](09_best_practices.ipynb#2.-Mixed-precision)``.
* Mentions of the *manual's* sections are not course cross-references and are left alone: a
  mention directly preceded (white space and line breaks aside) by "manual", "manual's",
  "ERRATA" or "ERRATA.md", or directly followed by "of the manual" ("the manual's section 7",
  "ERRATA section 9", "section 8 of the manual"). The manual's sections named by their Russian
  titles («Инференс и оптимизация») carry no number and are not mentions.
* Text in code spans and fenced code is not prose and is not searched.
* Every relative link resolves: a notebook link names a file in ``notebooks/``, another path
  exists relative to ``notebooks/``, and an anchor is a heading of the target notebook under
  JupyterLab's rule: the heading's rendered text (Markdown markup such as backticks removed)
  with every space replaced by "-" (``## 2. Mixed precision`` -> ``#2.-Mixed-precision``).
* The closing "Next, chapter NN" of every notebook names the next notebook.

**Figures.** Two figures are stated in several places with one exact phrase, so they can be
compared: "N.NN tokens per Cyrillic character" (the shipped course-gpt tokenizer on the Russian
dialogs, ``llm_course.text.encoding.cyrillic_token_cost``) and "bf16 activations N.NN× of fp32" (what
autograd saves for the backward under bf16 autocast, over fp32, for course-gpt's shape on chapter
09's batch: ``measured_bf16``). Every occurrence (in the notebooks' Markdown, README.md and
docs/ERRATA.md; a line break may split the phrase) must state the value measured here, live,
rounded to two decimals.

**Errata.** Every item of the manual's ERRATA (``../shared/manual/ERRATA.md``: a bullet of a
numbered section) has an entry in the course's ``docs/ERRATA.md`` labelled with its section and
position (``[7.2]`` is section 7's second bullet), and every file an entry names exists.
"""

from __future__ import annotations

import json
import re
import sys
from functools import cache
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("[0-9][0-9]_*.ipynb"))
MANUAL_ERRATA = ROOT.parent / "shared" / "manual" / "ERRATA.md"
COURSE_ERRATA = ROOT / "docs" / "ERRATA.md"

# [text](destination): the destination may hold balanced parentheses (headings such as
# "2.1 Generate, then parse (the manual's way)" give anchors with them).
LINK = re.compile(r"\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(((?:[^()\s]|\([^()\s]*\))*)\)")
FENCE = re.compile(r"```.*?```", re.S)
CODE = re.compile(rf"{FENCE.pattern}|`[^`\n]*`", re.S)
# A number of a mention: "05", "9", "3.1"; not "2,000", "1%" or "0.5" (a list of chapters goes on with
# "–", ",", "and", "or", "to", and stops at anything else).
NUMBER = r"\d+(?:\.\d+)*\b(?![.,]\d|%)"
NUMBER_LIST = rf"{NUMBER}(?:\s*(?:–|—|-|,|and|or|to)\s*{NUMBER})*"
CHAPTER_MENTION = re.compile(rf"\b(?:chapters?|notebooks?)\s+({NUMBER_LIST})", re.I)
SECTION_MENTION = re.compile(rf"(?:\bsections?\s+|§\s*)({NUMBER_LIST})", re.I)
MANUAL_BEFORE = re.compile(r"(?:\bmanual(?:'s)?|\bERRATA(?:\.md)?)\s*$", re.I)
MANUAL_AFTER = re.compile(r"^\s+of\s+(?:the\s+)?(?:manual|ERRATA)\b", re.I)
CYRILLIC_PHRASE = re.compile(r"(\d+\.\d\d)\s+tokens\s+per\s+Cyrillic\s+character")
BF16_PHRASE = re.compile(r"bf16\s+activations\s+(\d+\.\d\d)×\s+of\s+fp32")


def _markdown_cells(nb: Path) -> list[str]:
    cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]


def _rendered(text: str) -> str:
    """A heading's text as JupyterLab renders it: links by their text, code and emphasis unmarked."""
    parts = re.split(r"(`[^`]*`)", LINK.sub(r"\1", text))
    for i, part in enumerate(parts):
        if i % 2:  # a code span: its text, without the backticks
            parts[i] = part[1:-1]
        else:  # emphasis: *a*, **a**, and _a_ / __a__ only outside words (snake_case stays)
            part = re.sub(r"(\*\*|\*)(\S(?:.*?\S)?)\1", r"\2", part)
            parts[i] = re.sub(r"(?<!\w)(__|_)(\S(?:.*?\S)?)\1(?!\w)", r"\2", part)
    return "".join(parts).strip().rstrip("#").strip()


@cache
def headings(nb_name: str) -> dict[str, str]:
    """anchor -> heading text, for every Markdown heading of a notebook (JupyterLab's anchors)."""
    found = {}
    for source in _markdown_cells(NB_DIR / nb_name):
        for line in FENCE.sub("", source).splitlines():
            m = re.match(r"#{1,6}\s+(.*)$", line)
            if m:
                text = _rendered(m.group(1))
                found[text.replace(" ", "-")] = text
    return found


def _chapter_notebook(number: str) -> str | None:
    matches = [nb.name for nb in NOTEBOOKS if nb.name[:2] == f"{int(number):02d}"]
    return matches[0] if matches else None


def _plain(source: str) -> tuple[str, list[str | None]]:
    """The cell's prose as read (links by their text, code as "⟨code⟩"), and for each of its
    characters the destination of the link it is part of (None outside links)."""
    text, dests = [], []
    pos = 0
    for m in re.finditer(f"{CODE.pattern}|{LINK.pattern}", source, re.S):
        text.append(source[pos:m.start()])
        dests += [None] * (m.start() - pos)
        if m.group().startswith("`"):
            text.append("⟨code⟩")
            dests += [None] * len("⟨code⟩")
        else:
            link = LINK.match(m.group())
            text.append(link.group(1))
            dests += [link.group(2)] * len(link.group(1))
        pos = m.end()
    text.append(source[pos:])
    dests += [None] * (len(source) - pos)
    return "".join(text), dests


def _numbers(match: re.Match) -> list[tuple[str, int]]:
    """Each number of a mention, with its position in the text."""
    start = match.start(1)
    return [(n.group(), start + n.start()) for n in re.finditer(r"\d+(?:\.\d+)*", match.group(1))]


def _is_manual(text: str, match: re.Match) -> bool:
    return bool(MANUAL_BEFORE.search(text[: match.start()]) or MANUAL_AFTER.match(text[match.end():]))


def _heading_number(text: str) -> str | None:
    m = re.match(r"(\d+(?:\.\d+)*)\.?\s", text)
    return m.group(1) if m else None


def reference_problems(nb_name: str, source: str) -> list[str]:
    """What is wrong with one Markdown cell's cross-references (empty: nothing)."""
    own = nb_name[:2]
    problems = []
    text, dests = _plain(source)

    def context(match: re.Match) -> str:
        return " ".join(text[max(0, match.start() - 30): match.end() + 30].split())

    for match in CHAPTER_MENTION.finditer(text):
        if _is_manual(text, match):
            continue
        for number, pos in _numbers(match):
            if "." in number or f"{int(number):02d}" == own:
                continue
            target = _chapter_notebook(number)
            dest = dests[pos]
            if target is None:
                problems.append(f"'{context(match)}': there is no chapter {number} notebook")
            elif dest is None or unquote(dest.partition("#")[0]) != target:
                problems.append(f"'{context(match)}': chapter {number} must be a link to {target}"
                                + (f", not to {dest!r}" if dest else ""))
    for match in SECTION_MENTION.finditer(text):
        if _is_manual(text, match):
            continue
        for number, pos in _numbers(match):
            dest = dests[pos]
            path, _, anchor = (dest or "").partition("#")
            target = unquote(path) or nb_name
            if dest is None or not anchor:
                problems.append(f"'{context(match)}': section {number} must be a link to its heading "
                                f"([section {number}](#N.-Heading-text), or NN_name.ipynb#N.-Heading-text)")
                continue
            if not (NB_DIR / target).is_file():
                continue  # reported by the link check
            heading = headings(target).get(anchor) or headings(target).get(unquote(anchor))
            if heading is not None and _heading_number(heading) != number:
                problems.append(f"'{context(match)}': section {number} links to the heading {heading!r} "
                                f"of {target}, which is numbered {_heading_number(heading)}")
    return problems


def link_problems(nb_name: str, source: str) -> list[str]:
    """Relative links of one Markdown cell that do not resolve (file or heading missing)."""
    problems = []
    prose = CODE.sub(lambda m: " " * len(m.group()), source)
    for dest in (m.group(2) for m in LINK.finditer(prose)):
        if re.match(r"[a-z][a-z0-9+.-]*:", dest, re.I):
            continue  # https:, mailto:, ...
        path, _, anchor = dest.partition("#")
        target = unquote(path) or nb_name
        if not (NB_DIR / target).exists():
            problems.append(f"{dest!r}: {target} does not exist in notebooks/")
        elif anchor and target.endswith(".ipynb") and anchor not in headings(target) \
                and unquote(anchor) not in headings(target):
            near = [a for a in headings(target) if a.split("-", 1)[0] == anchor.split("-", 1)[0]]
            problems.append(f"{dest!r}: {target} has no heading with the anchor #{anchor}"
                            + (f" (did you mean #{near[0]}?)" if near else ""))
    return problems


# ------------------------------------------------------------------------------------------
# the rules themselves, on small cases (so the notebook checks below can be trusted)
# ------------------------------------------------------------------------------------------


FAKE_HEADINGS = {  # the rules' examples do not depend on today's headings
    "07_inference.ipynb": ["8. Smaller weights: int8 and 4-bit NF4"],
    "09_best_practices.ipynb": ["2. Mixed precision", "3. Long inputs", "3.1 Perplexity of a long text"],
}


def test_the_rules_on_examples(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "headings",
                        lambda name: {h.replace(" ", "-"): h for h in FAKE_HEADINGS.get(name, [])})
    nb = "09_best_practices.ipynb"
    ok = [
        "As [chapter 06](06_lora_qlora_adapters.ipynb) measured.",
        "[Chapter 9](09_best_practices.ipynb) and this chapter (chapter 09).",
        "chapters [02](02_architectures.ipynb)–[03](03_attention.ipynb)",
        "[chapter 07 §8](07_inference.ipynb#8.-Smaller-weights:-int8-and-4-bit-NF4)",
        "see [section 3.1](#3.1-Perplexity-of-a-long-text) and [§3](#3.-Long-inputs)",
        "the manual's section 7, ERRATA\nsection 9, and section 8 of the manual",
        "`chapter 05` in code is not prose",
    ]
    for text in ok:
        assert reference_problems(nb, text) == [] and link_problems(nb, text) == [], text
    bad = {
        "Next, chapter 05 fine-tunes": "chapter 05 must be a link to 05_finetuning.ipynb",
        "[chapter 05](06_lora_qlora_adapters.ipynb)": "not to '06_lora_qlora_adapters.ipynb'",
        "chapters [02](02_architectures.ipynb)–03": "chapter 03 must be a link",
        "as Section 2 shows": "section 2 must be a link to its heading",
        "[section 3](#2.-Mixed-precision)": "numbered 2",
        "(chapter 12)": "there is no chapter 12 notebook",
    }
    for text, message in bad.items():
        assert any(message in p for p in reference_problems(nb, text)), (text, reference_problems(nb, text))
    assert link_problems(nb, "[x](#2.-Mixed-Precision)") == [
        "'#2.-Mixed-Precision': 09_best_practices.ipynb has no heading with the anchor #2.-Mixed-Precision "
        "(did you mean #2.-Mixed-precision?)"]
    assert link_problems(nb, "[x](10_missing.ipynb)")[0].startswith("'10_missing.ipynb': 10_missing.ipynb does not")
    # JupyterLab's anchors are made from the rendered text: no backticks, links by their text
    rendered = _rendered("1. The manual's `Trainer` code, **run** [today](x.ipynb)")
    assert rendered == "1. The manual's Trainer code, run today"
    assert _rendered("3. `snake_case` and _emphasis_") == "3. snake_case and emphasis"


# ------------------------------------------------------------------------------------------
# the notebooks
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_cross_references_are_links(nb):
    problems = [p for source in _markdown_cells(nb) for p in reference_problems(nb.name, source)]
    assert not problems, f"{nb.name}: mentions of chapters and sections that are not links:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_links_resolve(nb):
    problems = [p for source in _markdown_cells(nb) for p in link_problems(nb.name, source)]
    assert not problems, f"{nb.name}: links that do not resolve:\n  " + "\n  ".join(problems)


def test_each_notebook_points_to_the_next():
    for nb, following in zip(NOTEBOOKS, NOTEBOOKS[1:] + [None]):
        text = " ".join(LINK.sub(r"\1", s) for s in _markdown_cells(nb))  # link text, not destinations
        named = re.findall(r"\bNext,\s+chapter\s+(\d+)", text)
        if following is None:
            assert not named, f"{nb.name} is the last chapter but says 'Next, chapter {named}'"
        else:
            assert named == [following.name[:2]], f"{nb.name}: 'Next, chapter ...' should name {following.name[:2]}, " \
                                                  f"found {named or 'none'}"


# ------------------------------------------------------------------------------------------
# figures stated in several places
# ------------------------------------------------------------------------------------------


def _statements(phrase: re.Pattern) -> list[tuple[str, str]]:
    """(where, value) for every occurrence of a figure's phrase."""
    found = [(nb.name, m.group(1)) for nb in NOTEBOOKS for s in _markdown_cells(nb) for m in phrase.finditer(s)]
    for doc in (ROOT / "README.md", COURSE_ERRATA):
        found += [(doc.name, m.group(1)) for m in phrase.finditer(doc.read_text(encoding="utf-8"))]
    return found


@pytest.fixture(scope="module")
def measured_cyrillic() -> float:
    from llm_course.text.encoding import cyrillic_token_cost
    from llm_course.text.tokenizer import ByteLevelBPETokenizer
    from llm_course.zoo.loading import checkpoint_dir

    return cyrillic_token_cost(ByteLevelBPETokenizer.from_pretrained(checkpoint_dir("course-gpt")))


def measured_bf16() -> float:
    """The ratio redone: a GPT of course-gpt's shape (its config.json) on a batch of the size chapter 09's
    parameters cell sets (BATCH x SEQ), the bytes autograd saves for the backward (each storage once,
    weights excluded: ``finetuning_costs.saved_activation_bytes``) under bf16 autocast over fp32. The bytes
    depend only on shapes and dtypes, not on the weights or token values; they do depend on the batch
    shape (on course-gpt: 0.73 at 4 x 256 and 16 x 64, 0.72 on chapter 06's first batch of 16 x 76, 0.69
    at 8 x 384), which is why the phrase states one measurement, the one chapter 09 makes."""
    import torch

    from llm_course.models.gpt import GPT, GPTConfig
    from llm_course.train.finetuning_costs import saved_activation_bytes
    from llm_course.train.precision import autocast_context
    from llm_course.zoo.loading import checkpoint_dir

    cells = json.loads((NB_DIR / "09_best_practices.ipynb").read_text(encoding="utf-8"))["cells"]
    params: dict = {}
    exec("".join(next(c["source"] for c in cells if "parameters" in c["metadata"].get("tags", []))), params)
    config = json.loads((checkpoint_dir("course-gpt") / "config.json").read_text(encoding="utf-8"))
    torch.manual_seed(params["SEED"])
    model = GPT(GPTConfig(**{k: config[k] for k in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")}))
    ids = torch.randint(config["vocab_size"], (params["BATCH"], params["SEQ"]))
    saved = {}
    for precision in ("fp32", "bf16"):
        with autocast_context(precision, "cpu"):
            saved[precision], loss = saved_activation_bytes(model.train(), {"input_ids": ids, "labels": ids})
        del loss
    return saved["bf16"] / saved["fp32"]


def test_cyrillic_token_cost_is_stated_once_and_as_measured(measured_cyrillic):
    found = _statements(CYRILLIC_PHRASE)
    where = {w for w, _ in found}
    assert {"04_pretraining.ipynb", "08_applications.ipynb"} <= where, \
        f"notebooks 04 and 08 state the shipped tokenizer's cost as 'N.NN tokens per Cyrillic character': {found}"
    expected = f"{measured_cyrillic:.2f}"
    wrong = [(w, v) for w, v in found if v != expected]
    assert not wrong, f"course-gpt's tokenizer measures {expected} tokens per Cyrillic character; stated: {wrong}"


def test_bf16_activation_ratio_is_stated_once_and_as_measured():
    found = _statements(BF16_PHRASE)
    assert found, "no notebook states the bf16 activation ratio as 'bf16 activations N.NN× of fp32'"
    expected = f"{measured_bf16():.2f}"  # measured only when there is something to compare
    wrong = [(w, v) for w, v in found if v != expected]
    assert not wrong, f"chapter 09's batch measures bf16 activations {expected}× of fp32; stated: {wrong}"


# ------------------------------------------------------------------------------------------
# the course's errata cover the manual's
# ------------------------------------------------------------------------------------------


def manual_errata_items(text: str) -> dict[str, str]:
    """'7.2' -> the first line of section 7's second bullet, for every bullet of a numbered section."""
    items, section, count = {}, None, 0
    for line in text.splitlines():
        heading = re.match(r"##\s+(\d+)\.", line)
        if heading:
            section, count = heading.group(1), 0
        elif line.startswith("## "):
            section = None
        elif section and line.startswith("- "):
            count += 1
            items[f"{section}.{count}"] = line[2:].strip()
    return items


def test_course_errata_cover_every_item_of_the_manuals_errata():
    if not MANUAL_ERRATA.is_file():
        pytest.skip(f"the manual's ERRATA is not beside the repository ({MANUAL_ERRATA})")
    manual = manual_errata_items(MANUAL_ERRATA.read_text(encoding="utf-8"))
    assert len(manual) > 20, manual
    ours = COURSE_ERRATA.read_text(encoding="utf-8")
    entries = dict(re.findall(r"^- \*\*\[(\d+\.\d+)\]\*\*(.*?)(?=^- \*\*\[|^#|\Z)", ours, re.M | re.S))
    missing = {k: v for k, v in manual.items() if k not in entries}
    assert not missing, f"docs/ERRATA.md has no entry for these items of the manual's ERRATA: {missing}"
    unknown = sorted(set(entries) - set(manual))
    assert not unknown, f"docs/ERRATA.md has entries for items the manual's ERRATA does not have: {unknown}"
    for key, entry in entries.items():
        assert "Where:" in entry, f"docs/ERRATA.md [{key}] does not say where the course handles it ('Where: ...')"
        named = re.findall(r"`((?:notebooks|llm_course|tests|benchmarks)/[^`#\s]+)`", entry)
        named += [unquote(p).removeprefix("../") for p in re.findall(r"\]\(([^)#\s]+)", entry)]
        assert named, f"docs/ERRATA.md [{key}] names no notebook, module or test"
        for ref in named:  # a file, or a test in one: tests/test_x.py::test_name
            path, _, test = ref.partition("::")
            assert (ROOT / path).exists(), f"docs/ERRATA.md [{key}] names {path}, which does not exist"
            if test:
                assert f"def {test}(" in (ROOT / path).read_text(encoding="utf-8"), \
                    f"docs/ERRATA.md [{key}] names the test {ref}, which does not exist"
