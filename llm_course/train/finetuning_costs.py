"""What fine-tuning costs: notebook 06's comparison of full fine-tuning, LoRA, QLoRA and adapters. Chapter 06.

``count_parameters`` counts trainable and total parameters as peft does (``print_trainable_parameters``
prints them the same way) and ``lora_weight_memory`` adds up the bytes of the weights' training state.
``measure_finetuning`` runs the same short training loop on a model the caller has prepared (frozen,
wrapped, quantized) and measures parameters, time per step, the training and held-out loss and the
memory of training, counted from the tensors themselves::

    weights      every parameter and buffer as stored (a 4-bit weight kept in uint8 buffers
                 counts half a byte per weight; a tied tensor counts once)
    gradients    one tensor per *trainable* parameter, same dtype: 4 bytes per fp32 parameter
    optimizer    AdamW's state: exp_avg and exp_avg_sq per trainable parameter (8 bytes per fp32
                 parameter) + a 4-byte step counter per trainable tensor
    activations  what autograd saves during the forward for the backward (seen with
                 ``torch.autograd.graph.saved_tensors_hooks``: ``saved_activation_bytes``): grows with
                 batch x length, and does not shrink much with PEFT, which freezes weights, not the forward

Full fine-tuning of a model with N fp32 parameters therefore needs 4N (weights) + 4N (gradients)
+ 8N (AdamW) = 16N bytes before a single activation: LoRA keeps the 4N of weights and shrinks
the other 12N to the adapter's size; QLoRA shrinks the weights as well. ``comparison_table`` and
``plot_comparison`` show the results side by side.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from llm_course.core.checks import check_int, check_positive, check_positive_int
from llm_course.core.runtime import eval_mode, module_device, to_device, train_mode
from llm_course.nn.evaluation import estimate_loss, model_loss
from llm_course.nn.quantization import NF4Linear, model_size_bytes, tensor_bytes
from llm_course.train.loop import BatchSource, batch_source, configure_optimizer
from llm_course.train.lora import LoRALinear
from llm_course.train.precision import autocast_context, resolve_precision

__all__ = [
    "EvalSource",
    "count_parameters",
    "print_trainable_parameters",
    "lora_weight_memory",
    "saved_activation_bytes",
    "measure_finetuning",
    "comparison_table",
    "plot_comparison",
]

# How measure_finetuning gets a held-out loss: evaluate_fn(model) -> loss (or {"loss": ...}), or eval batches.
EvalSource = Callable[[nn.Module], "float | Mapping[str, float]"] | Sequence[Mapping[str, torch.Tensor]]




# --------------------------------------------------------------------------------------------
# Counting parameters and the memory of the weights' training state
# --------------------------------------------------------------------------------------------


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, counted as peft's ``get_nb_trainable_parameters``. Chapter 06.

    Tied weights once (``named_parameters`` yields a shared tensor once). A 4-bit weight counts as the
    number of values it stands for: peft multiplies bitsandbytes' packed ``Params4bit`` back by 2; our
    ``NF4Linear`` keeps its weight and bias as buffers, so they are added here as out * in (+ out).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        if isinstance(module, NF4Linear):
            total += module.in_features * module.out_features + (0 if module.bias is None else module.bias.numel())
    return trainable, total


def print_trainable_parameters(model: nn.Module) -> None:
    """Print ``trainable params: ... || all params: ... || trainable%: ...`` exactly as peft does. Chapter 06."""
    trainable, total = count_parameters(model)
    print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")


def lora_weight_memory(model: nn.Module) -> dict[str, int]:
    """Bytes of training state, measured from the model's tensors. Chapter 06.

    ``base_weights``: every stored tensor that is not a LoRA matrix (float, or NF4 codes + scales), tied
    ones once (``model_size_bytes``). ``lora_weights``: the ``lora_A`` / ``lora_B`` matrices.
    ``gradients``: one gradient per trainable parameter, in its dtype. ``adam_state``: Adam's two moment
    estimates per trainable parameter, float32 (2 x 4 bytes). ``total``: the sum. Call it on a model
    without LoRA (all parameters trainable) for the cost of full fine-tuning.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    lora = [p for m in model.modules() if isinstance(m, LoRALinear) for p in (m.lora_A.weight, m.lora_B.weight)]
    lora_bytes = sum(p.numel() * p.element_size() for p in lora)
    trainable = [p for p in model.parameters() if p.requires_grad]
    memory = {
        "base_weights": model_size_bytes(model) - lora_bytes,
        "lora_weights": lora_bytes,
        "gradients": sum(p.numel() * p.element_size() for p in trainable),
        "adam_state": sum(2 * 4 * p.numel() for p in trainable),
    }
    memory["total"] = sum(memory.values())
    return memory


