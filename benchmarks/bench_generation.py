"""Generation speed, side by side in one run. Chapter 07 (generation strategies).

1. The key/value cache: greedy generation of 256 new tokens by the shipped course-gpt with the cache
   and without it (every step recomputes the whole text). Target: cached at least 4x faster.
2. The course's ``generate`` vs transformers' ``model.generate`` on the same weights (course-gpt and its
   ``GPT2LMHeadModel`` twin), greedy, 128 new tokens, the same ids checked. Target: at least 3x faster
   per token. Both run the same matrix multiplies; the difference is what happens around them (the
   course's loop feeds the token through ``StaticCacheDecoder``, a preallocated cache and a single-token
   step; transformers' prepares inputs, runs processor and stopping-criteria lists and updates its Cache
   object every step).
3. The same comparison with the course's step compiled by ``torch.compile`` (``StaticGenerator``: a
   fixed-shape step, compiled once; its compile time is shown next to it). Target: 3x.
4. ONNX Runtime with a KV cache (``export_onnx_cached``, one token per call) against the course's eager
   cached ``generate``, course-gpt, 128 new tokens, the same ids checked. Target: at least 1.3x.
5. The floor: the same step's matrix multiplies alone (every ``nn.Linear`` once on one token, the
   tied output layer included). Both implementations must do them, so transformers' time per token
   divided by this is the best speed-up any implementation could show on this machine.

Rounds alternate the contenders so that a noisy moment on a shared machine hits both.

    python benchmarks/bench_generation.py [--threads N]   # a few minutes on 2 cores
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from llm_course.benchtools import record
from llm_course.infer.compiled import StaticGenerator, compile_status
from llm_course.infer.generation import generate
from llm_course.infer.onnx_cache import OnnxCachedLM, export_onnx_cached
from llm_course.models.gpt import GPT, GPTConfig
from llm_course.zoo.loading import load_pretrained

PROMPT = "The function returns"


def _seconds(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _alternate(a: Callable[[], object], b: Callable[[], object], rounds: int) -> tuple[float, float, float]:
    """Median seconds of a and b, and the median of the per-round ratios b / a."""
    t0 = time.perf_counter()
    a(), b()  # warm-up
    ta, tb = [], []
    for _ in range(rounds):
        ta.append(_seconds(a))
        tb.append(_seconds(b))
    print(f"  ... {rounds} rounds in {time.perf_counter() - t0:.0f} s", flush=True)  # progress on a slow machine
    return statistics.median(ta), statistics.median(tb), statistics.median(y / x for x, y in zip(ta, tb))


def _matmul_floor(model: GPT, repeat: int = 200) -> float:
    """Seconds per token spent in the decode step's matrix multiplies alone: each Linear once on one token."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = [torch.randn(1, 1, m.in_features) for m in layers]
    with torch.inference_mode():
        def one_token() -> None:
            for m, x in zip(layers, inputs):
                torch.nn.functional.linear(x, m.weight, m.bias)
        for _ in range(10):
            one_token()
        t0 = time.perf_counter()
        for _ in range(repeat):
            one_token()
    return (time.perf_counter() - t0) / repeat


