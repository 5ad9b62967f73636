"""Measured figures in the README: notebook times and memory, benchmark ratios.

Course infrastructure (chapter 01 set-up). The test run records each notebook's wall time
and peak memory in ``benchmarks/results/notebooks.json``; each benchmark records its rows in
``benchmarks/results/<name>.json`` (see :mod:`llm_course.benchtools`). ``update_readme()``
regenerates the README's tables between ``<!-- BEGIN x -->`` / ``<!-- END x -->`` markers,
so the numbers a reader sees are the numbers the last run measured.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from .benchtools import format_table, machine_info, results_dir
from .chapters import CHAPTERS, notebooks_dir

__all__ = ["NOTEBOOK_STATS", "load_notebook_stats", "save_notebook_stats", "update_readme",
           "notebook_table", "benchmark_sections"]

NOTEBOOK_STATS = "notebooks.json"
REPO_URL = "https://github.com/llm-course/llm-course"
COLAB_URL = "https://colab.research.google.com/github/llm-course/llm-course/blob/main/notebooks/{name}"
BINDER_URL = "https://mybinder.org/v2/gh/llm-course/llm-course/main?labpath=notebooks%2F{name}"


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
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def notebook_table() -> str:
    """The README's chapter table: notebook, manual section, links, measured time and memory."""
    stats = load_notebook_stats()
    lines = [
        "| # | Notebook | Manual section (Russian) | Open | Time (2 cores) | Peak memory |",
        "|---|---|---|---|---|---|",
    ]
    for ch in CHAPTERS:
        nb = ch.notebook()
        if nb is None:
            lines.append(f"| {ch.number} | {ch.title} *(coming)* | {ch.manual_section} | | | |")
            continue
        s = stats.get(nb.name, {})
        t = f"{s['seconds']:.0f} s" if "seconds" in s else "not measured"
        m = f"{s['peak_rss_mb']:.0f} MB" if "peak_rss_mb" in s else ""
        if s.get("failed_cells"):
            t += f" ({s['failed_cells']} failed cells)"
        links = (f"[Colab]({COLAB_URL.format(name=nb.name)}) · "
                 f"[Binder]({BINDER_URL.format(name=nb.name)})")
        lines.append(f"| {ch.number} | [{ch.title}](notebooks/{nb.name}) | {ch.manual_section} "
                     f"| {links} | {t} | {m} |")
    return "\n".join(lines)


def benchmark_sections() -> str:
    """One Markdown section per recorded benchmark, with the machine it ran on."""
    out = []
    for path in sorted(results_dir().glob("*.json")):
        if path.name == NOTEBOOK_STATS:
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            continue
        m = data.get("machine", {})
        where = (f"{m.get('cpu_count', '?')} cores, torch {m.get('torch', '?')}, "
                 f"{m.get('cuda') or 'CPU'}, {m.get('date', '?')}")
        # Rows with different columns (e.g. two experiments in one benchmark) get their own tables.
        groups: dict[tuple, list] = {}
        for row in data.get("rows", []):
            groups.setdefault(tuple(row), []).append(row)
        tables = "\n\n".join(format_table(rows) for rows in groups.values())
        out.append(f"#### {data.get('name', path.stem)}\n\n*Measured on {where}.*\n\n{tables}\n")
        if data.get("notes"):
            out.append(data["notes"] + "\n")
    return "\n".join(out) if out else "*No benchmark has been recorded yet: run `make bench`.*"


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
    if new != old:
        readme.write_text(new, encoding="utf-8")
        return True
    return False
