"""Benchmark: int8 / NF4 quantization and ONNX Runtime against float32 PyTorch. Chapter 07 (inference).

Everything is measured side by side in one run, on the CPU, with the same number of threads for
every runtime (torch's default, recorded in the notes):

1. **Latency, int8 vs float32**, on a GPT with random weights big enough for matrix products to
   dominate (n_embd 512, 8 layers, vocab 4096: 27 M parameters): the forward pass of a batch (4 x 128
   tokens) and greedy generation per token (``llm_course.infer.generation.generate``, KV cache, batch 1).
   The rounds alternate between the variants, so machine noise hits all alike; a speed-up is the
   median of the per-round ratios. Variants: the written-out ``Int8Linear`` (dequantizes in
   forward: memory, not speed), torch.ao's ``quantize_dynamic`` (FBGEMM int8 kernels), torchao
   weight-only, torchao dynamic (timed once: in eager mode on a CPU it is very slow), and ONNX
   Runtime's own int8 quantization of the exported graph (against ONNX Runtime float32 as well).
   Target: int8 >= 1.5x faster than float32.
2. **Quality**: perplexity of the shipped ``course-gpt`` on the first 20,000 characters of the
   docs corpus' validation text (``validation_bpc``), float32 vs int8 (each path) vs NF4 (with and
   without double quantization). Target: int8 / fp32 perplexity <= 1.02.
3. **Memory**: ``model_size_bytes`` of each variant, float32 / bfloat16 / int8 / NF4, and bits per
   weight of the quantized layers.
4. **ONNX Runtime vs eager PyTorch**, forward of a batch, on the shipped GPT and the big one.
   Target: >= 1.3x faster. For generation, two ONNX graphs: without a KV cache (``export_onnx``: each
   token re-runs the window) and with one (``export_onnx_cached``: past keys/values in, present out);
   bench_generation.py times the cached one against the course's eager generate on course-gpt.
5. **ONNX Runtime int8 quality**: perplexity of course-gpt run by ONNX Runtime, float32 and int8
   (``quantize_onnx_int8``), the same text as 2. Target: int8 / fp32 perplexity <= 1.02.

    python benchmarks/bench_inference.py [--threads N]     # a few minutes on 2 cores
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from llm_course.benchtools import record
from llm_course.infer.generation import generate
from llm_course.models.gpt import GPT, GPTConfig
from llm_course.nn.quantization import (
    Int8Linear,
    NF4Linear,
    model_size_bytes,
    quantize_int8,
    quantize_int8_library,
    quantize_nf4,
    torchao_available,
)

BIG = dict(vocab_size=4096, n_positions=256, n_embd=512, n_layer=8, n_head=8)
TINY = dict(vocab_size=256, n_positions=64, n_embd=64, n_layer=2, n_head=4)
VAL_CHARS = 20_000


def side_by_side(fns: dict[str, Callable[[], Any]], rounds: int, baseline: str) -> dict[str, dict[str, float]]:
    """Time each fn once per round, rounds alternating; median seconds and median speed-up vs baseline."""
    for fn in fns.values():  # warm-up (first calls allocate, pack weights, build kernels)
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    base = times[baseline]
    return {name: {"seconds": statistics.median(t),
                   "speedup": statistics.median(b / x for b, x in zip(base, t))} for name, t in times.items()}


def _forward(model: nn.Module, ids: torch.Tensor) -> Callable[[], Any]:
    def run() -> Any:
        with torch.inference_mode():
            return model(ids).logits
    return run


def _int8_variants(model: GPT) -> dict[str, nn.Module]:
    """The int8 paths that are timed every round (torchao-dynamic is timed apart: too slow on a CPU)."""
    variants: dict[str, nn.Module] = {
        "fp32": model,
        "int8 written-out (Int8Linear)": quantize_int8(model),
        "int8 torch.ao quantize_dynamic": quantize_int8_library(model, "torch.ao-dynamic"),
    }
    if torchao_available():
        variants["int8 torchao weight-only"] = quantize_int8_library(model, "torchao-weight-only")
    return variants


def bench_latency(model: GPT, onnx_dir: Path, batch: tuple[int, int], gen_tokens: int, rounds: int,
                  label: str, dynamo: bool) -> list[dict[str, Any]]:
    """Forward-of-a-batch and per-token generation latency of every int8 path and of ONNX Runtime."""
    from llm_course.infer.onnx_export import (
        OnnxCausalLM,
        export_onnx,
        quantize_onnx_int8,
    )

    threads = torch.get_num_threads()
    ids = torch.randint(0, model.config.vocab_size, batch, generator=torch.Generator().manual_seed(0))
    variants = _int8_variants(model)
    t0 = time.perf_counter()
    path = export_onnx(model, onnx_dir / f"{label}.onnx", dynamo=dynamo)
    export_s = time.perf_counter() - t0
    ort = OnnxCausalLM(path, intra_op_num_threads=threads)
    ort_int8 = OnnxCausalLM(quantize_onnx_int8(path, onnx_dir / f"{label}-int8.onnx"), intra_op_num_threads=threads)
    fns = {name: _forward(m, ids) for name, m in variants.items()}
    fns["onnxruntime fp32"] = lambda: ort(ids)
    fns["onnxruntime int8"] = lambda: ort_int8(ids)
    res = side_by_side(fns, rounds, baseline="fp32")
    ort_base = side_by_side({"onnxruntime fp32": lambda: ort(ids), "onnxruntime int8": lambda: ort_int8(ids)},
                            rounds, baseline="onnxruntime fp32")
    rows = []
    n_params = sum(p.numel() for p in model.parameters())
    for name, r in res.items():
        row = {"case": f"forward {batch[0]}x{batch[1]}", "model": f"{label} ({n_params / 1e6:.1f}M)", "variant": name,
               "ms": 1e3 * r["seconds"], "speedup_vs_eager_fp32": r["speedup"]}
        if name == "onnxruntime int8":
            row["speedup_vs_ort_fp32"] = ort_base["onnxruntime int8"]["speedup"]
        if name == "onnxruntime fp32":
            row["export_s"] = export_s
        rows.append(row)
    if torchao_available():  # eager torchao dynamic: one call is enough to see it is slow on a CPU
        slow = quantize_int8_library(model, "torchao-dynamic")
        one = side_by_side({"fp32": _forward(model, ids), "torchao dynamic": _forward(slow, ids)}, 1, "fp32")
        rows.append({"case": f"forward {batch[0]}x{batch[1]}", "model": rows[0]["model"],
                     "variant": "int8 torchao dynamic (1 round)", "ms": 1e3 * one["torchao dynamic"]["seconds"],
                     "speedup_vs_eager_fp32": one["torchao dynamic"]["speedup"]})

    # greedy generation, per new token: eager with its KV cache vs the int8 paths vs ONNX Runtime (no cache)
    prompt = ids[:1, :16]
    gen = {name: (lambda m=m: generate(m, prompt, max_new_tokens=gen_tokens)) for name, m in variants.items()
           if name != "int8 written-out (Int8Linear)"}
    from llm_course.infer.onnx_cache import OnnxCachedLM, export_onnx_cached

    ort_kv = OnnxCachedLM(export_onnx_cached(model, onnx_dir / f"{label}-kv.onnx", dynamo=dynamo),
                          intra_op_num_threads=threads)
    assert torch.equal(ort_kv.generate(prompt, gen_tokens), generate(model, prompt, max_new_tokens=gen_tokens))
    gen["onnxruntime fp32 (no KV cache)"] = lambda: ort.generate(prompt, gen_tokens)
    gen["onnxruntime fp32 (KV cache)"] = lambda: ort_kv.generate(prompt, gen_tokens)
    res = side_by_side(gen, max(1, rounds // 2), baseline="fp32")
    for name, r in res.items():
        rows.append({"case": f"greedy generation, 16 + {gen_tokens} tokens", "model": rows[0]["model"],
                     "variant": name, "ms_per_token": 1e3 * r["seconds"] / gen_tokens,
                     "speedup_vs_eager_fp32": r["speedup"]})
    return rows


def _dequantized(layer: nn.Module) -> torch.Tensor | None:
    """The float weight a quantized layer stands for (None: not a quantized layer)."""
    if isinstance(layer, (Int8Linear, NF4Linear)):
        return layer.dequantized_weight()
    if type(layer).__module__.startswith("torch.ao.nn.quantized.dynamic"):
        return layer.weight().dequantize()
    if isinstance(layer, nn.Linear) and is_traceable_wrapper_subclass(layer.weight):  # torchao
        return layer.weight.dequantize()
    return None


def weight_error(model: GPT, quantized: nn.Module) -> float | None:
    """Relative RMS error of the quantized layers' weights: sqrt(sum err^2 / sum w^2) over all of them."""
    err = power = 0.0
    for name, layer in quantized.named_modules():
        w_hat = _dequantized(layer)
        if w_hat is not None:
            w = model.get_submodule(name).weight.detach()
            err, power = err + (w_hat - w).pow(2).sum().item(), power + w.pow(2).sum().item()
    return (err / power) ** 0.5 if power else None


