"""Generation speed, side by side in one run. Chapter 07 (generation strategies).

1. The key/value cache: greedy generation of 256 new tokens by the shipped course-gpt with the cache
   and without it (every step recomputes the whole text). Target: cached at least 4x faster.
2. The course's ``generate`` vs transformers' ``model.generate`` on the same weights (course-gpt and its
   ``GPT2LMHeadModel`` twin), greedy, 128 new tokens, the same ids checked. Target: at least 3x faster
   per token. Both run the same matrix multiplies; the difference is what happens around them (the
   course's loop feeds the token through ``StaticCacheDecoder``, a preallocated cache and a single-token
   step; transformers' prepares inputs, runs processor and stopping-criteria lists and updates its Cache
   object every step).
3. The floor: the same step's matrix multiplies alone (every ``nn.Linear`` once on one token, the
   tied output layer included). Both implementations must do them, so transformers' time per token
   divided by this is the best speed-up any implementation could show on this machine.

Rounds alternate the contenders so that a noisy moment on a shared machine hits both.

    python benchmarks/bench_generation.py        # about a minute on 2 cores
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from llm_course.benchtools import record
from llm_course.infer.generation import generate
from llm_course.models.gpt import GPT, GPTConfig
from llm_course.zoo.loading import load_pretrained

PROMPT = "The function returns"


def _seconds(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _alternate(a: Callable[[], object], b: Callable[[], object], rounds: int) -> tuple[float, float, float]:
    """Median seconds of a and b, and the median of the per-round ratios b / a."""
    a(), b()  # warm-up
    ta, tb = [], []
    for _ in range(rounds):
        ta.append(_seconds(a))
        tb.append(_seconds(b))
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


def run(quick: bool = False) -> list[dict]:
    torch.set_num_threads(2 if not quick else 1)
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
    floor = _matmul_floor(model)
    rows.append({"case": "the step's matrix multiplies alone (the floor both share)", "model": name,
                 "ours_ms_per_token": 1e3 * floor, "other_ms_per_token": 1e3 * t_theirs / hf_tokens,
                 "other": "GPT2LMHeadModel.generate", "speedup": t_theirs / hf_tokens / floor, "target": None})
    notes = ("CPU, torch threads as shown in machine; prompt 'The function returns'; speed-up = median over "
             "alternating rounds of other time / ours. Cached and uncached, ours and transformers' all produce "
             "identical token ids (asserted before timing).")
    record("generation", rows, notes=notes, quick=quick)
    return rows


if __name__ == "__main__":
    run()
