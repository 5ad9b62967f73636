"""requirements.txt, environment.yml and binder/ agree with pyproject.toml."""

import json
import os
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


CPU_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"
BINDER_MEMORY_MB = 2048  # mybinder.org gives a session about 2 GB


def _python_range_admits(spec: str, version: tuple[int, int]) -> bool:
    """True if a ``>=3.10,<3.13``-style range admits ``version`` (major, minor)."""
    ok = True
    for part in filter(None, spec.replace(" ", "").split(",")):
        op, num = re.match(r"(>=|<=|==|<|>)(\d+\.\d+)", part).groups()
        v = tuple(int(x) for x in num.split("."))
        ok &= {">=": version >= v, "<=": version <= v, "==": version == v, "<": version < v, ">": version > v}[op]
    return ok


def test_binder_folder_is_complete_on_its_own():
    """A binder/ folder makes mybinder.org ignore the root files: it must install everything itself."""
    binder = ROOT / "binder"
    runtime = (binder / "runtime.txt").read_text().strip()
    m = re.fullmatch(r"python-(\d+)\.(\d+)", runtime)
    assert m, f"binder/runtime.txt should read python-X.Y, not {runtime!r}"
    version = (int(m.group(1)), int(m.group(2)))
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert _python_range_admits(requires, version), f"Binder's {runtime} is outside requires-python {requires}"
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda_python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert _python_range_admits(conda_python[len("python"):], version), f"{runtime} vs environment.yml {conda_python}"
    # The CPU build of torch everywhere a plain pip install could otherwise pull a multi-GB CUDA build.
    for path in (binder / "requirements.txt", ROOT / "requirements.txt"):
        assert CPU_INDEX in path.read_text().splitlines(), f"{path.name} lacks {CPU_INDEX}"
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert CPU_INDEX in pip
    post = binder / "postBuild"
    assert os.access(post, os.X_OK), "binder/postBuild must be executable (git update-index --chmod=+x)"
    lines = [ln.strip() for ln in post.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0].startswith("set -e"), "postBuild must stop at the first failing command"


def test_requirement_files_agree_with_each_other():
    """binder/, requirements.txt and environment.yml: the same packages at the same versions."""
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda = dict(_norm(r) for r in pip if not r.startswith("-"))
    assert _lines(ROOT / "binder" / "requirements.txt") == _lines(ROOT / "requirements.txt") == conda


def test_every_notebook_fits_in_binders_memory():
    """Binder's 2 GB limit is the container's: for each notebook, the last test run's peak of the kernel plus
    all its child processes (PSS; benchmarks/results/notebooks.json, recorded by conftest.py) plus JupyterLab's
    own server with a notebook open (recorded by tests/test_binder_memory.py) is under 2 GB."""
    data = json.loads((ROOT / "benchmarks" / "results" / "notebooks.json").read_text())
    stats = data["notebooks"]
    server = data.get("jupyter_server", {}).get("pss_mb")
    assert server, "no recorded JupyterLab server memory: run `make test` (tests/test_binder_memory.py)"
    notebooks = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    missing = [n for n in notebooks if "container_pss_mb" not in stats.get(n, {})]
    assert not missing, f"no recorded container memory for {missing}: run `make test`"
    # The kernel's own peak (VmHWM) is part of the container figure, never more than it plus the slack of
    # sampling (PSS splits shared pages; VmHWM counts them whole): a container figure far below it is broken.
    for n in notebooks:
        assert stats[n]["container_pss_mb"] > 0.5 * stats[n]["peak_rss_mb"], (n, stats[n])
    total = {n: round(stats[n]["container_pss_mb"] + server) for n in notebooks}
    over = {n: mb for n, mb in total.items() if mb >= BINDER_MEMORY_MB}
    assert not over, (f"notebooks over Binder's {BINDER_MEMORY_MB} MB (kernel + children PSS + the server's "
                      f"{server:.0f} MB): {over}")


def test_badges_use_the_projects_repository_address():
    from llm_course.report import BINDER_URL, COLAB_URL, REPO_URL

    repo = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    assert REPO_URL == repo
    owner_name = repo.removeprefix("https://github.com/")
    assert f"/github/{owner_name}/blob/main/" in COLAB_URL and f"/gh/{owner_name}/main?" in BINDER_URL