def quantized_variants(model: GPT, torchao_dynamic: bool = False) -> dict[str, torch.nn.Module]:
    """float32 and every int8 / NF4 variant of ``model`` that this machine can make."""
    variants = {
        "fp32": model,
        "int8 written-out": quantize_int8(model),
        "int8 torch.ao quantize_dynamic": quantize_int8_library(model, "torch.ao-dynamic"),
        "NF4 (block 64)": quantize_nf4(model, double_quant=False),
        "NF4 + double quant": quantize_nf4(model, double_quant=True),
    }
    if torchao_available():
        variants["int8 torchao weight-only"] = quantize_int8_library(model, "torchao-weight-only")
        if torchao_dynamic:
            variants["int8 torchao dynamic"] = quantize_int8_library(model, "torchao-dynamic")
    return variants


def bench_memory(model: GPT, label: str) -> list[dict[str, Any]]:
    """model_size_bytes of float32, bfloat16, int8 and NF4 copies; bits per quantized weight."""
    fp32 = model_size_bytes(model)
    n_params = sum(p.numel() for p in model.parameters())
    variants = quantized_variants(model)
    bf16 = model_size_bytes(copy.deepcopy(model).to(torch.bfloat16))
    rows = [{"case": "memory", "model": label, "variant": "bf16", "MiB": bf16 / 2**20, "vs_fp32": bf16 / fp32,
             "bytes_per_param": bf16 / n_params}]
    for name, m in variants.items():
        size = model_size_bytes(m)
        row = {"case": "memory", "model": label, "variant": name, "MiB": size / 2**20, "vs_fp32": size / fp32,
               "bytes_per_param": size / n_params, "weight_relative_rmse": weight_error(model, m)}
        nf4 = [x for x in m.modules() if isinstance(x, NF4Linear)]
        if nf4:
            bits = 8 * sum(x.weight_nf4.nbytes for x in nf4) / sum(x.in_features * x.out_features for x in nf4)
            row["bits_per_quantized_weight"] = bits
        rows.append(row)
    return rows


