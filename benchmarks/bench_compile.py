"""torch.compile on 2 CPU cores: first-call compile time next to the steady-state speed-up. Chapters 07 and 09.

Two workloads, each eager and compiled (TorchInductor, C++ on the CPU), side by side in one run:

1. **the decode step** of the shipped course-gpt: ``StaticStep``, one token against a fixed-size KV
   cache (the shapes never change, so one compilation serves every position);
2. **a training step** (forward, loss, backward, AdamW) of a GPT in nanoGPT's CPU configuration
   (character-level vocabulary, 4 layers x 128, 4 heads, block 64, batch 12): ``torch.compile(model)``
   compiles the forward and, through AOTAutograd, the backward.

Rounds alternate eager and compiled so that a noisy moment on a shared machine hits both; a speed-up
is the median of per-round ratios. ``compile_s`` is the first compiled call (graph capture, lowering,
C++ compilation) minus one eager call: the price paid before the first speed-up; ``break_even_calls``
is how many calls repay it. Where ``torch.compile`` cannot run (``compile_status``), the rows say why.

    python benchmarks/bench_compile.py [--threads N]     # about two minutes on 2 cores
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from llm_course.benchtools import record
from llm_course.infer.compiled import StaticStep, compile_status
from llm_course.models.gpt import GPT, GPTConfig

NANOGPT_CPU = dict(n_positions=64, n_embd=128, n_layer=4, n_head=4, dropout=0.0)  # nanoGPT's CPU recipe
BATCH = 12


def _seconds(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _side_by_side(eager: Callable[[], object], compiled: Callable[[], object], rounds: int) -> dict[str, float]:
    """First calls (the compiled one compiles), then alternating rounds: medians and per-round ratio."""
    first_eager, first_compiled = _seconds(eager), _seconds(compiled)
    te, tc = [], []
    for _ in range(rounds):
        te.append(_seconds(eager))
        tc.append(_seconds(compiled))
    t_e, t_c = statistics.median(te), statistics.median(tc)
    compile_s = max(first_compiled - t_e, 0.0)
    gain = t_e - t_c
    speedup = statistics.median(e / c for e, c in zip(te, tc))
    return {"eager_ms": 1e3 * t_e, "compiled_ms": 1e3 * t_c, "speedup": speedup,
            "compile_s": compile_s, "first_eager_ms": 1e3 * first_eager,
            "break_even_calls": round(compile_s / gain) if gain > 0 else None}


def _decode_step(model: GPT, compile_it: bool, rounds: int) -> dict[str, object]:
    step = StaticStep(model, batch_size=1, max_length=model.config.n_positions)
    fast = torch.compile(step, dynamic=False) if compile_it else step
    token, position = torch.tensor([[5]]), torch.tensor([40])

    def run(fn: Callable) -> Callable[[], object]:
        def call() -> None:
            with torch.no_grad():
                for _ in range(20):  # 20 tokens per timed call: one call is a fraction of a millisecond
                    fn(token, position)
        return call

    r = _side_by_side(run(step), run(fast), rounds)
    for key in ("eager_ms", "compiled_ms", "first_eager_ms"):
        r[key] /= 20
    return r


def _train_step(config: GPTConfig, compile_it: bool, rounds: int) -> dict[str, object]:
    torch.manual_seed(0)
    model = GPT(config).train()
    fast = torch.compile(model) if compile_it else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, config.vocab_size, (BATCH, config.n_positions), generator=g)

    def run(fn: Callable) -> Callable[[], object]:
        def call() -> None:
            loss = fn(x, labels=x).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return call

    return _side_by_side(run(model), run(fast), rounds)


def run(quick: bool = False, threads: int | None = None) -> list[dict]:
    """Both workloads (quick: tiny sizes, nothing compiled or recorded)."""
    torch.set_num_threads(threads or 1)  # 1: see bench_generation.py (2 threads on a busy 2-core machine: noise)
    ready, why = compile_status()
    compile_it = ready and not quick
    if quick:
        decoder = GPT(GPTConfig(vocab_size=64, n_positions=48, n_embd=32, n_layer=1, n_head=2)).eval()
        train_config, rounds, name = GPTConfig(vocab_size=64, **{**NANOGPT_CPU, "n_layer": 1, "n_embd": 32}), 2, "tiny"
    else:
        from llm_course.zoo.loading import load_pretrained

        decoder, _ = load_pretrained("course-gpt")
        train_config, rounds, name = GPTConfig(vocab_size=96, **NANOGPT_CPU), 15, "course-gpt"
    status = "compiled" if compile_it else ("quick run: eager twice" if ready else f"eager only: {why}")
    rows = []
    r = _decode_step(decoder.eval(), compile_it, rounds)
    rows.append({"case": "decode step, 1 token, fixed-size KV cache", "model": f"{name} (StaticStep)",
                 "status": status, "unit": "ms per token", **r})
    r = _train_step(train_config, compile_it, rounds)
    rows.append({"case": f"training step, batch {BATCH} x {train_config.n_positions}, AdamW",
                 "model": f"nanoGPT CPU config ({train_config.n_layer} x {train_config.n_embd}, vocab "
                          f"{train_config.vocab_size})", "status": status, "unit": "ms per step", **r})
    notes = (f"CPU, {torch.get_num_threads()} torch threads; torch {torch.__version__}; compiler: "
             f"{why}. compile_s = first compiled call - one eager call. Speed-up = median of per-round eager / "
             "compiled (rounds alternate).")
    record("compile", rows, notes=notes, quick=quick)
    return rows


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default 1; 2 on a quiet 2-core machine)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, nothing compiled or recorded")
    args = parser.parse_args()
    run(quick=args.quick, threads=args.threads)
