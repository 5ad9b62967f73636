"""The exercise notebooks: generated from the solutions, opened like the lessons, graded by nbgrader. Issue 18.

nbgrader's real round trip runs offline in a temporary course folder: ``generate_assignment`` makes the
student version from the solutions (and it must be the committed one), ``autograde`` runs both: the
solutions score full marks, the released stubs zero.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from llm_course.learn.assignments import (
    SOLUTIONS_ONLY,
    exercises_dir,
    release,
    solution_notebooks,
    student_path,
    student_version,
)

nbformat = pytest.importorskip("nbformat")
ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = solution_notebooks()


def _code(nb) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code"]


def test_every_chapter_with_exercises_has_solutions_and_a_student_notebook():
    assert [p.name for p in SOLUTIONS][:1] == ["01_introduction_and_tokenization_solutions.ipynb"]
    learn = ROOT / "llm_course" / "learn"
    chapters = sorted(p.stem.removeprefix("chapter") for p in learn.glob("chapter[0-9][0-9].py"))
    assert [p.name[:2] for p in SOLUTIONS] == chapters, "one solutions notebook per llm_course/learn/chapterNN.py"
    for sol in SOLUTIONS:
        assert student_path(sol).exists(), f"{sol.name} has no student version: python -m llm_course.learn.assignments"


@pytest.mark.parametrize("sol", SOLUTIONS, ids=lambda p: p.name)
def test_student_notebook_is_generated_from_the_solutions(sol):
    committed = student_path(sol).read_text(encoding="utf-8")
    nb = nbformat.read(sol, as_version=4)
    generated = nbformat.writes(student_version(nb, sol.name, student_path(sol).name)) + "\n"
    assert committed == generated, f"{student_path(sol).name} is stale: run `python -m llm_course.learn.assignments`"
    student = nbformat.reads(committed, as_version=4)
    text = "\n".join(c.source for c in student.cells)
    assert "BEGIN SOLUTION" not in text and SOLUTIONS_ONLY not in text and sol.name not in text
    stubs = sum("raise NotImplementedError()" in s for s in _code(student))
    answers = sum(c.metadata.get("nbgrader", {}).get("solution", False) for c in nb.cells)
    assert stubs == answers >= 5


@pytest.mark.parametrize("sol", SOLUTIONS, ids=lambda p: p.name)
def test_exercise_notebooks_open_like_the_lessons(sol):
    for path in (sol, student_path(sol)):
        nb = json.loads(path.read_text(encoding="utf-8"))
        first = "".join(nb["cells"][0]["source"])
        assert f"blob/main/exercises/{path.name}" in first and f"labpath=exercises%2F{path.name}" in first
        install = "".join(nb["cells"][1]["source"])
        assert 'if "google.colab" in sys.modules:' in install and "%pip install" in install
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name} has outputs in git"


@pytest.mark.parametrize("sol", SOLUTIONS, ids=lambda p: p.name)
def test_every_exercise_has_a_graded_check_and_the_kinds_are_mixed(sol):
    nb = nbformat.read(sol, as_version=4)
    meta = [c.metadata.get("nbgrader", {}) for c in nb.cells]
    answers = {m["grade_id"].removesuffix("_answer") for m in meta if m.get("solution")}
    checks = {m["grade_id"].removesuffix("_check"): m["points"] for m in meta if m.get("grade")}
    assert answers == set(checks) and all(p > 0 for p in checks.values())
    import importlib

    exercises = importlib.import_module(f"llm_course.learn.chapter{sol.name[:2]}").EXERCISES
    assert answers == set(exercises.exercises)
    assert {e.kind for e in exercises.exercises.values()} == {"implement", "predict", "experiment"}


def test_release_refuses_a_notebook_that_is_not_a_solutions_notebook(tmp_path):
    with pytest.raises(ValueError, match="_solutions.ipynb"):
        release(tmp_path / "01_x.ipynb")


# ---------------------------------------------------------------------------------------------------
# nbgrader's round trip
# ---------------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Object of type:Warning")  # nbgrader's own SQLAlchemy use
@pytest.mark.parametrize("sol", SOLUTIONS, ids=lambda p: p.name)
def test_nbgrader_round_trip(sol, tmp_path, monkeypatch):
    pytest.importorskip("nbgrader")
    from nbgrader.api import Gradebook
    from nbgrader.apps import NbGraderAPI
    from traitlets.config import Config

    name = student_path(sol).name
    assignment = "ch" + sol.name[:2]
    (tmp_path / "source" / assignment).mkdir(parents=True)
    shutil.copy(sol, tmp_path / "source" / assignment / name)
    monkeypatch.chdir(tmp_path)
    # nbgrader's gradebook runs the `alembic` command: the one installed next to this Python (a venv's bin/
    # is not on PATH when pytest is started as .venv/bin/python -m pytest).
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    config = Config()
    config.CourseDirectory.root = str(tmp_path)
    config.ExecutePreprocessor.timeout = 120
    api = NbGraderAPI(config=config)

    made = api.generate_assignment(assignment)
    assert made["success"], made["error"] + made["log"]
    released = nbformat.read(tmp_path / "release" / assignment / name, as_version=4)
    assert _code(released) == _code(nbformat.read(student_path(sol), as_version=4)), \
        "nbgrader's generate_assignment and the committed student notebook disagree"

    for student, notebook in (("solutions", sol), ("stubs", tmp_path / "release" / assignment / name)):
        folder = tmp_path / "submitted" / student / assignment
        folder.mkdir(parents=True)
        shutil.copy(notebook, folder / name)
        graded = api.autograde(assignment, student)
        assert graded["success"], graded["error"] + graded["log"]

    with Gradebook(f"sqlite:///{tmp_path / 'gradebook.db'}") as gb:
        full = gb.find_submission(assignment, "solutions")
        stubs = gb.find_submission(assignment, "stubs")
        max_score = full.max_score
        scores = {"solutions": full.score, "stubs": stubs.score}
    expected_max = sum(c.metadata["nbgrader"]["points"] for c in nbformat.read(sol, as_version=4).cells
                       if c.metadata.get("nbgrader", {}).get("grade"))
    assert max_score == expected_max >= 5
    assert scores == {"solutions": max_score, "stubs": 0}


def test_exercises_folder_is_collected_by_pytest():
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "exercises" in config["testpaths"]
    conftest = {}
    exec((exercises_dir() / "conftest.py").read_text(), {"__file__": str(exercises_dir() / "conftest.py")}, conftest)
    ignored = set(conftest["collect_ignore"])
    assert {student_path(s).name for s in SOLUTIONS} <= ignored and not {s.name for s in SOLUTIONS} & ignored


def test_readme_chapter_table_links_the_exercises_and_solutions():
    from llm_course.report import EXERCISE_BINDER_URL, EXERCISE_COLAB_URL, exercise_links, notebook_table

    links = exercise_links("01")
    for name in ("01_introduction_and_tokenization.ipynb", "01_introduction_and_tokenization_solutions.ipynb"):
        assert f"](exercises/{name})" in links
        assert EXERCISE_COLAB_URL.format(name=name) in links and EXERCISE_BINDER_URL.format(name=name) in links
        assert (ROOT / "exercises" / name).exists()
    assert "/blob/main/exercises/" in EXERCISE_COLAB_URL and "labpath=exercises%2F" in EXERCISE_BINDER_URL
    assert exercise_links("99") == ""  # no exercises: an empty cell, not a broken link
    row = next(line for line in notebook_table().splitlines() if line.startswith("| 01 |"))
    assert links in row
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert links in readme, "the README's chapter table is stale: run `make readme`"


def _lesson_code(number: str) -> list[str]:
    from llm_course.chapters import find_chapter

    nb = nbformat.read(find_chapter(number).notebook(), as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code"]


@pytest.mark.parametrize("number", sorted(p.stem.removeprefix("chapter") for p in
                                          (ROOT / "llm_course" / "learn").glob("chapter[0-9][0-9].py")))
def test_lesson_ends_with_its_questions_and_links_its_exercises(number):
    code = _lesson_code(number)
    assert f"chapter{number}.quiz()" in code[-1] and ".show()" in code[-1], "the lesson must end with its quiz"
    from llm_course.chapters import find_chapter

    solutions = [p for p in SOLUTIONS if p.name.startswith(f"{number}_")]
    assert solutions, f"chapter {number} has questions but no exercise notebook"
    text = find_chapter(number).notebook().read_text(encoding="utf-8")
    for path in (student_path(solutions[0]), solutions[0]):
        assert f"../exercises/{path.name}" in text, f"the lesson does not link {path.name}"


def test_chapter01_key_lines_are_on_the_page_and_checked():
    code = _lesson_code("01")
    where = {name: next(i for i, s in enumerate(code) if f"def {name}(" in s)
             for name in ("count_pairs", "merge_pair", "bigram_probs")}
    replay = next(i for i, s in enumerate(code) if "bpe_merge_steps(t, 10)" in s)
    assert where["count_pairs"] == where["merge_pair"] == replay - 1  # the check is the very next cell
    assert "agree(bigram_probs, library" in code[where["bigram_probs"]]
    for i in list(where.values()) + [replay]:
        assert len(code[i].splitlines()) <= 30, "a key-lines cell should be short enough to read"
