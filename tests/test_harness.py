"""The notebook-as-test harness itself: every notebook is collected, stripped and parameterised."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from llm_course.chapters import CHAPTERS, chapter_of, find_chapter, notebooks_dir

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(notebooks_dir().glob("*.ipynb"))


def test_there_are_notebooks_and_they_are_named_after_chapters():
    assert NOTEBOOKS, "notebooks/ is empty"
    for nb in NOTEBOOKS:
        chapter_of(nb)  # raises for a name without a known NN_ prefix
    numbers = [chapter_of(nb).number for nb in NOTEBOOKS]
    assert len(numbers) == len(set(numbers)), f"two notebooks for one chapter: {numbers}"


def test_every_notebook_is_collected_by_the_test_run():
    """pytest (with the project's own configuration: testpaths, nbval from conftest.py) must
    collect a test item for every notebook. tests/ is ignored only to keep this check quick."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "--ignore=tests"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    ).stdout
    collected = {line.split("::", 1)[0] for line in out.splitlines() if ".ipynb::" in line}
    missing = [nb.relative_to(ROOT).as_posix() for nb in NOTEBOOKS
               if nb.relative_to(ROOT).as_posix() not in collected]
    assert not missing, f"notebooks not collected by the test run: {missing}\n{out[-2000:]}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(nb):
    cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
    dirty = [i for i, c in enumerate(cells)
             if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"{nb.name}: cells {dirty} have outputs; run `make strip`"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_a_parameters_cell_and_asserts(nb):
    cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
    params = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, f"{nb.name}: needs exactly one cell tagged 'parameters'"
    tree = ast.parse("".join(params[0]["source"]))
    names = {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    assert {"SEED", "DEVICE"} <= names, f"{nb.name}: the parameters cell must define SEED and DEVICE"
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    assert code.count("assert ") >= 3, f"{nb.name}: notebooks check what they show with asserts"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_opens_with_badges_and_a_guarded_colab_install(nb):
    cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
    first = "".join(cells[0]["source"])
    assert "colab.research.google.com" in first and "mybinder.org" in first, f"{nb.name}: badges missing"
    assert nb.name in first, f"{nb.name}: badges must link to this notebook"
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    assert '"google.colab" in sys.modules' in code[0], f"{nb.name}: first code cell must be the Colab install"


def test_readme_maps_every_chapter_to_the_manual():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for ch in CHAPTERS:
        assert ch.manual_section in readme, f"README lacks the manual section of chapter {ch.number}"
    for nb in NOTEBOOKS:
        assert f"notebooks/{nb.name}" in readme, f"README does not link {nb.name}"


def test_unknown_chapter_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown chapter '12'.*01, 02"):
        find_chapter("12")
    assert find_chapter(4).number == find_chapter("04").number == "04"
