"""The package's architecture, checked: layers import only downwards, no private names cross modules,
no import cycles (hidden ones included), and each module stays one readable idea.

``llm_course`` is a stack of subpackages (README, "How the code is organised")::

    cli, report, benchtools, chapters      the command line and the README's tables
    learn                                  show_source, questions with feedback, exercise checkers, nbgrader
    widgets                                ipywidgets explorers (attention, sampling)
    apps                                   chat bot, classification, summarization
    zoo                                    shipped checkpoints: recipes, loading, making them
    train                                  the loop, precision, checkpoints, pretraining, SFT, fine-tuning, PEFT, ...
    infer                                  generation, the static cache, ONNX, long inputs
    viz                                    figures without ipywidgets: token labels, attention data, plots
    models                                 GPT, BERT, T5, the manual's chapter-02 models, save/load
    nn                                     attention, training objectives, quantization
    text                                   tokenizer, corpora, synthetic tasks
    core                                   checks, device and seeds, optional dependencies, paths

A module may import from its own layer and the layers below it. The checker reads the source with
``ast`` (imports inside functions count; imports under ``if TYPE_CHECKING:`` do not, since they never
run), so it needs neither the optional dependencies nor an import of the package.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "llm_course"

# Lowest first. Top-level modules (cli.py, report.py, ...) form the top layer, "".
LAYERS = ("core", "text", "nn", "models", "viz", "infer", "train", "zoo", "apps", "widgets", "learn", "")

# Modules over MAX_LINES that are one idea, and why. Anything else over the limit is a defect.
MAX_LINES = 500
# The one module that may import by a name computed at run time: require() loads optional
# third-party packages (ray, wandb, ...) and says how to install a missing one.
COMPUTED_IMPORTS_OK = {"llm_course.core.deps"}
ONE_IDEA = {
    "llm_course.text.tokenizer": "byte-level BPE: training, encoding, decoding, save/load of one tokenizer",
    "llm_course.train.distributed": "DDP on CPU: the worker, the launcher and its diagnosis of failed ranks",
    "llm_course.train.hpsearch": "one Ray Tune search: the trainable, the search and its report",
    "llm_course.models.t5": "one model, T5 (like gpt.py): config, relative position bias, blocks, encoder-decoder",
    "llm_course.widgets.sampling_explorer": "one widget, SamplingExplorer: its controls, its step/generate/reset "
                                            "actions and what it shows (the figure itself is viz.distributions)",
}


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module that contains the import
    target: str  # dotted module imported from
    names: tuple[str, ...]  # names imported from it ("" for a plain module import)
    line: int


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
    return lines


def imports_of(path: Path, root: Path) -> list[Import]:
    """Every import of the package's own modules in one file, resolved to dotted names.

    ``importlib.import_module("llm_course.x")`` with a constant string counts as an import too: a
    module loaded by name is still a dependency, only a hidden one.
    """
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_lines(tree)
    top = root.name
    found: list[Import] = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == top or target.startswith(top + "."):
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if (root.parent / (sub.replace(".", "/") + ".py")).exists() or (
                            root.parent / sub.replace(".", "/") / "__init__.py").exists():
                        found.append(Import(me, sub, ("",), node.lineno))  # "from pkg import module"
                    else:
                        found.append(Import(me, target, (alias.name,), node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == top or alias.name.startswith(top + "."):
                    found.append(Import(me, alias.name, ("",), node.lineno))
        elif isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            if func in ("importlib.import_module", "import_module", "__import__") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith(top):
                    found.append(Import(me, arg.value, ("",), node.lineno))
                elif not isinstance(arg, ast.Constant):
                    found.append(Import(me, "<computed>", ("",), node.lineno))
    return found


def layer_of(module: str) -> int:
    parts = module.split(".")
    sub = parts[1] if len(parts) > 2 else ""
    if len(parts) == 2 and parts[1] in LAYERS:  # the subpackage itself (its __init__)
        sub = parts[1]
    return LAYERS.index(sub) if sub in LAYERS else len(LAYERS) - 1


def all_imports(root: Path = PACKAGE) -> list[Import]:
    return [imp for path in sorted(root.rglob("*.py")) for imp in imports_of(path, root)]


def layer_violations(root: Path = PACKAGE) -> list[str]:
    out = []
    for imp in all_imports(root):
        if imp.target == "<computed>":
            if imp.importer not in COMPUTED_IMPORTS_OK:
                out.append(f"{imp.importer}:{imp.line} imports a module whose name is computed at run time")
        elif layer_of(imp.target) > layer_of(imp.importer):
            out.append(f"{imp.importer}:{imp.line} ({LAYERS[layer_of(imp.importer)] or 'top'}) imports "
                       f"{imp.target} ({LAYERS[layer_of(imp.target)] or 'top'}), a layer above it")

    return out


def private_imports(root: Path = PACKAGE) -> list[str]:
    return [f"{imp.importer}:{imp.line} imports private {imp.target}.{name}"
            for imp in all_imports(root) if imp.target != imp.importer
            for name in imp.names if name.startswith("_") and not name.startswith("__")]


def import_cycles(root: Path = PACKAGE) -> list[list[str]]:
    """Cycles in the module graph (an edge for every import, wherever it is written)."""
    modules = {module_name(p, root) for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for imp in all_imports(root):
        target = imp.target
        while target and target not in modules:  # "llm_course.x.y.Name" -> its module
            target = target.rpartition(".")[0]
        if target and target != imp.importer and not imp.importer.startswith(target + "."):
            if not (root.parent / (target.replace(".", "/")) / "__init__.py").exists():
                graph[imp.importer].add(target)
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    return cycles


def long_modules(root: Path = PACKAGE) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        n = len(path.read_text(encoding="utf-8").splitlines())
        name = module_name(path, root)
        if n > MAX_LINES and name not in ONE_IDEA:
            out.append(f"{name}: {n} lines (split it, or add it to ONE_IDEA with the one idea it holds)")
    return out


# ---------------------------------------------------------------------------------------------------
# The package itself
# ---------------------------------------------------------------------------------------------------


def test_every_module_is_in_a_layer():
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).parts
        assert len(parts) == 1 or parts[0] in LAYERS, f"{path}: not in one of the layers {LAYERS}"
        assert len(parts) <= 2, f"{path}: subpackages are one level deep"


def test_layers_import_only_downwards():
    assert layer_violations() == []


def test_no_private_name_crosses_a_module():
    assert private_imports() == []


def test_no_import_cycles():
    assert import_cycles() == []


def test_modules_stay_one_idea():
    assert long_modules() == []
    for name in ONE_IDEA:
        assert (PACKAGE.parent / (name.replace(".", "/") + ".py")).exists(), f"ONE_IDEA names a missing {name}"


# ---------------------------------------------------------------------------------------------------
# The checker can fail: a small package with each defect
# ---------------------------------------------------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "llm_course"
    for rel, text in files.items():
        path = pkg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return pkg


def test_checker_finds_each_kind_of_defect(tmp_path):
    pkg = _write(tmp_path, {
        "__init__.py": "",
        "core/__init__.py": "",
        "core/checks.py": "def f():\n    from llm_course.train.loop import train  # upwards, inside a function\n",
        "train/__init__.py": "",
        "train/loop.py": "from llm_course.core.checks import f\nfrom ..core.checks import _private\n"
                         "def train(): pass\n",
        "zoo/__init__.py": "",
        "zoo/build.py": "import importlib\nTASKS = {'chat': 'llm_course.apps.chat'}\n"
                        "def task(name):\n    return importlib.import_module(TASKS[name])\n",
        "apps/__init__.py": "",
        "apps/chat.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                        "    from llm_course.widgets.x import Y  # never runs: allowed\n"
                        "from llm_course.zoo.build import task\n",
        "train/big.py": "x = 1\n" * (MAX_LINES + 1),
    })
    assert layer_violations(pkg) == [
        "llm_course.core.checks:2 (core) imports llm_course.train.loop (train), a layer above it",
        "llm_course.zoo.build:4 imports a module whose name is computed at run time",
    ]
    assert private_imports(pkg) == ["llm_course.train.loop:2 imports private llm_course.core.checks._private"]
    assert import_cycles(pkg) == [["llm_course.core.checks", "llm_course.train.loop", "llm_course.core.checks"]]
    assert long_modules(pkg) == [f"llm_course.train.big: {MAX_LINES + 1} lines (split it, or add it to ONE_IDEA "
                                 "with the one idea it holds)"]


@pytest.mark.parametrize("module, layer", [("llm_course.core.checks", "core"), ("llm_course.cli", ""),
                                           ("llm_course.zoo", "zoo"), ("llm_course.widgets.sampling_explorer",
                                                                      "widgets")])
def test_layer_of(module, layer):
    assert LAYERS[layer_of(module)] == layer


# ---------------------------------------------------------------------------------------------------
# A student finds a chapter's code in one step: llm_course.chapters and the README map it
# ---------------------------------------------------------------------------------------------------


def test_layer_order_is_the_one_the_course_documents():
    from llm_course.chapters import LAYERS as documented

    assert tuple(layer.name for layer in documented) == LAYERS


def test_every_module_is_taught_by_a_chapter():
    from llm_course.chapters import CHAPTERS
    from llm_course.report import package_modules

    modules = package_modules()
    mapped = {m for ch in CHAPTERS for m in ch.modules}
    assert sorted(mapped - set(modules)) == [], "llm_course.chapters names modules that do not exist"
    unmapped = sorted(m for m in modules if "." in m and m not in mapped)  # top-level modules serve all
    assert unmapped == [], "add these modules to the chapter that teaches them (llm_course.chapters)"
    for name, doc in modules.items():
        assert doc, f"llm_course.{name} has no docstring"


def test_notebooks_import_only_modules_the_map_names():
    import json
    import re

    from llm_course.chapters import CHAPTERS, chapter_of, notebooks_dir

    mapped = {m for ch in CHAPTERS for m in ch.modules}
    for nb in sorted(notebooks_dir().glob("[0-9][0-9]_*.ipynb")):
        code = "\n".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code")
        used = set(re.findall(r"^\s*from llm_course\.([\w.]+) import", code, re.M))
        used = {m for m in used if "." in m}  # subpackage modules (top-level ones serve every chapter)
        assert used <= mapped, f"{nb.name} imports modules no chapter names: {sorted(used - mapped)}"
        own = set(chapter_of(nb).modules)
        assert own & used, f"{nb.name} imports none of the modules its chapter names"


def test_readme_module_table_is_current():
    import re

    from llm_course.report import module_table

    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- BEGIN modules -->\n(.*?)<!-- END modules -->", readme, re.S)
    assert block, "README.md lost its generated module table"
    assert block.group(1) == module_table(), "the README's module table is stale: run `make readme`"
