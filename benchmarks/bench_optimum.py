"""Hugging Face Optimum's ONNX export vs the course's, same weights, side by side. Chapter 07 (inference).

The cached ONNX graph (``llm_course.infer.onnx_cache``) follows Optimum's ORT causal-LM export: the
same input and output names, ``past_key_values.{i}.key`` in and ``present.{i}.key`` out. This run puts
the two next to each other on the shipped course-gpt, saved in transformers' format (a float32
``GPT2LMHeadModel`` folder, as a student would hand it to Optimum), in ONE run:

1. **Three exports of the same weights**: Optimum's exporter (``optimum.exporters.onnx.main_export``,
   task ``text-generation-with-past``, run by ``ORTModelForCausalLM``); the course's
   ``export_onnx_cached`` on the course's ``GPT``; and the course's exporter on the ``GPT2LMHeadModel``
   itself (transformers' forward inside the course's wrapper). Graph facts of each: nodes in the file
   and after ONNX Runtime's optimisation (with the fused operators it made), file size, opset, input and
   output names, export time.
2. **Greedy generation**, 128 new tokens after the prompt "The function returns", with 1 and 2 ONNX
   Runtime intra-op threads (= torch threads): ``ORTModelForCausalLM.generate`` (transformers' generate
   loop around ONNX Runtime: what Optimum's users call), Optimum's graph driven by a plain numpy greedy
   loop (the graph alone), ``OnnxCachedLM.generate`` on each course export, and the two PyTorch eager
   paths (the course's ``generate`` and ``GPT2LMHeadModel.generate``, both with their KV cache) for
   scale. Every contender's ids are asserted equal to PyTorch's cached ``generate`` before timing.
   Rounds alternate the contenders; a ratio is the median of per-round ratios.

Optimum's ONNX Runtime part (optimum-onnx 0.1.0, the newest release) needs transformers<4.58, and the
course's main environment has transformers 5.x, so this benchmark runs in a third environment,
``.venv-optimum`` (``make bench-optimum``). Run from the main environment (``make bench``), it hands
itself to that environment where it exists, and otherwise says how to make it and records nothing.

    make bench-optimum                                     # = .venv-optimum/bin/python benchmarks/bench_optimum.py
    python benchmarks/bench_optimum.py [--threads N]       # about three minutes on 2 cores
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llm_course.benchtools import record, results_dir
from llm_course.infer.generation import generate
from llm_course.infer.onnx_cache import OnnxCachedLM, cache_names, export_onnx_cached
from llm_course.models.gpt import GPT, GPTConfig

PROMPT = "The function returns"
NEW_TOKENS = 128
OPTIMUM_VENV = Path(__file__).resolve().parent.parent / ".venv-optimum"
WHY_SEPARATE = ("optimum-onnx (optimum.onnxruntime) needs transformers<4.58, this environment has transformers {}: "
                "make optimum-env builds .venv-optimum with it, make bench-optimum runs this benchmark there")


def optimum_status() -> tuple[bool, str]:
    """(whether ``optimum.onnxruntime`` imports here, the versions or why not)."""
    import transformers

    try:
        import optimum.onnxruntime  # noqa: F401
    except ImportError as e:
        return False, f"{WHY_SEPARATE.format(transformers.__version__)} ({e})"
    from importlib.metadata import version

    return True, (f"optimum-onnx {version('optimum-onnx')}, optimum {version('optimum')}, "
                  f"transformers {transformers.__version__}, onnxruntime {version('onnxruntime')}")


# ---------------------------------------------------------------------------------------------------------
# the graphs: what each exporter wrote
# ---------------------------------------------------------------------------------------------------------

def _names(names: list[str]) -> str:
    """Input/output names, the per-layer ones folded: past_key_values.{0..4}.{key,value}."""
    layers: dict[str, set[int]] = {}
    out: list[str] = []
    for name in names:
        m = re.fullmatch(r"(.+)\.(\d+)\.(key|value)", name)
        if m is None:
            out.append(name)
            continue
        if m.group(1) not in layers:
            layers[m.group(1)] = set()
            out.append(m.group(1))  # a placeholder, replaced below
        layers[m.group(1)].add(int(m.group(2)))
    return ", ".join(f"{n}.{{0..{max(layers[n])}}}.{{key,value}}" if n in layers else n for n in out)


def graph_facts(path: Path, label: str, export_s: float) -> dict[str, Any]:
    """Nodes (in the file, after ONNX Runtime's optimisation), size, opset, names of one exported graph."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(path), load_external_data=False)
    external = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
    size = path.stat().st_size + sum((path.parent / f).stat().st_size for f in external)
    # let ONNX Runtime optimise the graph as it does before every run (ORT_ENABLE_ALL) and keep its result
    optimised = path.with_name(path.stem + ".ort-optimised.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(optimised)
    options.log_severity_level = 3  # not the warning that a saved ORT_ENABLE_ALL graph is specific to this CPU
    ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    after = onnx.load(str(optimised), load_external_data=False).graph.node
    fused = Counter(n.op_type for n in after if n.domain == "com.microsoft")  # ONNX Runtime's own (fused) operators
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"case": "graph", "export": label, "export_s": export_s, "nodes": len(proto.graph.node),
            "nodes_after_ort": len(after),
            "fused_ops_after_ort": ", ".join(f"{op} x{n}" for op, n in sorted(fused.items())) or "none",
            "MiB": size / 2**20, "opset": opset, "inputs": _names([i.name for i in proto.graph.input]),
            "outputs": _names([o.name for o in proto.graph.output])}


def greedy_on_session(session: Any, prompt: np.ndarray, new_tokens: int, n_layer: int, n_head: int,
                      head_dim: int) -> np.ndarray:
    """The plain greedy loop of ``OnnxCachedLM.generate`` for any cached graph (Optimum's too).

    Feeds ``input_ids`` and the cache, and, where the graph asks for them (Optimum's does),
    ``attention_mask`` (ones over past + new tokens: no padding) and ``position_ids`` (past .. past + T - 1).
    Returns (B, T + new_tokens) ids.
    """
    wanted = {i.name for i in session.get_inputs()}
    past_names, present_names = (names[1:] for names in cache_names(n_layer))
    batch = prompt.shape[0]
    past = [np.zeros((batch, n_head, 0, head_dim), np.float32) for _ in past_names]  # (B, H, 0, D) each
    new, out, length = prompt, [prompt], 0
    for _ in range(new_tokens):
        T = new.shape[1]
        feed = {"input_ids": new, **dict(zip(past_names, past))}
        if "attention_mask" in wanted:
            feed["attention_mask"] = np.ones((batch, length + T), np.int64)
        if "position_ids" in wanted:
            feed["position_ids"] = np.tile(np.arange(length, length + T, dtype=np.int64), (batch, 1))
        logits, *past = session.run(["logits", *present_names], feed)
        length += T
        new = logits[:, -1, :].argmax(axis=-1)[:, None].astype(np.int64)  # (B, 1): the greedy choice
        out.append(new)
    return np.concatenate(out, axis=1)


# ---------------------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------------------

def side_by_side(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each fn per round, rounds alternating between them (after one warm-up call each)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def _ratio(times: dict[str, list[float]], base: str, name: str) -> float | None:
    """Median over rounds of base time / name time (> 1: name is faster); None if base was not timed."""
    if base not in times:
        return None
    return statistics.median(b / x for b, x in zip(times[base], times[name]))


def _load() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def run(quick: bool = False, threads: int | None = None) -> list[dict[str, Any]]:
    """Both parts side by side (quick: a tiny random GPT, a few tokens, nothing recorded).

    ``threads``: one thread count; None: 1 and then 2 (ONNX Runtime intra-op threads = torch threads).
    """
    ready, versions = optimum_status()
    if not ready and not quick:
        if OPTIMUM_VENV.joinpath("bin", "python").exists() and Path(sys.prefix).resolve() != OPTIMUM_VENV:
            print(f"optimum is not installed here; running {Path(__file__).name} in {OPTIMUM_VENV.name}", flush=True)
            cmd = [str(OPTIMUM_VENV / "bin" / "python"), __file__] + (["--threads", str(threads)] if threads else [])
            subprocess.run(cmd, check=True)
            return json.loads((results_dir() / "optimum.json").read_text(encoding="utf-8"))["rows"]
        print(f"Nothing recorded: {versions}")
        return [{"case": "Optimum's export", "status": f"not run: {versions}"}]
    previous = torch.get_num_threads()
    try:
        return _run(quick, (threads,) if threads else ((1,) if quick else (1, 2)), ready, versions)
    finally:
        torch.set_num_threads(previous)


def _models(quick: bool, folder: Path) -> tuple[GPT, Any, torch.Tensor, str]:
    """(course GPT, the same weights as a float32 GPT2LMHeadModel saved in ``folder``, prompt, label)."""
    if quick:
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=256, n_positions=80, n_embd=32, n_layer=2, n_head=2)).eval()
        prompt, name = torch.tensor([[1, 2, 3]]), "tiny random GPT"
    else:
        from llm_course.zoo.loading import load_pretrained

        model, tok = load_pretrained("course-gpt")  # the zoo stores float16; loaded as float32
        prompt, name = torch.tensor([tok.encode(PROMPT)]), "course-gpt"
    hf = model.to_hf().eval()
    hf.save_pretrained(folder)  # config.json + model.safetensors (float32): what Optimum's exporter reads
    return model, hf, prompt, name


