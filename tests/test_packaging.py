"""requirements.txt, environment.yml and binder/ agree with pyproject.toml."""

import re
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest brings tomli
    import tomli as tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _norm(req: str) -> tuple[str, str]:
    m = re.match(r"^\s*([A-Za-z0-9_.\-\[\]]+)\s*(.*)$", req)
    name = re.sub(r"[-_.]+", "-", m.group(1).split("[")[0]).lower()
    return name, m.group(2).replace(" ", "")


def _pyproject() -> dict[str, str]:
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = proj["dependencies"] + proj["optional-dependencies"]["lab"] + proj["optional-dependencies"]["test"]
    return dict(_norm(r) for r in reqs)


def _lines(path: Path) -> dict[str, str]:
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    return dict(_norm(ln) for ln in lines if ln and not ln.startswith(("#", "-")))


def test_requirements_match_pyproject():
    assert _lines(ROOT / "requirements.txt") == _pyproject()


def test_binder_requirements_match_pyproject():
    assert _lines(ROOT / "binder" / "requirements.txt") == _pyproject()
    post = (ROOT / "binder" / "postBuild").read_text()
    assert "set -e" in post and "pip install --no-deps -e ." in post


def test_environment_yml_matches_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert dict(_norm(r) for r in pip if not r.startswith("-")) == _pyproject()


def test_torch_range_admits_the_pinned_cpu_wheel_and_colab():
    # The Makefile installs torch==2.13.0 first; the project's range must accept it (and older Colab builds).
    assert _pyproject()["torch"] == ">=2.4"
    assert "TORCH_VERSION ?= 2.13.0" in (ROOT / "Makefile").read_text()
