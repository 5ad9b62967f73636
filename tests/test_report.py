"""Measured figures flow from results files into the README."""

import json

import pytest

from llm_course import benchtools, report


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_COURSE_RESULTS", str(tmp_path / "results"))
    return tmp_path


def test_notebook_stats_merge_and_render(results):
    report.save_notebook_stats({"01_introduction_and_tokenization.ipynb": {"seconds": 12.3, "peak_rss_mb": 456.0,
                                                                           "cells": 5, "failed_cells": 0}})
    report.save_notebook_stats({"99_other.ipynb": {"seconds": 1.0, "cells": 1, "failed_cells": 0}})
    stats = report.load_notebook_stats()
    assert set(stats) == {"01_introduction_and_tokenization.ipynb", "99_other.ipynb"}  # merged, not replaced
    table = report.notebook_table()
    assert "| 01 |" in table and "12 s" in table and "456 MB" in table


def test_update_readme_replaces_only_the_marked_blocks(results):
    benchtools.record("demo", [{"what": "x", "ratio": 1.23456}], notes="a note")
    readme = results / "README.md"
    readme.write_text("intro\n<!-- BEGIN benchmarks -->\nold\n<!-- END benchmarks -->\noutro\n", encoding="utf-8")
    assert report.update_readme(readme) is True
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text
    assert "| x | 1.235 |" in text and "a note" in text
    assert report.update_readme(readme) is False  # idempotent


def test_corrupt_stats_file_is_a_clear_error(results):
    path = results / "results" / report.NOTEBOOK_STATS
    path.parent.mkdir(parents=True)
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not a valid notebook-stats file"):
        report.load_notebook_stats()


def test_record_writes_machine_info(results):
    path = benchtools.record("demo2", [{"a": 1}])
    data = json.loads(path.read_text())
    assert data["machine"]["torch"] and data["rows"] == [{"a": 1}]
    assert benchtools.record("demo3", [{"a": 1}], quick=True) is None