def _run(quick: bool, thread_counts: tuple[int, ...], ready: bool, versions: str) -> list[dict[str, Any]]:
    import onnxruntime as ort

    load_start = _load()
    new_tokens = 8 if quick else NEW_TOKENS
    rounds = 1 if quick else 10
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, hf, prompt, name = _models(quick, tmp / "hf")
        c = model.config
        shape = (c.n_layer, c.n_head, c.n_embd // c.n_head)
        reference = generate(model, prompt, max_new_tokens=new_tokens)  # PyTorch, KV cache: the ids to match

        exports: dict[str, Path] = {}
        t0 = time.perf_counter()
        exports["course: export_onnx_cached(GPT)"] = export_onnx_cached(model, tmp / "course-gpt-kv.onnx",
                                                                       dynamo=not quick)
        rows.append(graph_facts(exports["course: export_onnx_cached(GPT)"], "course: export_onnx_cached(GPT)",
                                time.perf_counter() - t0))
        if not quick:  # transformers 5's GPT2 needs the dynamo exporter (slow for a smoke run)
            t0 = time.perf_counter()
            label = "course: export_onnx_cached(GPT2LMHeadModel)"
            exports[label] = export_onnx_cached(hf, tmp / "gpt2-kv.onnx")
            rows.append(graph_facts(exports[label], label, time.perf_counter() - t0))
        if ready:
            from optimum.exporters.onnx import main_export

            t0 = time.perf_counter()
            # validation off: it would run PyTorch and ONNX Runtime once more; the ids are checked below
            with warnings.catch_warnings():  # the TorchScript tracer's notes on Python conditions it froze
                warnings.simplefilter("ignore")
                main_export(str(tmp / "hf"), output=str(tmp / "optimum"), task="text-generation-with-past",
                            do_validation=False)
            exports["Optimum: main_export"] = tmp / "optimum" / "model.onnx"
            rows.append(graph_facts(exports["Optimum: main_export"], "Optimum: main_export (text-generation-with-past)",
                                    time.perf_counter() - t0))
        else:
            rows.append({"case": "graph", "export": "Optimum", "status": f"not run: {versions}"})

        for n in thread_counts:
            torch.set_num_threads(n)
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = n
            fns: dict[str, Callable[[], torch.Tensor]] = {}
            if ready:
                from optimum.onnxruntime import ORTModelForCausalLM

                theirs = ORTModelForCausalLM.from_pretrained(tmp / "optimum", session_options=options, use_cache=True)
                fns["Optimum: ORTModelForCausalLM.generate"] = lambda m=theirs: m.generate(
                    prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
                fns["Optimum's graph, plain greedy loop"] = lambda s=theirs.session: torch.from_numpy(
                    greedy_on_session(s, prompt.numpy(), new_tokens, *shape))
            for label, path in exports.items():
                if label.startswith("course"):
                    session = OnnxCachedLM(path, intra_op_num_threads=n)
                    fns[f"{label} + OnnxCachedLM.generate"] = lambda s=session: s.generate(prompt, new_tokens)
            fns["PyTorch eager: course generate (KV cache)"] = lambda: generate(model, prompt,
                                                                                max_new_tokens=new_tokens)
            fns["PyTorch eager: GPT2LMHeadModel.generate (KV cache)"] = lambda: hf.generate(
                prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                do_sample=False, pad_token_id=0)
            for label, fn in fns.items():  # identical ids first, then time
                ids = fn()
                assert torch.equal(ids, reference), f"{label} gave other ids than PyTorch's cached generate"
            load = _load()
            print(f"  {n} thread(s): timing {len(fns)} contenders x {rounds} rounds (1-minute load {load})", flush=True)
            times = side_by_side(fns, rounds)
            for label, t in times.items():
                rows.append({"case": f"greedy generation, {prompt.shape[1]} + {new_tokens} tokens", "model": name,
                             "threads": n, "variant": label, "ms_per_token": 1e3 * statistics.median(t) / new_tokens,
                             "speedup_vs_optimum_generate": _ratio(times, "Optimum: ORTModelForCausalLM.generate",
                                                                   label),
                             "speedup_vs_optimum_graph": _ratio(times, "Optimum's graph, plain greedy loop", label),
                             "same_ids": True, "load_1min": load})
    notes = (f"CPU; {versions}. Same weights ({name}, float32) in every contender; every contender's "
             f"{new_tokens} greedy ids equal PyTorch's cached generate (asserted before timing). ms_per_token = median "
             f"round time / {new_tokens}; speed-ups = median over {rounds} alternating rounds of the Optimum time / "
             "this one (> 1: faster than Optimum). 'Optimum's graph, plain greedy loop' runs Optimum's file with "
             "the same numpy loop as OnnxCachedLM.generate, so it compares the graphs alone. Optimum exported with "
             f"do_validation=False. 1-minute load: {load_start} at the start, {_load()} at the end.")
    record("optimum", rows, notes=notes, quick=quick or not ready)
    return rows


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="one thread count (default: 1, then 2)")
    parser.add_argument("--quick", action="store_true", help="tiny random GPT, a few tokens, nothing recorded")
    args = parser.parse_args()
    run(quick=args.quick, threads=args.threads)
