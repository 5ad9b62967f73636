"""The tested versions (llm_course.versions): one floor file, equal to pyproject.toml's lower bounds, and
`llm-course check` saying whether each installed version is inside its tested range."""

import importlib.metadata as md
import re

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest brings tomli
    import tomli as tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from llm_course import benchtools, cli, versions

ROOT = Path(__file__).resolve().parent.parent
# Not pinned in the floor file, and why: torch's older builds are multi-GB CUDA wheels (only the CPU wheel
# the Makefile installs is installable here); ruff and playwright are tools (the linter, the browser driver),
# not code the course or its notebooks run.
NOT_PINNED = {"torch", "ruff", "playwright"}
# Pinned though not direct dependencies, each with its reason in the floor file.
TRANSITIVE = {"pyarrow"}


def _declared() -> dict[str, Requirement]:
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = proj["dependencies"] + [r for extra in proj["optional-dependencies"].values() for r in extra]
    return {re.sub(r"[-_.]+", "-", (r := Requirement(s)).name).lower(): r for s in reqs}


def _lower_bound(req: Requirement) -> Version | None:
    lows = [Version(s.version) for s in req.specifier if s.operator == ">="]
    return max(lows) if lows else None


def test_floor_file_pins_every_dependency_at_pyprojects_lower_bound():
    """The floor environment installs exactly the lowest version pyproject.toml allows: a floor raised in one
    file and not the other (or a dependency added without a floor) fails here."""
    declared, floor = _declared(), versions.floor_pins()
    direct = {n: v for n, v in floor.items() if n not in TRANSITIVE}
    assert set(direct) == set(declared) - NOT_PINNED, (set(direct) ^ (set(declared) - NOT_PINNED))
    for name, pin in direct.items():
        req = declared[name]
        assert Version(pin) in req.specifier, f"{name}=={pin} is outside pyproject's {req}"
        assert _lower_bound(req) == Version(pin), f"pyproject's {req} does not start at the tested floor {pin}"


def test_known_floors_that_installability_raised():
    floor = versions.floor_pins()
    # transformers 4.50.0 requires tokenizers>=0.21,<0.22: tokenizers 0.20 can never be installed with it.
    assert floor["transformers"] == "4.50.0" and floor["tokenizers"] == "0.21.0"
    assert "torch" not in floor


def test_floor_pins_rejects_a_line_pip_would_read_differently(tmp_path):
    path = tmp_path / "floor.txt"
    path.write_text("# comment\nnumpy==1.24.2   # why\nPyYAML==6.0\n")
    assert versions.floor_pins(path) == {"numpy": "1.24.2", "pyyaml": "6.0"}
    path.write_text("numpy>=1.24\n")
    with pytest.raises(ValueError, match=r"floor.txt:1: 'numpy>=1.24' is not a pin"):
        versions.floor_pins(path)


@pytest.mark.parametrize("installed,oldest,newest,inside,words", [
    ("5.25.0", "4.50.0", "5.25.0", True, "inside the tested range 4.50.0 .. 5.25.0"),
    ("4.50.0", "4.50.0", "5.25.0", True, "inside"),
    ("4.49.0", "4.50.0", "5.25.0", False, "OLDER than the oldest tested, 4.50.0"),
    ("5.26.0", "4.50.0", "5.25.0", False, "NEWER than the newest tested, 5.25.0"),
    ("5.0.0rc1", "4.50.0", "5.25.0", True, "inside"),            # a pre-release counts as its release
    ("2.13.0+cpu", None, "2.13.0", True, "the only version tested"),  # torch: the local tag is ignored
    ("2.6.0+cu124", None, "2.13.0", False, "untested: only 2.13.0"),
    (None, "4.50.0", "5.25.0", None, "not installed"),
    ("1.0", None, None, None, "no tested range recorded"),
])
def test_tested_status(installed, oldest, newest, inside, words):
    got, text = versions.tested_status(installed, oldest, newest)
    assert got is inside and words in text


def test_the_main_runs_record_is_the_newest_tested_end():
    info = benchtools.machine_info()
    assert info["versions"]["transformers"] == md.version("transformers")
    assert set(info["versions"]) <= set(versions.tracked_packages())


def test_check_reports_each_installed_version_against_its_tested_range():
    floor = versions.floor_pins()
    rows = dict(cli.check_report())
    for name in ("transformers", "tokenizers", "peft", "accelerate", "onnxruntime"):
        version = md.version(name)
        assert rows[name].startswith(f"{version}: ")
        inside, text = versions.tested_status(version, floor[name], versions.newest_tested().get(name))
        assert text in rows[name]
        # never below the floor in either environment CI runs (a release newer than the last recorded run is
        # reported as untested until this run's record makes it the newest tested)
        assert Version(version) >= Version(floor[name]) and "OLDER" not in text
    assert rows["python"].startswith("3.")


def test_installed_pytest_tears_module_fixtures_down_after_the_tests_resources(tmp_path):
    """Why pytest's floor is 8.2 (requirements-floor.txt): conftest.py's autouse guards check, when a test file
    ends, that it stopped every process it started. That holds only if a file's own module fixtures (a Ray
    session, a JupyterLab server) are torn down before the guards. pytest 8.0 and 8.1 re-register a cached
    fixture's teardown every time a test requests it (pytest#12135), so an autouse guard requested by a later
    test ran *first* and reported Ray's processes as left behind. Checked here on the installed pytest, in a
    separate run of a two-test file."""
    import subprocess
    import sys

    log = tmp_path / "teardowns.txt"  # each fixture appends its name here when it is torn down
    note = f"    with open({str(log)!r}, 'a') as f:\n        f.write('{{}}\\n')\n"
    (tmp_path / "conftest.py").write_text(
        "import pytest\n\n@pytest.fixture(scope='module', autouse=True)\ndef guard():\n    yield\n"
        + note.format("guard"))
    (tmp_path / "test_order.py").write_text(
        "import pytest\n\n@pytest.fixture(scope='module')\ndef resource():\n    yield\n" + note.format("resource")
        + "\n\ndef test_uses_it(resource):\n    pass\n\n\ndef test_does_not():\n    pass\n")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    order = log.read_text().split()
    assert order == ["resource", "guard"], f"pytest {md.version('pytest')} tore down in the order {order}"
