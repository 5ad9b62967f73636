"""Every benchmark runs (quick mode: tiny sizes, nothing recorded). Speed targets are ratios the
benchmarks print and record, never asserted here: shared machines are too noisy for timed tests."""

from pathlib import Path

import pytest

from llm_course.benchtools import run_file

BENCHES = sorted((Path(__file__).resolve().parent.parent / "benchmarks").glob("bench_*.py"))


@pytest.mark.parametrize("path", BENCHES, ids=lambda p: p.stem)
def test_benchmark_quick_run(path, tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_COURSE_RESULTS", str(tmp_path))
    rows = run_file(path, quick=True)
    assert rows and all(isinstance(r, dict) and r for r in rows)
    assert not list(tmp_path.iterdir()), "a quick run must not record results"
