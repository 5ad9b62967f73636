"""Helpers for the benchmarks in ``benchmarks/``: time side by side, record results.

Speed targets in this course are ratios measured side by side in one run (never timed
tests: shared machines are noisy). Each benchmark writes ``benchmarks/results/<name>.json``
with the machine, torch version and date, and the README's tables are generated from
those files (``llm-course readme``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llm_course.core.checks import check_int, check_positive_int

__all__ = ["timeit", "record", "machine_info", "results_dir", "format_table", "run_file"]


def timeit(fn: Callable[[], Any], repeat: int = 5, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeat`` runs after ``warmup`` runs."""
    check_positive_int("repeat", repeat)
    for _ in range(check_int("warmup", warmup, minimum=0)):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    import torch

    info = {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": _dt.date.today().isoformat(),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover - transformers is a core dependency
        pass
    from llm_course import versions

    try:  # the newest tested versions (llm_course.versions): what this run's environment has installed
        info["versions"] = {k: v for k, v in versions.installed_versions(versions.tracked_packages()).items() if v}
    except FileNotFoundError:  # not a clone: no requirements-floor.txt to say which packages are tracked
        pass
    return info


def results_dir() -> Path:
    """``benchmarks/results`` of the checkout (or ``$LLM_COURSE_RESULTS``)."""
    env = os.environ.get("LLM_COURSE_RESULTS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of ``rows`` (columns in first-seen order; floats to 4 significant digits)."""
    if not rows:
        return "(no rows)"
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)

    def cell(text: str) -> str:
        return text.replace("|", "\\|")  # a "|" inside a cell (e.g. "|dloss|") would split the column

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else cell(str(v))

    lines = ["| " + " | ".join(cell(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def record(name: str, rows: Sequence[dict[str, Any]], notes: str = "", quick: bool = False) -> Path | None:
    """Print ``rows`` as a table and save them to ``benchmarks/results/<name>.json``.

    Quick (smoke-test) runs print but do not overwrite the recorded results.
    """
    table = format_table(rows)
    print(f"\n## {name}\n\n{table}\n")
    if notes:
        print(notes)
    if quick:
        return None
    out = results_dir()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    payload = {"name": name, "notes": notes, "machine": machine_info(), "rows": list(rows)}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def run_file(path: str | Path, quick: bool = False) -> Any:
    """Import the benchmark script ``path`` and call its ``run(quick=...)``; returns its rows.

    Benchmarks set torch's thread count for their measurements; it is restored afterwards, so a caller
    (the test suite, ``llm-course bench``) keeps its own.
    """
    import importlib.util

    import torch

    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"{path} is not a Python file")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    threads = torch.get_num_threads()
    try:
        return mod.run(quick=quick)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":  # python -m llm_course.benchtools benchmarks/bench_x.py [--quick]: one benchmark
    import argparse

    parser = argparse.ArgumentParser(description="Run one benchmark script (llm-course bench runs them all).")
    parser.add_argument("path", type=Path)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, nothing recorded")
    args = parser.parse_args()
    run_file(args.path, quick=args.quick)