class _OnnxAsModel(nn.Module):
    """An ONNX Runtime session dressed as a GPT for ``validation_bpc``: ``(input_ids, labels) -> .loss``."""

    def __init__(self, session: Any, config: GPTConfig) -> None:
        super().__init__()
        self.session, self.config = session, config
        self.anchor = nn.Parameter(torch.zeros(1))  # validation_bpc reads the device from the parameters

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, **_: Any) -> Any:
        from llm_course.models.gpt import CausalLMOutput, causal_lm_loss

        logits = self.session(input_ids)
        return CausalLMOutput(loss=causal_lm_loss(logits, labels) if labels is not None else None, logits=logits)


def onnx_quality(model: GPT, data: Any, base: dict[str, float]) -> list[dict[str, Any]]:
    """Perplexity of ``model`` exported to ONNX and run by ONNX Runtime, float32 and int8."""
    from llm_course.infer.onnx_export import OnnxCausalLM, export_onnx, quantize_onnx_int8
    from llm_course.train.pretraining import validation_bpc

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, Path(tmp) / "q.onnx")
        files = {"onnxruntime fp32": fp32, "int8 onnxruntime (quantize_onnx_int8)":
                 quantize_onnx_int8(fp32, Path(tmp) / "q-int8.onnx")}
        for name, path in files.items():
            session = OnnxCausalLM(path, intra_op_num_threads=torch.get_num_threads())
            r = validation_bpc(_OnnxAsModel(session, model.config), data)
            rows.append({"case": f"quality: course-gpt, {VAL_CHARS:,} val chars", "model": "course-gpt",
                         "variant": name, "perplexity": r["perplexity"], "bits_per_char": r["bits_per_char"],
                         "ppl_ratio_vs_fp32": r["perplexity"] / base["perplexity"]})
    ort_fp32 = rows[0]["perplexity"]
    rows[1]["ppl_ratio_vs_ort_fp32"] = rows[1]["perplexity"] / ort_fp32
    return rows


