"""Which versions of the course's dependencies are tested, and whether the installed ones are. Chapter 01 (set-up).

Two environments run the same tests (README, "Tested versions"):

* the main one (``make test``) installs the newest release of every dependency pyproject.toml allows;
  its last full test run records the versions it used (``benchmarks/results/notebooks.json``,
  ``machine.versions``): the **newest tested**;
* the floor one (``make test-floor``) installs the oldest, pinned in ``requirements-floor.txt`` at the
  repository's root: the **oldest tested**.

A dependency's tested range runs from the one to the other, and both come from those two files only.
torch is the exception: the floor file does not pin it, because the only torch build installable on the
project's CPU machines is the CPU wheel the Makefile installs in both environments, so only that version
is tested. ``llm-course check`` prints, for each installed version, whether it is inside its range.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["FLOOR_FILE", "floor_pins", "tracked_packages", "installed_versions", "newest_tested",
           "tested_status", "tested_rows", "tested_table"]

ROOT = Path(__file__).resolve().parent.parent
FLOOR_FILE = ROOT / "requirements-floor.txt"
NOTEBOOK_STATS = ROOT / "benchmarks" / "results" / "notebooks.json"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._\-]*)==([0-9][A-Za-z0-9.+!\-]*)$")


def _canonical(name: str) -> str:
    """PyPI's normalized form of a distribution name: ``PyYAML`` -> ``pyyaml``, ``rouge_score`` -> ``rouge-score``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def floor_pins(path: Path | str | None = None) -> dict[str, str]:
    """The oldest tested version of each pinned dependency: ``{"transformers": "4.50.0", ...}``. Chapter 01.

    Reads ``requirements-floor.txt`` (``name==version`` lines, ``#`` comments). A line that is not such a pin
    is a ValueError naming the line, since pip would read it differently. FileNotFoundError if the file is
    missing: the package then runs from an install that is not a clone (``pip install git+...``).
    """
    path = Path(FLOOR_FILE if path is None else path)
    pins = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = _PIN.match(line.replace(" ", ""))
        if m is None:
            raise ValueError(f"{path.name}:{number}: {raw.strip()!r} is not a pin of the form name==version")
        pins[_canonical(m.group(1))] = m.group(2)
    return pins


def tracked_packages(path: Path | str | None = None) -> list[str]:
    """The dependencies whose tested range is recorded: torch and every package the floor file pins."""
    return ["torch", *sorted(n for n in floor_pins(path) if n != "torch")]


def installed_versions(names: Iterable[str]) -> dict[str, str | None]:
    """The installed version of each distribution (None: not installed)."""
    found = {}
    for name in names:
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = None
    return found


def newest_tested(stats_path: Path | str | None = None) -> dict[str, str]:
    """The versions the main environment's last full test run used (``machine.versions``; {} if none)."""
    path = Path(NOTEBOOK_STATS if stats_path is None else stats_path)
    try:
        machine = json.loads(path.read_text(encoding="utf-8")).get("machine", {})
    except (OSError, ValueError):
        return {}
    versions = machine.get("versions", {}) if isinstance(machine, dict) else {}
    return {_canonical(k): str(v) for k, v in versions.items() if v}


def _release(version: str) -> tuple[int, ...]:
    """The numeric release of a version: "2.13.0+cpu" -> (2, 13, 0), "5.0.0rc1" -> (5, 0, 0)."""
    from packaging.version import Version

    return Version(version).release


def tested_status(installed: str | None, oldest: str | None, newest: str | None) -> tuple[bool | None, str]:
    """Whether ``installed`` is inside the tested range ``oldest``..``newest``, and a line saying so.

    Returns ``(True, ...)`` inside (a local build tag such as ``+cpu`` is ignored), ``(False, ...)`` older
    than the oldest or newer than the newest tested, ``(None, ...)`` when it cannot be told (not installed,
    or no range recorded). Either end may be None (unknown); a missing floor means the floor is untested.
    """
    if installed is None:
        return None, "not installed"
    if oldest is None and newest is None:
        return None, "no tested range recorded"
    v = _release(installed)
    if oldest is not None and v < _release(oldest):
        return False, f"OLDER than the oldest tested, {oldest}: untested, upgrade to >= {oldest}"
    if newest is not None and v > _release(newest):
        low = oldest or "untested floor"
        return False, f"NEWER than the newest tested, {newest} (tested {low} .. {newest}): untested"
    if oldest is None:  # torch: both environments install the same build
        if v != _release(newest):
            return False, f"untested: only {newest} is tested (older builds are not installable on the test machines)"
        return True, f"tested ({newest} is the only version tested)"
    return True, f"inside the tested range {oldest} .. {newest or '(newest not recorded)'}"


def tested_rows(floor: Mapping[str, str] | None = None,
                newest: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """``(package, "VERSION: inside the tested range ...")`` for every tracked package (``llm-course check``)."""
    try:
        floor = floor_pins() if floor is None else dict(floor)
    except FileNotFoundError:
        return [("tested versions", f"unknown here: {FLOOR_FILE.name} is in the course's repository, not in an "
                                    "installed package (see the README's 'Tested versions')")]
    newest = newest_tested() if newest is None else dict(newest)
    rows = []
    for name, version in installed_versions(["torch", *sorted(n for n in floor if n != "torch")]).items():
        _, text = tested_status(version, floor.get(name), newest.get(name))
        rows.append((name, f"{version}: {text}" if version else text))
    return rows


def tested_table(floor: Mapping[str, str] | None = None, newest: Mapping[str, str] | None = None) -> str:
    """The README's "Tested versions" table (``make readme``): each tracked package's oldest and newest tested."""
    floor = floor_pins() if floor is None else dict(floor)
    newest = newest_tested() if newest is None else dict(newest)
    lines = ["| package | oldest tested (`make test-floor`) | newest tested (`make test`) |", "|---|---|---|"]
    for name in ["torch", *sorted(n for n in floor if n != "torch")]:
        low = floor.get(name) or f"{newest.get(name, '?')} (older builds not installable here: untested)"
        lines.append(f"| {name} | {low} | {newest.get(name, 'not recorded yet')} |")
    return "\n".join(lines)
