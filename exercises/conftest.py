"""pytest in exercises/: CI runs every solutions notebook top to bottom (nbval, like the lessons).

The student notebooks (``NN_<topic>.ipynb``) are generated from the solutions and stop at each
``raise NotImplementedError()`` by design, so they are not run here; tests/test_exercises.py checks
that they are current and that nbgrader's round trip scores them zero and the solutions full marks.
"""

from pathlib import Path

collect_ignore = [p.name for p in Path(__file__).parent.glob("*.ipynb") if not p.stem.endswith("_solutions")]
