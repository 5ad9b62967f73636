"""The notebook-as-test harness itself: every notebook is collected, stripped and parameterised."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from llm_course.chapters import CHAPTERS, chapter_of, find_chapter, notebooks_dir
from llm_course.report import BINDER_URL, COLAB_URL, REPO_URL

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


TRAINING_CALLS = ("pretrain_gpt(", "trainer_finetune(", "instruction_tune(", "measure_finetuning(")
TRAINING_NOTEBOOKS = [nb for nb in NOTEBOOKS if any(call in nb.read_text(encoding="utf-8") for call in TRAINING_CALLS)]


def test_the_notebooks_that_train_are_found():
    assert {nb.name[:2] for nb in TRAINING_NOTEBOOKS} >= {"04", "05", "06"}, [nb.name for nb in TRAINING_NOTEBOOKS]


@pytest.mark.parametrize("nb", TRAINING_NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_that_trains_takes_a_precision_parameter(nb):
    """On a Colab GPU, PRECISION = "auto" trains in bf16 (fp16 on a T4); on a CPU it stays fp32."""
    cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    params = next("".join(c["source"]) for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    assert re.search(r'^PRECISION = "auto"', params, flags=re.M), f"{nb.name}: parameters need PRECISION = \"auto\""
    used = [c for c in code if "precision=PRECISION" in c]
    assert used, f"{nb.name}: PRECISION is defined but no training run is given precision=PRECISION"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_opens_with_badges_and_a_guarded_colab_install(nb):
    cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
    first = "".join(cells[0]["source"])
    assert cells[0]["cell_type"] == "markdown", f"{nb.name}: the first cell must be the title with the badges"
    # The badges open this very notebook, at the paths the README's table links too.
    assert f"]({COLAB_URL.format(name=nb.name)})" in first, f"{nb.name}: Colab badge missing or pointing elsewhere"
    assert f"]({BINDER_URL.format(name=nb.name)})" in first, f"{nb.name}: Binder badge missing or pointing elsewhere"
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    install = code[0]
    assert '"google.colab" in sys.modules' in install, f"{nb.name}: first code cell must be the Colab install"
    pip_lines = [ln.strip() for ln in install.splitlines() if "pip install" in ln]
    assert pip_lines and all(ln.startswith("%pip install") for ln in pip_lines), f"{nb.name}: use %pip: {pip_lines}"
    for ln in pip_lines:
        # Colab's own torch (a CUDA build) and ipywidgets 7.7 must stay: install only the course package.
        words = ln.replace('"', " ").split()
        assert not {"-U", "--upgrade", "--force-reinstall", "torch", "ipywidgets"} & set(words), \
            f"{nb.name}: the Colab install must not replace Colab's torch or ipywidgets: {ln}"
        assert f"llm-course @ git+{REPO_URL}" in ln, f"{nb.name}: install the course from {REPO_URL}: {ln}"
    # Installing happens only on Colab: the guard is an `if`, and the %pip line sits inside it.
    guarded = [ln for ln in install.splitlines() if "pip install" in ln]
    assert all(ln.startswith((" ", "\t")) for ln in guarded), f"{nb.name}: %pip must be inside the Colab guard"


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_readme_links_point_at_files_and_headings_that_exist():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    prose = re.sub(r"^```.*?^```", "", readme, flags=re.M | re.S)  # a "# comment" in a code block is no heading
    anchors = {_slug(h) for h in re.findall(r"^#+\s+(.*)$", prose, flags=re.M)}
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    assert len(links) > 20, "the README should link its notebooks, benchmarks and files"
    broken = []
    for link in links:
        if link.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = link.partition("#")
        if path and not (ROOT / path).exists():
            broken.append(link)
        elif not path and anchor not in anchors:
            broken.append(link)
    assert not broken, f"README links to paths or headings that do not exist: {broken}"
    for url in re.findall(r"\((https://(?:colab\.research\.google\.com|mybinder\.org)/[^)\s]+)\)", readme):
        if "notebooks" in url:
            name = url.replace("%2F", "/").rsplit("/", 1)[-1]
            assert (ROOT / "notebooks" / name).exists(), f"README opens a notebook that does not exist: {url}"
            assert url in (COLAB_URL.format(name=name), BINDER_URL.format(name=name)), url


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