def run(quick: bool = False, threads: int | None = None) -> list[dict]:
    """All rows side by side (quick: a tiny random model, nothing compiled or recorded)."""
    # one thread by default: on a 2-core machine shared with other work, two threads measure the scheduler
    # (measured here under load 9: 50 ms per token with 2 threads, 0.8 ms with 1); --threads 2 on a quiet one
    torch.set_num_threads(threads or 1)
    if quick:  # a tiny random model: a smoke run of a few seconds
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=256, n_positions=80, n_embd=32, n_layer=2, n_head=2)).eval()
        prompt, new_tokens, hf_tokens, rounds, name = torch.tensor([[1, 2, 3]]), 64, 32, 1, "tiny random GPT"
    else:
        model, tok = load_pretrained("course-gpt")
        prompt = torch.tensor([tok.encode(PROMPT)])
        new_tokens = min(256, model.config.n_positions - prompt.shape[1])
        hf_tokens, rounds, name = 128, 5, "course-gpt"
    rows = []

    cached = lambda: generate(model, prompt, max_new_tokens=new_tokens)  # noqa: E731
    uncached = lambda: generate(model, prompt, max_new_tokens=new_tokens, use_cache=False)  # noqa: E731
    assert torch.equal(cached(), uncached()), "the cache must not change the result"
    t_cached, t_uncached, ratio = _alternate(cached, uncached, rounds)
    rows.append({"case": f"KV cache on vs off, {new_tokens} new tokens, greedy", "model": name,
                 "ours_ms_per_token": 1e3 * t_cached / new_tokens,
                 "other_ms_per_token": 1e3 * t_uncached / new_tokens, "other": "no cache (recompute)",
                 "speedup": ratio, "target": 4.0})

    hf = model.to_hf().eval()
    ours = lambda: generate(model, prompt, max_new_tokens=hf_tokens)  # noqa: E731
    theirs = lambda: hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=hf_tokens,  # noqa: E731
                                 min_new_tokens=hf_tokens, do_sample=False, pad_token_id=0)
    assert torch.equal(ours(), theirs()), "the same weights must give the same greedy ids"
    t_ours, t_theirs, ratio = _alternate(ours, theirs, rounds)
    rows.append({"case": f"course generate vs transformers generate, {hf_tokens} new tokens, greedy, cache on",
                 "model": name, "ours_ms_per_token": 1e3 * t_ours / hf_tokens,
                 "other_ms_per_token": 1e3 * t_theirs / hf_tokens, "other": "GPT2LMHeadModel.generate",
                 "speedup": ratio, "target": 3.0})
    per_token_hf = t_theirs / hf_tokens

    # the same step, compiled (quick runs skip the compilation: it takes seconds even for a tiny model)
    ready, why = compile_status()
    static = StaticGenerator(model, 1, prompt.shape[1] + hf_tokens, compile=ready and not quick)
    compiled = lambda: static.generate(prompt, hf_tokens)  # noqa: E731
    assert torch.equal(compiled(), theirs()), "the compiled step must give the same greedy ids"
    t_comp, t_hf2, ratio = _alternate(compiled, theirs, rounds)
    label = ("torch.compile'd fixed-shape step" if static.compiled
             else f"fixed-shape step, eager ({'quick run: not compiled' if ready else why})")
    rows.append({"case": f"course {label} vs transformers generate, {hf_tokens} new tokens, greedy",
                 "model": name, "ours_ms_per_token": 1e3 * t_comp / hf_tokens,
                 "other_ms_per_token": 1e3 * t_hf2 / hf_tokens, "other": "GPT2LMHeadModel.generate",
                 "speedup": ratio, "target": 3.0,
                 "compile_s": round(static.compile_seconds, 1) if static.compiled else None})

    # ONNX Runtime with the KV cache in the graph vs the course's eager cached generate
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = export_onnx_cached(model, Path(tmp) / "kv.onnx", dynamo=not quick)
        export_s = time.perf_counter() - t0
        ort = OnnxCachedLM(path, intra_op_num_threads=torch.get_num_threads())
        onnx_gen = lambda: ort.generate(prompt, hf_tokens)  # noqa: E731
        assert torch.equal(onnx_gen(), ours()), "ONNX Runtime must give the course's greedy ids"
        t_ort, t_course, ratio = _alternate(onnx_gen, ours, rounds)
    rows.append({"case": f"ONNX Runtime, KV cache in the graph, vs course eager cached generate, {hf_tokens} new "
                 "tokens, greedy", "model": name, "ours_ms_per_token": 1e3 * t_ort / hf_tokens,
                 "other_ms_per_token": 1e3 * t_course / hf_tokens, "other": "course generate (eager, cached)",
                 "speedup": ratio, "target": 1.3, "export_s": round(export_s, 1)})

    floor = _matmul_floor(model)
    rows.append({"case": "the step's matrix multiplies alone (the floor both share)", "model": name,
                 "ours_ms_per_token": 1e3 * floor, "other_ms_per_token": 1e3 * per_token_hf,
                 "other": "GPT2LMHeadModel.generate", "speedup": per_token_hf / floor, "target": None})
    floor_ms = 1e3 * floor
    for row in rows:
        if row["target"] is not None:
            row["met"] = row["speedup"] >= row["target"]
            if not row["met"] and row["other"] == "GPT2LMHeadModel.generate":  # say why it was missed
                best = row["other_ms_per_token"] / floor_ms
                row["why"] = (f"{row['ours_ms_per_token']:.2f} ms per token, of which {floor_ms:.2f} ms are the "
                              f"matrix multiplies that no implementation avoids (best possible here: {best:.1f}x); "
                              "the rest is per-operation overhead"
                              + ("; the compiled fixed-shape step attends over all max_length slots and its "
                                 "generated CPU code is no faster than the eager oneDNN calls for one token"
                                 if "compile" in row["case"] else ""))
    load = f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "n/a"
    notes = (f"CPU, {torch.get_num_threads()} torch threads (= onnxruntime intra-op threads), 1-minute load {load} "
             f"at the end; prompt "
             f"'{PROMPT}'; speed-up = median over alternating rounds of other time / ours ('ours' is the left "
             "column: the faster-hoped contender). All contenders produce identical token ids (asserted before "
             "timing). The floor row: no implementation that runs the step's matrix multiplies one token at a "
             "time can beat transformers by more than its speedup column on this machine; a 3x target above "
             "that floor is out of reach here. compile_s: the first compiled step's time (compilation included).")
    record("generation", rows, notes=notes, quick=quick)
    return rows


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads (default 1)")
    parser.add_argument("--quick", action="store_true", help="tiny model only, nothing recorded")
    args = parser.parse_args()
    run(quick=args.quick, threads=args.threads)
