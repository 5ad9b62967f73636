"""Repository-wide pytest set-up: notebook timing and memory.

Every notebook in ``notebooks/`` is executed by nbval (``--nbval-lax``, configured in
pyproject.toml), one pytest item per cell, in a fresh kernel. This plugin measures each
notebook as a whole (wall time from kernel start to the last cell, and the kernel's peak
resident memory, VmHWM), prints a table at the end of the run and records the figures in
``benchmarks/results/notebooks.json``, from which the README's table is generated.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
# No test may reach a model hub: a missing offline file must fail loudly, not download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_NB_STATS: dict[str, dict] = {}


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """Run notebooks the way a student gets them: nbval in lax mode (a cell fails on an error
    or a failed assert, outputs are not compared), in a kernel of this very environment."""
    if config.pluginmanager.hasplugin("nbval") and not config.option.nbval:
        config.option.nbval_lax = True
        config.option.nbval_current_env = True
_NB_START: dict[str, float] = {}


def _is_cell(item) -> bool:
    return type(item).__name__ == "IPyNbCell"


def _kernel_pid(item) -> int | None:
    kernel = getattr(item.parent, "kernel", None)
    km = getattr(kernel, "km", None)
    prov = getattr(km, "provisioner", None)
    for obj in (prov, getattr(prov, "process", None)):
        pid = getattr(obj, "pid", None)
        if isinstance(pid, int):
            return pid
    return None


def _peak_rss_mb(pid: int) -> float | None:
    """Peak resident memory (VmHWM) of the kernel and of its live children, in MB."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a test dependency
        return None
    try:
        proc = psutil.Process(pid)
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return None
    total = 0
    for p in procs:
        status = Path(f"/proc/{p.pid}/status")
        try:
            hwm = [ln for ln in status.read_text().splitlines() if ln.startswith("VmHWM:")]
            total += int(hwm[0].split()[1]) * 1024
        except (OSError, IndexError, ValueError):  # not Linux: current RSS is the best we have
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
    return total / 2**20


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    if _is_cell(item):
        _NB_START.setdefault(item.parent.name, time.perf_counter())
        # nbval waits only 5 s for each output message after a cell returns; a cell that streams
        # many live-plot updates on a busy shared machine can exceed that without anything being
        # wrong. Cell execution itself keeps nbval's own (long) timeout.
        item.output_timeout = max(getattr(item, "output_timeout", 5), 120)
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    if _is_cell(item) and (nextitem is None or nextitem.parent is not item.parent):
        # Last cell of this notebook: measure before nbval stops the kernel.
        name = item.parent.name
        pid = _kernel_pid(item)
        stats = _NB_STATS.setdefault(Path(name).name, {"cells": 0, "failed_cells": 0})
        stats["seconds"] = round(time.perf_counter() - _NB_START.get(name, time.perf_counter()), 1)
        mb = _peak_rss_mb(pid) if pid else None
        if mb is not None:
            stats["peak_rss_mb"] = round(mb, 1)
    yield


def pytest_runtest_logreport(report):
    if ".ipynb::" in report.nodeid and report.when == "call":
        name = Path(report.nodeid.split("::", 1)[0]).name
        stats = _NB_STATS.setdefault(name, {"cells": 0, "failed_cells": 0})
        stats["cells"] += 1
        stats["failed_cells"] += int(report.failed)


def pytest_terminal_summary(terminalreporter):
    if not _NB_STATS:
        return
    tr = terminalreporter
    tr.section("notebooks: wall time and peak memory")
    tr.write_line(f"{'notebook':45s} {'seconds':>8s} {'peak MB':>8s} {'cells':>6s} {'failed':>6s}")
    for name, s in sorted(_NB_STATS.items()):
        tr.write_line(f"{name:45s} {s.get('seconds', float('nan')):8.1f} "
                      f"{s.get('peak_rss_mb', float('nan')):8.0f} {s['cells']:6d} {s['failed_cells']:6d}")


def pytest_sessionfinish(session, exitstatus):
    # Record only complete notebook runs (every cell executed) so a `-k` selection
    # cannot overwrite a full measurement with a partial one.
    complete = {}
    for item in session.items:
        if _is_cell(item):
            name = Path(item.parent.name).name
            complete.setdefault(name, 0)
            complete[name] += 1
    entries = {n: s for n, s in _NB_STATS.items() if "seconds" in s and s["cells"] == complete.get(n)}
    if not entries or os.environ.get("LLM_COURSE_NO_RECORD"):
        return
    from llm_course.report import save_notebook_stats, update_readme

    save_notebook_stats(entries)
    update_readme()
