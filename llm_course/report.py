"""Measured figures in the README: notebook times and memory, benchmark ratios.

Course infrastructure (chapter 01 set-up; the one benchmark report is classroom readiness).
The test run records each notebook's wall time and peak memory in
``benchmarks/results/notebooks.json``; each benchmark records its rows in
``benchmarks/results/<name>.json`` (see :mod:`llm_course.benchtools`). ``run_benchmarks()``
(``make bench`` / ``llm-course bench``) runs every ``benchmarks/bench_*.py``, each in its own
process, and writes ``benchmarks/results/report.json``: one file with the machine, every
benchmark's run time and status, every result table and the notebook figures.
``update_readme()`` regenerates the README's tables between ``<!-- BEGIN x -->`` /
``<!-- END x -->`` markers, so the numbers a reader sees are the numbers the last run measured.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llm_course import versions
from llm_course.benchtools import format_table, machine_info, results_dir
from llm_course.chapters import CHAPTERS, LAYERS, chapters_of, notebooks_dir
from llm_course.core.checks import check_positive
from llm_course.learn.assignments import solution_notebooks, student_path

__all__ = ["NOTEBOOK_STATS", "REPORT", "load_notebook_stats", "save_notebook_stats", "update_readme",
           "load_server_memory", "save_server_memory",
           "notebook_table", "exercise_links",
           "module_table", "package_modules", "benchmark_sections", "benchmark_files",
           "run_benchmarks", "load_report"]

NOTEBOOK_STATS = "notebooks.json"
REPORT = "report.json"
REPO_URL = "https://github.com/llm-course/llm-course"
COLAB_URL = "https://colab.research.google.com/github/llm-course/llm-course/blob/main/notebooks/{name}"
BINDER_URL = "https://mybinder.org/v2/gh/llm-course/llm-course/main?labpath=notebooks%2F{name}"
# The exercise notebooks (exercises/NN_<topic>.ipynb and its _solutions.ipynb): the same links, another folder.
EXERCISE_COLAB_URL = COLAB_URL.replace("/notebooks/", "/exercises/")
EXERCISE_BINDER_URL = BINDER_URL.replace("=notebooks%2F", "=exercises%2F")


def _stats_path() -> Path:
    return results_dir() / NOTEBOOK_STATS


def load_notebook_stats() -> dict[str, dict[str, Any]]:
    """Per-notebook measurements from the last test run that executed each notebook."""
    path = _stats_path()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return dict(data["notebooks"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a valid notebook-stats file ({exc}); delete it and rerun `make test`") from exc


def save_notebook_stats(entries: dict[str, dict[str, Any]]) -> Path:
    """Merge ``entries`` (notebook file name -> figures) into the stats file, atomically."""
    stats = load_notebook_stats()
    stats.update(entries)
    path = _stats_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine_info(), "notebooks": dict(sorted(stats.items()))}
    server = load_server_memory()
    if server is not None:  # measured by its own test (tests/test_binder_memory.py): kept across runs
        payload[SERVER_KEY] = server
    _write_json(path, payload)
    report = results_dir() / REPORT
    if report.exists():  # the one report carries the notebook figures of the latest test run too
        try:
            data = json.loads(report.read_text(encoding="utf-8"))
        except ValueError:
            data = None
        if isinstance(data, dict):
            data["notebooks"] = payload
            _write_json(report, data)
    return path


SERVER_KEY = "jupyter_server"


def load_server_memory() -> dict[str, Any] | None:
    """The JupyterLab server's measured memory (``{"pss_mb": ..., ...}``), or None if never measured."""
    path = _stats_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except ValueError:
        return None
    server = data.get(SERVER_KEY)
    return server if isinstance(server, dict) and "pss_mb" in server else None


