"""Benchmark: gradient checkpointing (memory vs time) and bf16 autocast vs fp32. Chapter 09 (best practices).

1. Gradient checkpointing, on the course's ``GPT`` and on ``transformers.GPT2LMHeadModel`` with the same
   weights (``GPT.to_hf``), at course-gpt's shape (5 layers x 160, V = 4096, block 384, batch 8) and a
   12-layer model of the same width. Memory: bytes autograd keeps for the backward
   (``finetuning_costs.saved_activation_bytes``, deterministic). Time: forward + backward, both variants timed
   back to back in each round, the ratio is the median of the per-round ratios
   (``practices.checkpointing_report``). Targets (issue, chapter 09): memory <= 0.5x, time <= 1.4x.
2. Mixed precision on the CPU: the same small GPT trained 50 AdamW steps from the same weights on the
   same batches (a seeded Markov-chain token stream, ``distributed.synthetic_stream``) in fp32 and under
   bf16 autocast (``practices.compare_precisions``): the largest |loss difference| and the time ratio.

Records ``practices_checkpointing`` and ``practices_precision`` (benchmarks/results/).

    python benchmarks/bench_practices.py
"""

from __future__ import annotations

from typing import Any

import torch

from llm_course.benchtools import record
from llm_course.models.gpt import GPT, GPTConfig
from llm_course.nn.objectives import random_blocks
from llm_course.train.distributed import synthetic_stream
from llm_course.train.practices import checkpointing_report, compare_precisions

# label -> (GPTConfig kwargs, batch size, sequence length)
CKPT_CONFIGS = {
    "course-gpt shape (5 x 160)": (dict(vocab_size=4096, n_positions=384, n_embd=160, n_layer=5, n_head=5), 8, 384),
    "deeper (12 x 160)": (dict(vocab_size=4096, n_positions=384, n_embd=160, n_layer=12, n_head=5), 8, 384),
}
PRECISION_CONFIG = dict(vocab_size=512, n_positions=128, n_embd=128, n_layer=4, n_head=4)


def bench_checkpointing(config: dict, batch_size: int, seq: int, repeats: int, label: str) -> list[dict[str, Any]]:
    """Checkpointing report for the course GPT and GPT2LMHeadModel with the same weights."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**config))
    hf = model.to_hf()
    hf.config.use_cache = False  # a training run keeps no KV cache
    ids = torch.randint(config["vocab_size"], (batch_size, seq), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "labels": ids}
    rows = []
    for name, m in (("course GPT", model), ("GPT2LMHeadModel", hf)):
        r = checkpointing_report(m, batch, repeats=repeats)
        rows.append({
            "model": name, "config": label, "batch": f"{batch_size} x {seq}",
            "saved MB plain": r["saved_bytes_plain"] / 2**20,
            "saved MB checkpointed": r["saved_bytes_checkpointed"] / 2**20,
            "memory ratio": r["memory_ratio"], "s/step plain": r["seconds_plain"],
            "s/step checkpointed": r["seconds_checkpointed"], "time ratio": r["time_ratio"],
            "CPU-time ratio": r["cpu_time_ratio"],
            "targets met": r["memory_ratio"] <= 0.5 and r["time_ratio"] <= 1.4 and r["cpu_time_ratio"] <= 1.4,
        })
    return rows


def bench_precision(config: dict, steps: int, batch_size: int, seq: int) -> list[dict[str, Any]]:
    """fp32 vs bf16 autocast on the CPU: same weights, same batches, ``steps`` AdamW steps."""
    stream = synthetic_stream(20_000, config["vocab_size"], branching=4, seed=0)
    g = torch.Generator().manual_seed(0)
    batches = [random_blocks(stream, batch_size, seq, generator=g) for _ in range(steps)]
    result = compare_precisions(lambda: GPT(GPTConfig(**config)), batches, ["fp32", "bf16"], lr=3e-3)
    label = f"{config['n_layer']} x {config['n_embd']}, V={config['vocab_size']}"
    return [{"model": "course GPT", "config": label,
             "batch": f"{batch_size} x {seq}", "precision": r["precision"], "steps": steps,
             "first loss": result["losses"][r["precision"]][0], "final loss": r["final_loss"],
             "max |dloss| vs fp32": r["max_abs_diff"], "mean |dloss| vs fp32": r["mean_abs_diff"],
             "time ratio": r["time_ratio"]} for r in result["rows"]]


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Both benchmarks (``quick``: tiny sizes for the smoke test, nothing recorded).

    Records two tables: ``practices_checkpointing`` and ``practices_precision``.
    """
    torch.set_num_threads(1)
    if quick:
        tiny = dict(vocab_size=128, n_positions=32, n_embd=32, n_layer=2, n_head=2)
        ckpt_rows = bench_checkpointing(tiny, 2, 32, repeats=1, label="tiny (smoke test)")
        precision_rows = bench_precision(tiny, steps=2, batch_size=2, seq=16)
    else:
        ckpt_rows = []
        for label, (config, batch_size, seq) in CKPT_CONFIGS.items():
            ckpt_rows += bench_checkpointing(config, batch_size, seq, repeats=5, label=label)
        precision_rows = bench_precision(PRECISION_CONFIG, steps=50, batch_size=8, seq=128)
    record("practices_checkpointing", ckpt_rows, notes=CKPT_NOTES, quick=quick)
    record("practices_precision", precision_rows, notes=PRECISION_NOTES, quick=quick)
    return ckpt_rows + precision_rows


CKPT_NOTES = (
    "CPU, 1 torch thread, shared machine (time ratios are noisy). Saved MB = what autograd keeps from the "
    "forward for the backward (saved_tensors_hooks, each storage once, weights excluded). Time = forward + "
    "backward, median of 5 per-round ratios, both variants back to back in each round, by wall clock and by "
    "process CPU time. Checkpointing keeps each block's input (B, T, C) and recomputes the rest of the block "
    "in the backward (about one extra forward of the blocks: +1/3 of their compute at most). What it cannot "
    "remove lives outside the blocks: the logits (B, T, V) and the loss's log-probabilities, 2 x 48 MiB at "
    "course-gpt's shape (V = 4096 is 25x the width 160), which is why the ratio falls as layers are added."
)
PRECISION_NOTES = (
    "CPU, 1 torch thread. torch.autocast('cpu', torch.bfloat16) vs fp32: same seed, same weights, same 50 "
    "batches of a seeded Markov-chain stream (4 successors per token: best loss ln 4 = 1.386), AdamW lr 3e-3. "
    "Weights and optimizer state stay fp32. bf16 is faster only on CPUs with native bf16 matrix units "
    "(AVX512-BF16 / AMX); elsewhere it is emulated and slower. fp16 (with torch.amp.GradScaler) is CUDA-only."
)


if __name__ == "__main__":
    run()