# --------------------------------------------------------------------------------------------
# Memory from the tensors, and the measuring harness
# --------------------------------------------------------------------------------------------


def _storage_key(t: torch.Tensor) -> tuple[Any, int]:
    """(identity of the memory behind ``t``, its size in bytes): views of one storage share the key."""
    try:
        storage = t.untyped_storage()
        return ("storage", t.device, storage.data_ptr()), storage.nbytes()
    except (RuntimeError, NotImplementedError, TypeError):  # wrapper subclasses (torchao) have no plain storage
        return ("tensor", id(t)), tensor_bytes(t)


def _unique_bytes(tensors: Sequence[torch.Tensor]) -> int:
    """Bytes of the memory behind ``tensors``, each storage counted once."""
    seen: dict[Any, int] = {}
    for t in tensors:
        key, nbytes = _storage_key(t)
        seen[key] = nbytes
    return sum(seen.values())


def saved_activation_bytes(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[int, torch.Tensor]:
    """Bytes autograd keeps from one forward for the backward, and the loss. Chapter 06 (PEFT).

    Runs ``model(**batch).loss`` inside ``torch.autograd.graph.saved_tensors_hooks``: every tensor an
    operation saves for its backward passes through the ``pack`` hook. Each storage is counted once
    (many saved tensors are views of one buffer, e.g. q, k, v cut from one projection), and the model's
    own parameters and buffers are left out (they are weights, counted once already). Returns
    ``(bytes, loss)``; call ``loss.backward()`` to use (and free) what was saved.
    """
    own = {_storage_key(t)[0] for t in [*model.parameters(), *model.buffers()]}
    saved: dict[Any, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key, nbytes = _storage_key(t)
        if key not in own:
            saved[key] = nbytes
        return t  # keep the tensor itself: memory is what it would be without the hook

    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        loss = model_loss(model, dict(batch))
    return sum(saved.values()), loss


def _rss_bytes() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process().memory_info().rss


def _eval_loss(model: nn.Module, evaluate_fn: EvalSource | None) -> float | None:
    """Held-out loss: ``evaluate_fn(model)`` (a float or a dict with "loss") or a list of eval batches."""
    if evaluate_fn is None:
        return None
    if callable(evaluate_fn):
        with eval_mode(model), torch.no_grad():
            value = evaluate_fn(model)
        value = value["loss"] if isinstance(value, Mapping) else value
        return float(value)
    return estimate_loss(model, evaluate_fn)["loss"]


def measure_finetuning(
    name: str,
    model: nn.Module,
    get_batch: BatchSource,
    steps: int,
    lr: float,
    evaluate_fn: EvalSource | None = None,
    warmup: int = 1,
    weight_decay: float = 0.0,
    seed: int | None = 0,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Train ``model`` for ``steps`` AdamW updates and measure what it costs. Chapter 06 (PEFT).

    The same function measures full fine-tuning, LoRA, QLoRA and adapters: prepare the model first
    (freeze, wrap, quantize), then pass it in; only parameters with ``requires_grad`` are trained
    (``configure_optimizer``: AdamW, ``weight_decay`` on matrices). ``get_batch(i)`` returns the model's
    keyword arguments with labels (or pass a re-iterable of batches). ``evaluate_fn``: a callable
    ``evaluate_fn(model) -> float`` (or a dict with "loss"), run under ``no_grad`` in eval mode, or a
    list of held-out batches (``estimate_loss``); measured before and after training.

    Memory is counted from the tensors (bytes; a storage shared by several tensors counts once):
    ``weights_bytes`` (``model_size_bytes``: parameters and buffers as stored), ``gradient_bytes``
    (every ``.grad`` after the first backward), ``optimizer_bytes`` (the optimizer's state tensors after
    its first step), ``activation_bytes`` (saved for backward in one step: ``saved_activation_bytes``)
    and ``total_bytes``, their sum: the memory these tensors need if all are alive at once (a slight
    over-estimate: during the backward, saved activations are freed while the gradients appear).
    Not counted: temporaries inside an operation, the allocator's slack, the interpreter.
    ``rss_delta_bytes`` is the growth of the process's resident memory (highest sample after forward and
    after each step, minus before the first): the operating system's view, noisy (allocator caching,
    other objects), None without psutil.

    Time: ``time_per_step_s`` is the median over the steps after the first ``warmup`` (>= 1: the first
    step carries the measuring hooks and one-time set-up), each forward + backward + update.
    Losses: ``train_loss_first``/``train_loss_final`` (the first and the last step's training loss),
    ``eval_loss_before``/``eval_loss`` (None without ``evaluate_fn``). Also the parameter counts
    (``count_parameters``). The model is left trained, in the mode it came in.

    ``precision``: "fp32", "bf16", "fp16" (CUDA, with a GradScaler) or "auto" (bf16/fp16 on a GPU, fp32 on
    a CPU; ``precision.resolve_precision``): the forward runs under ``torch.autocast``, so the saved
    activations are half the size in bf16/fp16; weights, gradients and AdamW's state keep their dtypes.
    The result's ``precision`` says which one ran.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_positive_int("steps", steps)
    check_int("warmup", warmup, 1, steps - 1, hint=f"below steps={steps}: the steps after the warmup are timed")
    check_positive("lr", lr)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("the model has no trainable parameters: unfreeze some, or add LoRA / adapters first")
    if seed is not None:
        torch.manual_seed(seed)
    source = batch_source(get_batch)
    device = module_device(model)
    trainable, total = count_parameters(model)  # as peft counts: tied once, 4-bit weights as their values
    counts = {"trainable_params": trainable, "total_params": total, "trainable_pct": 100.0 * trainable / total}
    precision = resolve_precision(precision, device)
    eval_before = _eval_loss(model, evaluate_fn)
    optimizer = configure_optimizer(model, weight_decay=weight_decay, lr=lr, betas=(0.9, 0.999))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")  # a pass-through unless fp16
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    memory: dict[str, int] = {"weights_bytes": model_size_bytes(model)}
    rss_start, rss_peak = _rss_bytes(), None
    losses, times = [], []
    with train_mode(model):
        for i in range(steps):
            batch = to_device(source(i), device, f"get_batch({i})")
            sync()
            t0 = time.perf_counter()
            with autocast_context(precision, device):
                if i == 0:  # measure on the first step (it is not timed)
                    memory["activation_bytes"], loss = saved_activation_bytes(model, batch)
                else:
                    loss = model_loss(model, batch)
            rss = _rss_bytes()  # after the forward: activations are alive
            scaler.scale(loss).backward()
            if i == 0:
                memory["gradient_bytes"] = _unique_bytes([p.grad for p in model.parameters() if p.grad is not None])
            scaler.step(optimizer)  # optimizer.step(), unless fp16 gradients overflowed
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            sync()
            times.append(time.perf_counter() - t0)
            if i == 0:
                memory["optimizer_bytes"] = _unique_bytes(
                    [t for state in optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor)])
            value = float(loss.detach())
            if not math.isfinite(value):
                raise ValueError(f"{name}: the training loss is {value} at step {i}; lower lr")
            losses.append(value)
            if rss is not None:
                rss_peak = max(rss, _rss_bytes() or 0, rss_peak or 0)
    eval_after = _eval_loss(model, evaluate_fn)
    memory["total_bytes"] = sum(memory[k] for k in ("weights_bytes", "gradient_bytes", "optimizer_bytes",
                                                    "activation_bytes"))
    return {
        "name": name,
        **counts,
        "time_per_step_s": statistics.median(times[warmup:]),
        "train_loss_first": losses[0],
        "train_loss_final": losses[-1],
        "eval_loss_before": eval_before,
        "eval_loss": eval_after,
        **memory,
        "rss_delta_bytes": None if rss_start is None or rss_peak is None else rss_peak - rss_start,
        "steps": steps,
        "precision": precision,
    }


def _mb(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.2f}"


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def comparison_table(results: Sequence[Mapping[str, Any]]) -> str:
    """``measure_finetuning`` results as a Markdown table (memory in MiB). Chapter 06 (PEFT).

    Display it in a notebook with ``IPython.display.Markdown(comparison_table(results))``.
    """
    if not results:
        raise ValueError("results is empty: pass the dicts measure_finetuning returned")
    header = ["method", "trainable params", "trainable %", "weights MiB", "grads MiB", "optimizer MiB",
              "activations MiB", "total MiB", "RSS delta MiB (noisy)", "ms / step", "train loss", "eval loss"]

    def loss(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    rows = [[str(r["name"]), f"{r['trainable_params']:,}", f"{r['trainable_pct']:.2f}", _mb(r["weights_bytes"]),
             _mb(r["gradient_bytes"]), _mb(r["optimizer_bytes"]), _mb(r["activation_bytes"]), _mb(r["total_bytes"]),
             _mb(r.get("rss_delta_bytes")), f"{1000 * r['time_per_step_s']:.1f}", loss(r["train_loss_final"]),
             loss(r.get("eval_loss"))] for r in results]
    return _markdown(header, rows)


def plot_comparison(results: Sequence[Mapping[str, Any]]) -> Any:
    """Four bar charts of ``measure_finetuning`` results; returns the matplotlib Figure. Chapter 06 (PEFT).

    Trainable parameters (log scale), training memory stacked by kind (weights, gradients, optimizer,
    activations; MiB), time per step (ms) and held-out loss (before -> after when both are known).
    """
    import matplotlib.pyplot as plt

    if not results:
        raise ValueError("results is empty: pass the dicts measure_finetuning returned")
    names = [str(r["name"]) for r in results]
    x = list(range(len(results)))
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    ax = axes[0]
    ax.bar(x, [max(r["trainable_params"], 1) for r in results], color="tab:blue")
    ax.set_yscale("log")
    ax.set_title("trainable parameters (log)")
    ax = axes[1]
    bottom = [0.0] * len(results)
    for key, label in [("weights_bytes", "weights"), ("gradient_bytes", "gradients"),
                       ("optimizer_bytes", "optimizer"), ("activation_bytes", "activations")]:
        heights = [r[key] / 2**20 for r in results]
        ax.bar(x, heights, bottom=bottom, label=label)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_title("training memory (MiB)")
    ax.legend(fontsize=8)
    ax = axes[2]
    ax.bar(x, [1000 * r["time_per_step_s"] for r in results], color="tab:green")
    ax.set_title("time per step (ms)")
    ax = axes[3]
    if all(r.get("eval_loss") is not None for r in results):
        before = [r.get("eval_loss_before") for r in results]
        if all(b is not None for b in before):
            ax.bar([i - 0.2 for i in x], before, width=0.4, color="lightgray", label="before")
            ax.bar([i + 0.2 for i in x], [r["eval_loss"] for r in results], width=0.4, color="tab:red", label="after")
            ax.legend(fontsize=8)
        else:
            ax.bar(x, [r["eval_loss"] for r in results], color="tab:red")
        ax.set_title("held-out loss")
    else:
        ax.bar(x, [r["train_loss_final"] for r in results], color="tab:red")
        ax.set_title("final training loss")
    for ax in axes:
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=20, ha="right")
    fig.tight_layout()
    return fig
