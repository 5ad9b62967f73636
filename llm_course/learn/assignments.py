"""Exercise notebooks: the student version is generated from the solutions, with nbgrader. Chapter 01 on.

Each chapter's exercises are written once, with their solutions, in
``exercises/NN_<topic>_solutions.ipynb`` in nbgrader's format: answers between ``### BEGIN SOLUTION``
and ``### END SOLUTION`` in cells marked as solution cells, autograded test cells with points, read-only
cells locked. ``student_version`` runs nbgrader's own preprocessors over it, in the order nbgrader's
``generate_assignment`` runs them (leaving out the ones that need its database), so the student notebook
``exercises/NN_<topic>.ipynb`` cannot disagree with the solutions: every answer becomes
``raise NotImplementedError()``, outputs are cleared, checksums are recorded for grading.

Regenerate every student notebook after editing a solutions notebook::

    python -m llm_course.learn.assignments

An instructor grades with nbgrader itself: copy ``exercises/NN_<topic>_solutions.ipynb`` to
``source/chNN/NN_<topic>.ipynb`` in an nbgrader course folder, then ``nbgrader generate_assignment chNN``
(its release is the committed student notebook, cell for cell) and, on the students' submissions,
``nbgrader autograde chNN``; tests/test_exercises.py runs exactly that round trip. nbgrader's gradebook
calls the ``alembic`` command, so the environment's ``bin/`` must be on PATH (activate the venv).

nbgrader is a test and instructor dependency (``pip install nbgrader``), not a student's.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

from llm_course.core.deps import require

__all__ = ["SOLUTIONS_SUFFIX", "GENERATE_STEPS", "exercises_dir", "solution_notebooks", "student_path",
           "student_version", "release", "release_all"]

SOLUTIONS_SUFFIX = "_solutions"
# nbgrader's GenerateAssignment.preprocessors, without IncludeHeaderFooter, InstantiateTests and
# SaveCells (a header file, test templates and the gradebook database: none is used by the course).
GENERATE_STEPS = ("LockCells", "ClearSolutions", "ClearOutput", "CheckCellMetadata", "ComputeChecksums",
                  "ClearHiddenTests", "ClearMarkScheme", "ComputeChecksums", "CheckCellMetadata")
SOLUTIONS_ONLY = "<!-- solutions only -->"  # a markdown line with this marker is left out of the student version


def exercises_dir() -> Path:
    """The ``exercises/`` folder of the checkout this package was installed from."""
    return Path(__file__).resolve().parent.parent.parent / "exercises"


def solution_notebooks(root: Path | None = None) -> list[Path]:
    """Every ``NN_<topic>_solutions.ipynb`` in ``exercises/``, in chapter order."""
    return sorted((root or exercises_dir()).glob(f"[0-9][0-9]_*{SOLUTIONS_SUFFIX}.ipynb"))


def student_path(solutions: Path) -> Path:
    """``exercises/01_x_solutions.ipynb`` -> ``exercises/01_x.ipynb``."""
    solutions = Path(solutions)
    if not solutions.stem.endswith(SOLUTIONS_SUFFIX):
        raise ValueError(f"{solutions.name} is not a solutions notebook: its name must end in "
                         f"{SOLUTIONS_SUFFIX}.ipynb")
    return solutions.with_name(solutions.stem[: -len(SOLUTIONS_SUFFIX)] + solutions.suffix)


def student_version(solutions: Any, solutions_name: str = "", student_name: str = "") -> Any:
    """The student notebook (an nbformat node) made from the solutions notebook by nbgrader's preprocessors.

    In markdown cells, ``solutions_name`` (a file name, e.g. in the Colab link) becomes ``student_name``
    and lines marked ``<!-- solutions only -->`` are dropped.
    """
    preprocessors = require("nbgrader.preprocessors", "nbgrader")
    nb = copy.deepcopy(solutions)
    resources: dict[str, Any] = {}
    for step in GENERATE_STEPS:
        nb, resources = getattr(preprocessors, step)().preprocess(nb, resources)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            lines = [ln for ln in cell.source.split("\n") if SOLUTIONS_ONLY not in ln]
            cell.source = "\n".join(lines)
            if solutions_name and student_name:
                cell.source = cell.source.replace(solutions_name, student_name)
    return nb


def release(solutions: Path) -> Path:
    """Write the student version of one solutions notebook next to it; returns its path."""
    nbformat = require("nbformat")
    solutions = Path(solutions)
    target = student_path(solutions)
    nb = nbformat.read(solutions, as_version=4)
    student = student_version(nb, solutions.name, target.name)
    nbformat.write(student, target)
    return target


def release_all(root: Path | None = None) -> list[Path]:
    """Regenerate every student notebook in ``exercises/`` from its solutions."""
    return [release(p) for p in solution_notebooks(root)]


if __name__ == "__main__":  # python -m llm_course.learn.assignments
    for path in release_all():
        print("wrote", path)
    sys.exit(0)
