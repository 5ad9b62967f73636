"""Quality per wall-clock: the course's quick GPT recipe vs karpathy/nanoGPT's CPU recipe, same run. Chapter 04.

Two trainings on the docs corpus, one after the other in the same run (same machine, same load):

1. **nanoGPT's CPU recipe** (its README's "on a CPU" command for shakespeare_char, applied to this
   corpus): character-level vocabulary, a GPT of 4 layers x 128 (4 heads, no biases, dropout 0),
   block 64, batch 12, 2,000 iterations, AdamW (lr 1e-3, betas 0.9 / 0.99, weight decay 0.1 on matrices
   only), 100 warmup iterations then cosine decay to 1e-4 at 2,000, gradients clipped at 1.0; trained
   here with the course's ``GPT`` (the same architecture as nanoGPT's) by a plain loop written out below;
2. **the course's quick recipe** (``quick_gpt_recipe()``: 4096 BPE tokens, 4 x 128, block 64, batch 16),
   given *the same wall-clock* as run 1 took, tokenizer training and encoding included.

Both are scored on every validation token once (``validation_bpc``), in bits per character, so the
character-level and the BPE model are compared on the same text. Target (from the issue): the course's
recipe reaches at most 0.92x nanoGPT's bits per character in the same wall-clock time.

    python benchmarks/bench_pretraining.py          # about 5 minutes on 2 quiet cores
"""

from __future__ import annotations

import math
import os
import time
from types import SimpleNamespace

import torch

from llm_course.benchtools import record
from llm_course.models.gpt import GPT, GPTConfig
from llm_course.text.corpora import TextCorpus, docs_corpus
from llm_course.train.pretraining import prepare_docs_tokens, pretrain_gpt, validation_bpc
from llm_course.train.recipe import quick_gpt_recipe

TARGET_RATIO = 0.92
NANOGPT = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, max_iters=2000, lr=1e-3, min_lr=1e-4,
               warmup_iters=100, lr_decay_iters=2000, beta2=0.99, weight_decay=0.1, grad_clip=1.0)


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:  # pragma: no cover - not on Unix
        return "n/a"


def _nanogpt_lr(it: int, c: dict) -> float:
    """nanoGPT's get_lr: linear warmup, cosine decay to min_lr at lr_decay_iters."""
    if it < c["warmup_iters"]:
        return c["lr"] * (it + 1) / (c["warmup_iters"] + 1)
    if it > c["lr_decay_iters"]:
        return c["min_lr"]
    ratio = (it - c["warmup_iters"]) / (c["lr_decay_iters"] - c["warmup_iters"])
    return c["min_lr"] + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (c["lr"] - c["min_lr"])


