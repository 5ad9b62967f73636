"""Repository-wide pytest set-up: notebook timing and memory.

Every notebook in ``notebooks/`` is executed by nbval (``--nbval-lax``, configured in
pyproject.toml), one pytest item per cell, in a fresh kernel. This plugin measures each
notebook as a whole (wall time from kernel start to the last cell, the kernel's peak
resident memory, VmHWM, and what a container's memory limit sees: the peak of the kernel's and all
its child processes' proportional set size, sampled every 0.5 s), prints a table at the end of the
run and records the figures in ``benchmarks/results/notebooks.json``, from which the README's table
is generated.
"""

from __future__ import annotations

import os
import threading
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
        # A cell that runs 15 minutes is stuck, not slow (the slowest default cell takes about 90 s on 2
        # quiet cores): fail it with nbval's message naming the cell, instead of CI's overall time limit.
        if getattr(config.option, "nbval_cell_timeout", None) in (None, 2000):
            config.option.nbval_cell_timeout = 900
_NB_START: dict[str, float] = {}  # by the notebook's node id: notebooks/01_x.ipynb and notebooks/ru/01_x.ipynb differ
_NB_SAMPLERS: dict[str, _ContainerMemory] = {}


def _stats_key(path: str) -> str:
    """The notebook's key in the recorded figures: its name, with the language folder for a translation
    (``ru/01_introduction_and_tokenization.ipynb``), so the two editions never overwrite each other."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name in ("ru",) else p.name


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


class _ContainerMemory:
    """What a container's memory limit (Binder's 2 GB) sees of a notebook: the kernel and every process
    it started (Ray's daemons and workers, torchrun's ranks, ...), summed as proportional set size (PSS:
    a page shared by n processes counts 1/n in each, so shared libraries and shared memory count once).
    A cgroup also charges page cache, which no process sum sees; PSS is the processes' own share.

    Sampled in a background thread every ``every_s`` seconds from the notebook's first cell to its
    last; ``peak_mb`` is the largest sum seen (a spike shorter than the interval can be missed)."""

    def __init__(self, pid: int, every_s: float = 0.5) -> None:
        import psutil

        self.psutil, self.pid, self.every_s = psutil, pid, every_s
        self.peak_mb = 0.0
        self.peak_processes = 0
        self.cell = self.peak_cell = ""  # the cell running now / when the peak was seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="container-memory", daemon=True)
        self._thread.start()

    def sample(self) -> None:
        try:
            kernel = self.psutil.Process(self.pid)
            procs = [kernel] + kernel.children(recursive=True)
        except self.psutil.Error:
            return  # the kernel has exited
        total = 0
        for proc in procs:
            try:
                info = proc.memory_full_info()  # reads /proc/PID/smaps_rollup
                total += getattr(info, "pss", info.rss)  # not Linux: RSS, an upper bound
            except self.psutil.Error:
                pass  # a child that just exited, or one we may not read
        if total / 2**20 > self.peak_mb:
            self.peak_mb, self.peak_processes, self.peak_cell = total / 2**20, len(procs), self.cell

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def stop(self) -> float:
        """Stop sampling (one last sample first) and return the peak in MB."""
        self.sample()
        self._stop.set()
        self._thread.join()
        return self.peak_mb


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    if _is_cell(item):
        _NB_START.setdefault(item.parent.nodeid, time.perf_counter())
        # nbval waits only 5 s for each output message after a cell returns; a cell that streams
        # many live-plot updates on a busy shared machine can exceed that without anything being
        # wrong. Cell execution itself keeps nbval's own (long) timeout.
        item.output_timeout = max(getattr(item, "output_timeout", 5), 120)
    yield
    # After the setup: nbval has started this notebook's kernel by now.
    if _is_cell(item) and item.parent.nodeid not in _NB_SAMPLERS:
        pid = _kernel_pid(item)
        try:
            if pid:
                _NB_SAMPLERS[item.parent.nodeid] = _ContainerMemory(pid)
        except ImportError:  # pragma: no cover - psutil is a test dependency
            pass
    if _is_cell(item) and item.parent.nodeid in _NB_SAMPLERS:
        _NB_SAMPLERS[item.parent.nodeid].cell = item.name  # "Cell 16": where a peak happens


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    if _is_cell(item) and (nextitem is None or nextitem.parent is not item.parent):
        # Last cell of this notebook: measure before nbval stops the kernel.
        name = item.parent.nodeid
        pid = _kernel_pid(item)
        stats = _NB_STATS.setdefault(_stats_key(str(item.parent.path)), {"cells": 0, "failed_cells": 0})
        stats["seconds"] = round(time.perf_counter() - _NB_START.get(name, time.perf_counter()), 1)
        mb = _peak_rss_mb(pid) if pid else None
        if mb is not None:
            stats["peak_rss_mb"] = round(mb, 1)
        sampler = _NB_SAMPLERS.pop(name, None)
        if sampler is not None:
            stats["container_pss_mb"] = round(sampler.stop(), 1)
            stats["container_processes"] = sampler.peak_processes
            stats["container_peak_cell"] = sampler.peak_cell
    yield


def pytest_runtest_logreport(report):
    if ".ipynb::" in report.nodeid and report.when == "call":
        name = _stats_key(report.nodeid.split("::", 1)[0])
        stats = _NB_STATS.setdefault(name, {"cells": 0, "failed_cells": 0})
        stats["cells"] += 1
        stats["failed_cells"] += int(report.failed)


def pytest_terminal_summary(terminalreporter):
    if not _NB_STATS:
        return
    tr = terminalreporter
    tr.section("notebooks: wall time and peak memory (kernel VmHWM; kernel + children PSS)")
    tr.write_line(f"{'notebook':45s} {'seconds':>8s} {'peak MB':>8s} {'PSS MB':>8s} {'cells':>6s} {'failed':>6s}")
    for name, s in sorted(_NB_STATS.items()):
        tr.write_line(f"{name:45s} {s.get('seconds', float('nan')):8.1f} "
                      f"{s.get('peak_rss_mb', float('nan')):8.0f} {s.get('container_pss_mb', float('nan')):8.0f} "
                      f"{s['cells']:6d} {s['failed_cells']:6d}")


def pytest_sessionfinish(session, exitstatus):
    # Record only complete notebook runs (every cell executed) so a `-k` selection
    # cannot overwrite a full measurement with a partial one.
    complete = {}
    for item in session.items:
        if _is_cell(item):
            name = _stats_key(str(item.parent.path))
            complete.setdefault(name, 0)
            complete[name] += 1
    entries = {n: s for n, s in _NB_STATS.items() if "seconds" in s and s["cells"] == complete.get(n)}
    if not entries or os.environ.get("LLM_COURSE_NO_RECORD"):
        return
    from llm_course.report import save_notebook_stats, update_readme

    save_notebook_stats(entries)
    update_readme()