def bench_quality() -> list[dict[str, Any]]:
    """Perplexity of the shipped course-gpt: int8 (each path) and NF4 against float32."""
    from llm_course.text.corpora import TextCorpus, docs_corpus
    from llm_course.train.pretraining import prepare_docs_tokens, validation_bpc
    from llm_course.zoo.loading import load_pretrained

    model, tok = load_pretrained("course-gpt")
    val = docs_corpus().val[:VAL_CHARS]
    data = prepare_docs_tokens(corpus=TextCorpus(train=val[:1000], val=val), tokenizer=tok)
    variants = quantized_variants(model, torchao_dynamic=True)
    base = validation_bpc(model, data)
    rows = []
    for name, m in variants.items():
        r = base if m is model else validation_bpc(m, data)
        rows.append({"case": f"quality: course-gpt, {VAL_CHARS:,} val chars", "model": "course-gpt",
                     "variant": name, "perplexity": r["perplexity"], "bits_per_char": r["bits_per_char"],
                     "ppl_ratio_vs_fp32": r["perplexity"] / base["perplexity"]})
    rows += onnx_quality(model, data, base)
    return rows + bench_memory(model, "course-gpt")


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per target: what was measured, the target, met or not."""
    out = []

    def add(what: str, value: float, target: float | None, higher_is_better: bool = True, detail: str = "") -> None:
        met = None if target is None else (value >= target if higher_is_better else value <= target)
        shown = "" if target is None else f"{'>=' if higher_is_better else '<='} {target}"
        out.append({"case": "target", "variant": what, "measured": value, "target": shown, "met": met,
                    "detail": detail})

    for model in dict.fromkeys(r["model"] for r in rows if r["case"].startswith("forward")):
        fwd = [r for r in rows if r["case"].startswith("forward") and r["model"] == model]
        big = model.startswith("random GPT")  # the int8 target is for a model where matrix products dominate
        eager_int8 = [r for r in fwd if r["variant"].startswith("int8")]
        best = max(eager_int8, key=lambda r: r["speedup_vs_eager_fp32"])
        add(f"int8 vs fp32, PyTorch, best path ({model})", best["speedup_vs_eager_fp32"], 1.5 if big else None,
            detail=best["variant"])
        ort = {r["variant"]: r for r in fwd if r["variant"].startswith("onnxruntime")}
        add(f"int8 vs fp32, both in onnxruntime ({model})", ort["onnxruntime int8"]["speedup_vs_ort_fp32"],
            1.5 if big else None)
        add(f"onnxruntime fp32 vs eager fp32 ({model})", ort["onnxruntime fp32"]["speedup_vs_eager_fp32"], 1.3)
    for r in rows:
        if r["case"].startswith("quality") and r["variant"].startswith("int8"):
            ratio = r.get("ppl_ratio_vs_ort_fp32", r["ppl_ratio_vs_fp32"])  # ONNX int8: against ONNX fp32
            add(f"perplexity ratio, {r['variant']}", ratio, 1.02, False)
    return out


def run(quick: bool = False, threads: int | None = None) -> list[dict[str, Any]]:
    """All four comparisons (quick: a tiny random model only, nothing shipped, legacy exporter).

    ``threads``: torch and onnxruntime threads (None: torch's current setting). On a machine shared with
    other work, use fewer threads than cores: a parallel region waits for its slowest thread, and a
    thread the OS has descheduled costs a whole time slice (measured: a 512 x 2048 int8 Linear on one
    token took 0.2 ms with 1 thread and 8-16 ms with 2 threads on a busy 2-core machine).
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(quick)
    finally:
        torch.set_num_threads(previous)


def _run(quick: bool) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx_dir = Path(tmp)
        if quick:
            tiny = GPT(GPTConfig(**TINY)).eval()
            rows += bench_latency(tiny, onnx_dir, (2, 32), gen_tokens=4, rounds=2, label="tiny", dynamo=False)
            rows += bench_memory(tiny, "tiny")
        else:
            big = GPT(GPTConfig(**BIG)).eval()
            rows += bench_latency(big, onnx_dir, (4, 128), gen_tokens=32, rounds=15, label="random GPT", dynamo=True)
            rows += bench_memory(big, "random GPT")
            from llm_course.zoo.loading import load_pretrained

            shipped, _ = load_pretrained("course-gpt")
            rows += bench_latency(shipped, onnx_dir, (8, shipped.config.n_positions), gen_tokens=32, rounds=15,
                                  label="course-gpt", dynamo=True)
            rows += bench_quality()
    rows += summary(rows)
    notes = (f"CPU, torch threads = onnxruntime intra_op threads = {torch.get_num_threads()}. Speed-ups are the "
             "median of per-round ratios (rounds alternate between variants). Targets: int8 >= 1.5x faster than "
             "fp32 (27 M-parameter GPT), int8/fp32 perplexity <= 1.02 (course-gpt), onnxruntime >= 1.3x eager.")
    # one table per kind of row (each has its own columns); all rows are returned together
    for name, prefix in [("inference_latency", ("forward", "greedy")), ("inference_quality", ("quality",)),
                         ("inference_memory", ("memory",)), ("inference_targets", ("target",))]:
        part = [{k: v for k, v in r.items() if k != "case" or prefix != ("target",)}
                for r in rows if r["case"].startswith(prefix)]
        if part:
            record(name, part, notes=notes if name == "inference_targets" else "", quick=quick)
    return rows


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads")
    parser.add_argument("--quick", action="store_true", help="tiny model only, nothing recorded")
    args = parser.parse_args()
    run(quick=args.quick, threads=args.threads)
