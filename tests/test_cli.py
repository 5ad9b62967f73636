"""The llm-course command (chapter 01 set-up)."""

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from llm_course import cli


def _run(*args):
    return subprocess.run([sys.executable, "-m", "llm_course.cli", *args], capture_output=True, text=True, timeout=600)


def test_check_reports_versions_and_device():
    r = _run("check")
    assert r.returncode == 0, r.stderr
    assert "torch" in r.stdout and "device" in r.stdout and "notebooks" in r.stdout


def test_run_unknown_chapter_is_a_clear_error_without_traceback():
    r = _run("run", "12")
    assert r.returncode == 2
    assert "unknown chapter '12'" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("value,expected", [("10", 10), ("0.5", 0.5), ("True", True), ("None", None),
                                            ("gpt2", "gpt2"), ("'x y'", "x y"), ("[1, 2]", [1, 2])])
def test_parse_parameter(value, expected):
    assert cli.parse_parameter(value) == expected


def _tiny_notebook(tmp_path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell("STEPS = 3\nSEED = 0\nDEVICE = 'auto'")
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p, nbformat.v4.new_code_cell("result = STEPS * 2\nprint('result', result)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "04_tiny.ipynb"
    nbformat.write(nb, path)
    return path


def test_run_injects_parameters_with_papermill(tmp_path):
    _tiny_notebook(tmp_path)
    out = cli.run_chapter("04", {"STEPS": 21}, output=tmp_path / "out.ipynb", root=tmp_path)
    executed = json.loads(out.read_text())
    text = "".join(o.get("text", "") if isinstance(o.get("text"), str) else "".join(o.get("text", []))
                   for c in executed["cells"] for o in c.get("outputs", []))
    assert "result 42" in text


def test_run_rejects_a_parameter_the_notebook_does_not_have(tmp_path):
    _tiny_notebook(tmp_path)
    with pytest.raises(ValueError, match="no parameter STESP.*STEPS"):
        cli.run_chapter("04", {"STESP": 1}, output=tmp_path / "o.ipynb", root=tmp_path)


def test_strip_removes_outputs(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("1+1")
    cell.outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=1)]
    cell.execution_count = 1
    nb.cells = [cell]
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, path)
    assert cli.strip_notebook(path) is True
    data = json.loads(path.read_text())
    assert data["cells"][0]["outputs"] == [] and data["cells"][0]["execution_count"] is None
    assert cli.strip_notebook(path) is False


def test_bench_unknown_name_is_a_clear_error():
    r = _run("bench", "no_such_benchmark", "--quick")
    assert r.returncode == 2 and "unknown benchmark" in r.stderr


def test_modules_lists_each_module_a_chapter_teaches(capsys):
    from llm_course.chapters import find_chapter

    assert cli.main(["modules", "4"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("04 Pretraining")
    listed = [line.split()[0] for line in out[1:]]
    assert listed == [f"llm_course.{m}" for m in find_chapter("04").modules]
    assert all("(missing)" not in line for line in out)  # each module exists and has a docstring
    assert cli.main(["modules", "12"]) == 2
    assert "unknown chapter '12'" in capsys.readouterr().err