def nanogpt_char_run(corpus: TextCorpus, c: dict) -> dict:
    """nanoGPT's CPU recipe with the course's GPT: character-level, its schedule and optimizer."""
    t0 = time.perf_counter()
    chars = sorted(set(corpus.train) | set(corpus.val))  # nanoGPT's prepare.py: every character of the text
    stoi = {ch: i for i, ch in enumerate(chars)}
    train_ids = torch.tensor([stoi[ch] for ch in corpus.train], dtype=torch.long)
    val_ids = torch.tensor([stoi[ch] for ch in corpus.val], dtype=torch.long)
    torch.manual_seed(1337)  # nanoGPT's seed
    model = GPT(GPTConfig(vocab_size=len(chars), n_positions=c["block_size"], n_embd=c["n_embd"], n_layer=c["n_layer"],
                          n_head=c["n_head"], dropout=0.0, bias=False)).train()
    decay = [p for p in model.parameters() if p.dim() >= 2]  # nanoGPT: weight decay on matrices only
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": c["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=c["lr"], betas=(0.9, c["beta2"]))
    g = torch.Generator().manual_seed(1337)
    B, T = c["batch_size"], c["block_size"]
    for it in range(c["max_iters"]):
        for group in opt.param_groups:
            group["lr"] = _nanogpt_lr(it, c)
        starts = torch.randint(0, train_ids.numel() - T - 1, (B,), generator=g)
        x = torch.stack([train_ids[s:s + T] for s in starts])  # (B, T)
        loss = model(x, labels=x).loss  # the model shifts the labels: position t predicts t + 1
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), c["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
    wall = time.perf_counter() - t0
    data = SimpleNamespace(val_ids=val_ids, val_chars=len(corpus.val))  # what validation_bpc reads
    val = validation_bpc(model.eval(), data)
    return {"recipe": "nanoGPT CPU recipe (char-level), course GPT", "params": model.num_parameters(),
            "vocab": len(chars), "chars_per_token": 1.0, "steps": c["max_iters"], "wall_s": round(wall, 1),
            "tokens_per_s": round(c["max_iters"] * B * T / wall), "val_bpc": round(val["bits_per_char"], 4),
            "_wall": wall}  # unrounded: a quick run's 10 steps round to 0.0 s


def run(quick: bool = False, threads: int = 1) -> list[dict]:
    """Both recipes in one run; the course's gets the nanoGPT run's wall-clock time.

    ``threads``: torch threads for both (1 by default: on a 2-core machine shared with other work, 2 threads
    mostly measure the scheduler; measured here under load 8-12, nanoGPT's 2,000 steps took over 30 minutes
    with 2 threads, against about 68 ms per step with 1).
    """
    torch.set_num_threads(threads)
    corpus = docs_corpus()
    nano = dict(NANOGPT)
    if quick:  # a few-second smoke run: a slice of the corpus, tiny models, a few steps
        corpus = TextCorpus(train=corpus.train[:60_000], val=corpus.val[:6_000], source=corpus.source)
        nano.update(n_layer=1, n_embd=32, n_head=2, max_iters=10, warmup_iters=2, lr_decay_iters=10)
    load_before = _load()
    ref = nanogpt_char_run(corpus, nano)
    budget = ref_wall = max(ref["_wall"], 1e-9)
    t0 = time.perf_counter()
    if quick:
        recipe = quick_gpt_recipe(vocab_size=512, n_layer=1, n_embd=32, n_head=2, batch_size=4, max_steps=20,
                                  warmup_steps=1, eval_interval=10, eval_steps=1, time_budget_s=10, threads=1)
    else:
        recipe = quick_gpt_recipe(time_budget_s=1.0, threads=threads)  # the budget is set below, after the tokenizer
    data = prepare_docs_tokens(recipe.vocab_size, corpus)
    prep_seconds = time.perf_counter() - t0
    if not quick:  # the same wall-clock as nanoGPT's run, the tokenizer's training and the encoding included
        recipe = quick_gpt_recipe(time_budget_s=max(budget - prep_seconds, 10.0), threads=threads)
    result = pretrain_gpt(recipe, data, device="cpu", progress=False, live_plot=False)
    wall = prep_seconds + result.train_seconds
    bpc = result.val["bits_per_char"]
    ours = {"recipe": "llm-course quick GPT (BPE), same wall-clock", "params": result.model.num_parameters(),
            "vocab": data.tokenizer.vocab_size, "chars_per_token": round(data.chars_per_token, 3),
            "steps": result.result.step, "wall_s": round(wall, 1), "tokens_per_s": round(result.tokens_per_sec),
            "val_bpc": round(bpc, 4)}
    for row in (ours, ref):
        row["bpc_ratio_vs_nanogpt"] = round(row["val_bpc"] / ref["val_bpc"], 4)
    ours["_wall"] = wall
    for row in (ours, ref):  # ratios from the unrounded times (a quick run's reference takes a few ms)
        row["time_ratio_vs_nanogpt"] = round(row.pop("_wall") / ref_wall, 3)
    rows = [ours, ref]
    ratio = bpc / ref["val_bpc"]
    verdict = "meets" if ratio <= TARGET_RATIO else "MISSES"
    notes = (f"Target: the course's val bpc <= {TARGET_RATIO} x nanoGPT's at equal wall-clock; this run {verdict} it "
             f"({bpc:.3f} vs {ref['val_bpc']:.3f} bpc, ratio {ratio:.3f}; {wall:.0f} s vs {ref['wall_s']:.0f} s, "
             "of which "
             f"{prep_seconds:.0f} s tokenizer + encoding). Both trained in this run, one after the other, "
             f"{torch.get_num_threads()} torch threads; 1-minute load average {load_before} before, {_load()} after. "
             "nanoGPT's recipe: char-level, 4 x 128, no biases, block 64, batch 12, 2,000 iterations, AdamW "
             "(1e-3, betas 0.9/0.99, wd 0.1 on matrices), warmup 100, cosine to 1e-4, clip 1.0, run with the "
             "course's GPT; its periodic evaluations are skipped (only the final score is compared). Validation: "
             "every token scored once; bits per character = total nats / characters / ln 2.")
    record("pretraining", rows, notes=notes, quick=quick)
    return rows


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both runs (default 1)")
    parser.add_argument("--quick", action="store_true", help="tiny models, nothing recorded")
    args = parser.parse_args()
    run(quick=args.quick, threads=args.threads)
