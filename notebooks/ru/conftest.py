"""pytest in notebooks/ru/: the Russian edition is built from the English notebooks (``llm-course translate ru``)
with the same code cells, so CI runs one Russian lesson top to bottom (its quiz answers in Russian);
tests/test_translation.py checks that every other one is exactly what the build makes."""

from pathlib import Path

RUN = {"01"}  # the chapters whose Russian lesson CI executes
collect_ignore = [p.name for p in Path(__file__).parent.glob("*.ipynb") if p.name[:2] not in RUN]
