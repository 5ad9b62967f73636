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


@pytest.mark.parametrize("name, load, message, text", [
    (report.NOTEBOOK_STATS, report.load_notebook_stats, "not a valid notebook-stats file", "{not json"),
    (report.REPORT, report.load_report, "not a valid benchmark report", "[]"),
])
def test_corrupt_results_file_is_a_clear_error(results, name, load, message, text):
    path = results / "results" / name
    path.parent.mkdir(parents=True)
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load()


def test_record_writes_machine_info(results):
    path = benchtools.record("demo2", [{"a": 1}])
    data = json.loads(path.read_text())
    assert data["machine"]["torch"] and data["rows"] == [{"a": 1}]
    assert benchtools.record("demo3", [{"a": 1}], quick=True) is None


GOOD = '''"""Benchmark: A vs B, side by side. Chapter 07 (inference).

More text.
"""
from llm_course import benchtools


def run(quick=False):
    rows = [{"what": "a/b", "ratio": 2.0}]
    benchtools.record("good_table", rows, quick=quick)
    return rows
'''
BAD = '''"""Benchmark: always fails. Chapters 02-03."""


def run(quick=False):
    raise RuntimeError("boom")
'''


@pytest.fixture
def bench_dir(tmp_path):
    d = tmp_path / "benchmarks"
    d.mkdir()
    (d / "bench_good.py").write_text(GOOD, encoding="utf-8")
    (d / "bench_bad.py").write_text(BAD, encoding="utf-8")
    return d


def test_run_benchmarks_writes_one_report_and_keeps_going_after_a_failure(results, bench_dir):
    report.save_notebook_stats({"03_attention.ipynb": {"seconds": 26.0, "peak_rss_mb": 494.0}})
    rep = report.run_benchmarks(bench_dir=bench_dir)
    by_name = {b["name"]: b for b in rep["benchmarks"]}
    assert list(by_name) == ["bad", "good"]  # file order
    assert by_name["good"]["status"] == "ok" and by_name["good"]["results"] == ["good_table"]
    assert by_name["good"]["chapter"] == "07" and by_name["good"]["what"] == "A vs B, side by side"
    assert by_name["bad"]["status"] == "failed (exit 1)" and by_name["bad"]["results"] == []
    assert by_name["bad"]["chapter"] == "02-03"
    assert all(b["seconds"] > 0 for b in rep["benchmarks"])
    saved = report.load_report()
    assert saved["results"]["good_table"]["rows"] == [{"what": "a/b", "ratio": 2.0}]
    assert saved["notebooks"]["notebooks"]["03_attention.ipynb"]["seconds"] == 26.0
    assert saved["machine"]["torch"] and saved["total_seconds"] == pytest.approx(
        sum(b["seconds"] for b in saved["benchmarks"]), abs=0.2)

    readme = results / "README.md"
    readme.write_text("<!-- BEGIN benchmarks -->\n<!-- END benchmarks -->\n", encoding="utf-8")
    report.update_readme(readme)
    text = readme.read_text(encoding="utf-8")
    assert "| [good](benchmarks/bench_good.py) | 07 | A vs B, side by side |" in text
    assert "| failed (exit 1) | none |" in text and "#### good_table" in text and "| a/b | 2 |" in text


def test_run_benchmarks_subset_keeps_the_other_entries_and_quick_writes_nothing(results, bench_dir):
    report.run_benchmarks(bench_dir=bench_dir)
    first = {b["name"]: b for b in report.load_report()["benchmarks"]}
    report.run_benchmarks(["good"], bench_dir=bench_dir)
    second = {b["name"]: b for b in report.load_report()["benchmarks"]}
    assert second["bad"] == first["bad"] and set(second) == {"bad", "good"}
    path = results / "results" / report.REPORT
    before = path.read_bytes()
    rep = report.run_benchmarks(["good"], quick=True, bench_dir=bench_dir)
    assert rep["quick"] and rep["benchmarks"][0]["status"] == "ok" and path.read_bytes() == before
    with pytest.raises(ValueError, match="unknown benchmark nope; available: bad, good"):
        report.run_benchmarks(["nope"], bench_dir=bench_dir)


def test_a_test_run_refreshes_the_notebook_figures_in_the_report(results, bench_dir):
    report.run_benchmarks(["good"], bench_dir=bench_dir)
    assert "notebooks" not in report.load_report()  # no test run recorded yet
    report.save_notebook_stats({"04_pretraining.ipynb": {"seconds": 200.0, "peak_rss_mb": 1300.0}})
    assert report.load_report()["notebooks"]["notebooks"]["04_pretraining.ipynb"]["seconds"] == 200.0
    assert report.load_report()["benchmarks"][0]["name"] == "good"  # the rest is kept


def test_format_table_escapes_pipes_in_headers_and_cells():
    table = benchtools.format_table([{"max |dloss|": 0.5, "note": "a|b"}])
    header, rule, row = table.splitlines()
    assert header == r"| max \|dloss\| | note |" and row == r"| 0.5 | a\|b |"
    assert rule.count("---") == 2  # still two columns