def save_server_memory(pss_mb: float, **details: Any) -> Path:
    """Record JupyterLab's own server memory next to the notebook figures. Chapter-independent (Binder).

    On Binder the 2 GB limit covers the whole container: the server (``jupyter lab``) plus the kernel and
    every process the kernel starts. ``pss_mb``: the server process's proportional set size with a notebook
    open (its kernel excluded: that is counted per notebook); ``details``: how it was measured.
    """
    check_positive("pss_mb", pss_mb, hint="megabytes")
    path = _stats_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); delete it and rerun `make test`") from exc
    data[SERVER_KEY] = {"pss_mb": round(float(pss_mb), 1), **details}
    _write_json(path, data)
    return path


def _write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically (a crash never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def notebook_table() -> str:
    """The README's chapter table: notebook, manual section, links, measured time and memory."""
    stats = load_notebook_stats()
    server = load_server_memory()
    lines = [
        "| # | Notebook | Manual section (Russian) | Open | Exercises | Time (2 cores) | Peak memory (kernel) "
        "| Binder container |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for ch in CHAPTERS:
        nb = ch.notebook()
        if nb is None:
            lines.append(f"| {ch.number} | {ch.title} *(coming)* | {ch.manual_section} | | | | | |")
            continue
        s = stats.get(nb.name, {})
        t = f"{s['seconds']:.0f} s" if "seconds" in s else "not measured"
        m = f"{s['peak_rss_mb']:.0f} MB" if "peak_rss_mb" in s else ""
        c = ""  # the container's view: kernel + its children (PSS), plus the server when measured
        if "container_pss_mb" in s:
            c = f"{s['container_pss_mb']:.0f} MB"
            if server is not None:
                c += f" + {server['pss_mb']:.0f} = {s['container_pss_mb'] + server['pss_mb']:.0f} MB"
        if s.get("failed_cells"):
            t += f" ({s['failed_cells']} failed cells)"
        links = (f"[Colab]({COLAB_URL.format(name=nb.name)}) · "
                 f"[Binder]({BINDER_URL.format(name=nb.name)})")
        lines.append(f"| {ch.number} | [{ch.title}](notebooks/{nb.name}) | {ch.manual_section} "
                     f"| {links} | {exercise_links(ch.number)} | {t} | {m} | {c} |")
    machine = _notebook_machine()
    if machine:
        lines += ["", f"*Time and peak memory (the kernel's, VmHWM) measured by the test run (`make test`) on "
                      f"{_where(machine)}. Binder container: what a container's memory limit sees, the peak of "
                      "the kernel's and all its child processes' proportional set size (Ray's workers, "
                      "torchrun's ranks; sampled every 0.5 s)"
                      + (" plus JupyterLab's own server with a notebook open" if server else "")
                      + "; Binder's limit is 2 GB (2048 MB).*"]
    return "\n".join(lines)


def exercise_links(number: str) -> str:
    """The chapter's exercises and solutions, each with Colab and Binder links ("" if it has none yet)."""
    found = [p for p in solution_notebooks() if p.name.startswith(f"{number}_")]
    if not found:
        return ""
    parts = []
    for label, path in (("exercises", student_path(found[0])), ("solutions", found[0])):
        parts.append(f"[{label}](exercises/{path.name}) ([Colab]({EXERCISE_COLAB_URL.format(name=path.name)}), "
                     f"[Binder]({EXERCISE_BINDER_URL.format(name=path.name)}))")
    return " · ".join(parts)


def _notebook_machine() -> dict[str, Any] | None:
    path = _stats_path()
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("machine") if path.exists() else None
    except ValueError:
        return None


def _where(machine: dict[str, Any]) -> str:
    return (f"{machine.get('cpu_count', '?')} cores ({machine.get('machine', '?')}), "
            f"torch {machine.get('torch', '?')}, {machine.get('cuda') or 'CPU'}, {machine.get('date', '?')}")


def _result_files() -> list[Path]:
    return [p for p in sorted(results_dir().glob("*.json")) if p.name not in (NOTEBOOK_STATS, REPORT)]


def load_report() -> dict[str, Any] | None:
    """``benchmarks/results/report.json`` as written by :func:`run_benchmarks` (None if absent)."""
    path = results_dir() / REPORT
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        data["benchmarks"]  # noqa: B018 - the one key every report has
        return data
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a valid benchmark report ({exc}); delete it and rerun `make bench`") from exc


def _summary_table(rep: dict[str, Any]) -> str:
    total = rep.get("total_seconds")
    lines = [f"*`make bench` ran {len(rep['benchmarks'])} benchmarks"
             + (f" in {total / 60:.1f} min" if total else "") + f" on {_where(rep.get('machine', {}))}.*", "",
             "| Benchmark | Chapter | Compares | Run time | Status | Result tables |", "|---|---|---|---|---|---|"]
    for b in rep["benchmarks"]:
        tables = ", ".join(f"[{r}](#{r})" for r in b.get("results", [])) or "none"
        lines.append(f"| [{b['name']}]({b['file']}) | {b.get('chapter', '')} | {b.get('what', '')} "
                     f"| {b['seconds']:.0f} s | {b['status']} | {tables} |")
    return "\n".join(lines)


def benchmark_sections() -> str:
    """The report's summary table, then one Markdown section per recorded result, with its machine."""
    out = []
    rep = load_report()
    if rep and rep.get("benchmarks"):
        out.append(_summary_table(rep) + "\n")
    for path in _result_files():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            continue
        where = _where(data.get("machine", {}))
        # Rows with different columns (e.g. two experiments in one benchmark) get their own tables.
        groups: dict[tuple, list] = {}
        for row in data.get("rows", []):
            groups.setdefault(tuple(row), []).append(row)
        tables = "\n\n".join(format_table(rows) for rows in groups.values())
        out.append(f"#### {data.get('name', path.stem)}\n\n*Measured on {where}.*\n\n{tables}\n")
        if data.get("notes"):
            out.append(data["notes"] + "\n")
    return "\n".join(out) if out else "*No benchmark has been recorded yet: run `make bench`.*"


def benchmark_files(bench_dir: Path | None = None) -> dict[str, Path]:
    """``{name: path}`` of every ``bench_<name>.py`` in ``benchmarks/`` (or ``bench_dir``)."""
    bench_dir = bench_dir or notebooks_dir().parent / "benchmarks"
    return {f.stem[len("bench_"):]: f for f in sorted(bench_dir.glob("bench_*.py"))}


def _describe(path: Path) -> tuple[str, str]:
    """(chapter, what it compares) from a benchmark's docstring: its first line and "Chapter(s) NN"."""
    import ast

    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    first = doc.split("\n", 1)[0].strip().rstrip(".")
    m = re.search(r"Chapters? (\d\d(?:\s*[-\u2013]\s*\d\d)?)", doc)
    chapter = m.group(1).replace(" ", "") if m else ""
    what = re.sub(r"^(Benchmark:\s*)", "", first)
    what = re.sub(r"\.?\s*Chapters? \d\d.*$", "", what).strip()
    return chapter, what.replace("|", "/")


def run_benchmarks(names: Sequence[str] = (), quick: bool = False, bench_dir: Path | None = None,
                   timeout_s: float | None = None) -> dict[str, Any]:
    """Run benchmarks, each in a fresh process (``python -m llm_course.benchtools FILE``), and report.

    A benchmark that fails is recorded as failed and the others still run. Unless ``quick``, the
    report is written to ``benchmarks/results/report.json`` (entries of benchmarks not run this time
    are kept from the previous report) together with the notebook figures of the last test run, and
    the README is regenerated. Returns the report. Classroom readiness (``make bench``).
    """
    available = benchmark_files(bench_dir)
    if names:
        missing = [n for n in names if n not in available]
        if missing:
            raise ValueError(f"unknown benchmark {', '.join(missing)}; available: {', '.join(available)}")
        available = {n: available[n] for n in names}
    out_dir = results_dir()
    entries = []
    t_all = time.perf_counter()
    for name, path in available.items():
        before = {p.name: p.stat().st_mtime_ns for p in out_dir.glob("*.json")} if out_dir.exists() else {}
        print(f"== benchmark {name} ({path.name})", flush=True)
        cmd = [sys.executable, "-m", "llm_course.benchtools", str(path)] + (["--quick"] if quick else [])
        t0 = time.perf_counter()
        try:
            rc = subprocess.run(cmd, timeout=timeout_s).returncode
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {timeout_s:.0f} s"
        seconds = time.perf_counter() - t0
        written = sorted(p.stem for p in out_dir.glob("*.json")
                         if p.name not in (NOTEBOOK_STATS, REPORT) and before.get(p.name) != p.stat().st_mtime_ns
                         ) if out_dir.exists() else []
        chapter, what = _describe(path)
        entries.append({"name": name, "file": f"benchmarks/{path.name}", "chapter": chapter, "what": what,
                        "seconds": round(seconds, 1), "status": status, "results": written})
        print(f"== {name}: {status}, {seconds:.0f} s", flush=True)
    total = time.perf_counter() - t_all
    report: dict[str, Any] = {"generated": _dt.datetime.now().isoformat(timespec="seconds"),
                              "machine": machine_info(), "quick": quick}
    if quick:
        report.update(total_seconds=round(total, 1), benchmarks=entries)
        return report
    previous = {b["name"]: b for b in (load_report() or {}).get("benchmarks", [])}
    previous.update({e["name"]: e for e in entries})
    ordered = [previous[n] for n in benchmark_files(bench_dir) if n in previous]
    report.update(total_seconds=round(sum(b["seconds"] for b in ordered), 1), benchmarks=ordered)
    report["results"] = {}
    for path in _result_files():
        try:
            report["results"][path.stem] = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            report["results"][path.stem] = {"error": f"{path.name} is not valid JSON"}
    nb_path = _stats_path()
    if nb_path.exists():
        report["notebooks"] = json.loads(nb_path.read_text(encoding="utf-8"))
    _write_json(out_dir / REPORT, report)
    return report


def package_modules() -> dict[str, str]:
    """Every module of the package (dotted, without ``llm_course.``), with its docstring's first line.

    Read with ``ast``, so nothing is imported (the optional dependencies need not be installed).
    """
    import ast

    root = Path(__file__).resolve().parent
    found = {}
    for path in sorted(root.rglob("*.py")):
        if path.name == "__init__.py":
            continue
        name = ".".join(path.relative_to(root).with_suffix("").parts)
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        found[name] = doc.strip().split("\n")[0].rstrip(".")
    return found


def module_table() -> str:
    """The README's module table: each layer's modules, what each holds, and the chapters that teach it."""
    modules = package_modules()
    rows = ["| Layer | Module | What it holds | Chapter |", "|---|---|---|---|"]
    for layer in reversed(LAYERS):  # the top first, as in the diagram
        names = [m for m in modules if (m.split(".")[0] if "." in m else "") == layer.name]
        for i, name in enumerate(sorted(names)):
            chapters = ", ".join(ch.number for ch in chapters_of(name)) or "all"
            label = f"`{layer.name or '(top)'}`" if i == 0 else ""
            rows.append(f"| {label} | `llm_course.{name}` | {modules[name]} | {chapters} |")
    return "\n".join(rows) + "\n"


def _replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)", re.S)
    if not pattern.search(text):
        return text
    return pattern.sub(lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), text)


def update_readme(readme: Path | None = None) -> bool:
    """Regenerate the README's generated blocks. Returns True if the file changed."""
    readme = readme or notebooks_dir().parent / "README.md"
    if not readme.exists():
        return False
    old = readme.read_text(encoding="utf-8")
    new = _replace_block(old, "notebooks", notebook_table())
    new = _replace_block(new, "benchmarks", benchmark_sections())
    new = _replace_block(new, "modules", module_table())
    new = _replace_block(new, "tested-versions", versions.tested_table())
    if new != old:
        readme.write_text(new, encoding="utf-8")
        return True
    return False
