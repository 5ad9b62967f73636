"""Best practices, measured: gradient checkpointing and mixed precision. Chapter 09 (best practices).

The manual's "efficient memory management" section (ERRATA section 9) turns on
``TrainingArguments(gradient_checkpointing=True)`` and ``torch.cuda.amp.autocast`` / ``GradScaler``
and says they help. Here each claim is a measurement:

**Gradient checkpointing.** Training keeps, for the backward pass, every tensor an operation saved in
the forward (its *activations*): for a GPT block that is ~20 (B, T, C) tensors plus the attention's.
With checkpointing each block keeps only its input x (B, T, C); the backward re-runs the block's
forward to get the rest back. Memory per block drops ~20x, and the price is one extra forward per
block (~1/3 more compute: a backward costs about two forwards). What checkpointing cannot shrink is
what lives outside the blocks: the logits (B, T, V) and the loss's log-probabilities, which for a
small-width, large-vocabulary model (course-gpt: C = 160, V = 4096) are a big share::

    activation_memory(model, batch, checkpointing=True)   # bytes autograd keeps, counted by
    checkpointing_report(model, batch)                    #   finetuning_costs.saved_activation_bytes

works for the course's ``GPT`` (``gpt.GPT.gradient_checkpointing_enable``) and for a ``transformers``
model (``activation_checkpointing_enable`` in transformers 5.x: ``gradient_checkpointing_enable`` is
its deprecated alias there).

**Mixed precision.** ``torch.autocast(device_type, dtype)`` runs matrix products in bf16 (CPU or
CUDA) or fp16 (CUDA), keeping the weights and the optimizer in fp32. fp16 has a narrow exponent range,
so small gradients underflow to 0: its loss is multiplied by a scale before ``backward`` and the
gradients divided by it before the step (``torch.amp.GradScaler``). bf16 has fp32's exponent range and
needs no scaler. ``precision_run`` trains the same model from the same seed on the same batches in each
precision; ``compare_precisions`` tabulates the loss curves against fp32.

Where the manual goes wrong (ERRATA section 9): ``from torch.cuda.amp import autocast, GradScaler`` is a
deprecated spelling. torch 2.x says so with a ``FutureWarning`` (``amp_deprecation_warnings`` captures
it); the current spelling is ``torch.amp.autocast("cuda")`` and ``torch.amp.GradScaler("cuda")``
(``MANUAL_AMP`` shows both, ``find_deprecated_amp`` finds the old one in code). The manual's snippet also
passes no labels (``outputs = model(inputs)``: ``outputs.loss`` is None) and never zeroes the gradients.

**``torch.cuda.empty_cache()``** (the manual: "Очистка кэша GPU") returns the CUDA allocator's cached,
unused blocks to the driver; it frees nothing that a tensor still holds (``empty_cache_report`` shows it,
on a GPU).
"""

from __future__ import annotations

import contextlib
import re
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from llm_course.core.checks import check_positive_int
from llm_course.core.runtime import module_device, train_mode
from llm_course.nn.evaluation import model_loss
from llm_course.train.finetuning_costs import saved_activation_bytes
from llm_course.train.loop import configure_optimizer
from llm_course.train.precision import PRECISIONS, autocast_context, check_precision

__all__ = [
    "set_gradient_checkpointing",
    "is_checkpointing",
    "activation_memory",
    "checkpointing_report",
    "PRECISIONS",
    "autocast_context",
    "precision_run",
    "compare_precisions",
    "plot_loss_curves",
    "MANUAL_AMP",
    "find_deprecated_amp",
    "amp_deprecation_warnings",
    "empty_cache_report",
]

Batch = Mapping[str, torch.Tensor]  # {"input_ids": (B, T), "labels": (B, T), ...}: the model's kwargs

# --------------------------------------------------------------------------------------------
# 1. Gradient checkpointing
# --------------------------------------------------------------------------------------------


def set_gradient_checkpointing(model: nn.Module, enabled: bool) -> None:
    """Turn gradient checkpointing on or off, for the course's GPT or a transformers model. Chapter 09.

    transformers 5.x calls it ``activation_checkpointing_enable`` (``gradient_checkpointing_enable`` still
    works but warns that it will go in v6); older versions only have the old name. Both get
    ``use_reentrant=False``, the variant torch recommends (the reentrant one computes no gradients for a
    block's weights unless the block's *input* requires grad: it only warns).
    """
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        if enabled:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif hasattr(model, "gradient_checkpointing_enable"):  # the course's GPT, older transformers
        if not enabled:
            model.gradient_checkpointing_disable()
        elif isinstance(model, _hf_pretrained_class()):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable()
    else:
        raise TypeError(
            f"{type(model).__name__} has no gradient_checkpointing_enable(): use llm_course.models.gpt.GPT or a "
            "transformers model, or wrap your blocks in torch.utils.checkpoint.checkpoint yourself"
        )


def is_checkpointing(model: nn.Module) -> bool:
    """Whether gradient checkpointing is on (course GPT or transformers model). Chapter 09."""
    if hasattr(model, "is_activation_checkpointing"):  # transformers 5.x (the old name warns)
        return bool(model.is_activation_checkpointing)
    return bool(getattr(model, "is_gradient_checkpointing", False))


def _hf_pretrained_class() -> type:
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a core dependency
        return type(None)
    return PreTrainedModel


def _check_batch(batch: Any) -> dict[str, torch.Tensor]:
    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        raise TypeError(
            f"batch must be a dict of the model's inputs with 'input_ids' (and 'labels' for a loss), got "
            f"{type(batch).__name__}; e.g. {{'input_ids': ids, 'labels': ids}}"
        )
    if "labels" not in batch:
        raise ValueError("batch has no 'labels': pass labels=input_ids (unshifted) so the model returns a loss")
    return dict(batch)


@contextlib.contextmanager
def _checkpointing(model: nn.Module, enabled: bool):
    """Set checkpointing and train mode for the duration; restore both afterwards."""
    was_on = is_checkpointing(model)
    set_gradient_checkpointing(model, enabled)
    try:
        with train_mode(model):
            yield
    finally:
        set_gradient_checkpointing(model, was_on)


def activation_memory(model: nn.Module, batch: Batch, checkpointing: bool) -> dict[str, Any]:
    """What one training step keeps in memory for the backward pass, with or without checkpointing. Chapter 09.

    Runs one forward (train mode) inside ``finetuning_costs.saved_activation_bytes``, which adds up every
    tensor autograd saves for the backward (each storage once, weights excluded), then the backward
    (which frees them). Returns ``{"checkpointing", "saved_bytes", "peak_bytes", "loss"}``.
    ``peak_bytes`` is the peak of allocated device memory over forward + backward above what was
    allocated before, on CUDA (``torch.cuda.max_memory_allocated``); None on the CPU, where torch has
    no cheap allocator statistics. Gradients are zeroed afterwards; the model's mode is restored.
    """
    batch = _check_batch(batch)
    device = module_device(model)
    cuda = device.type == "cuda"
    with _checkpointing(model, checkpointing):
        model.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        saved, loss = saved_activation_bytes(model, batch)
        loss.backward()
        peak = None
        if cuda:
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device) - before
        model.zero_grad(set_to_none=True)
    return {"checkpointing": checkpointing, "saved_bytes": int(saved), "peak_bytes": peak, "loss": loss.item()}


def _step_seconds(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(wall-clock, process CPU) seconds of one forward + backward (gradients are zeroed, not stepped)."""
    device = module_device(model)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0, c0 = time.perf_counter(), time.process_time()
    model_loss(model, batch).backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - t0, time.process_time() - c0)
    model.zero_grad(set_to_none=True)
    return seconds


def checkpointing_report(model: nn.Module, batch: Batch, repeats: int = 3) -> dict[str, Any]:
    """Memory and time of a training step with checkpointing vs without, side by side. Chapter 09.

    Memory: ``activation_memory`` both ways (deterministic: it counts bytes). Time: forward + backward,
    ``repeats`` rounds after one warm-up round of each; every round times both variants back to back
    (alternating which goes first), and the reported ``time_ratio`` is the median of the per-round
    ratios, so that noise from a shared machine hits both alike; ``cpu_time_ratio`` is the same with
    process CPU time (steadier when other programs share the cores). Returns ``{"saved_bytes_plain",
    "saved_bytes_checkpointed", "memory_ratio", "peak_ratio" (CUDA only, else None), "seconds_plain",
    "seconds_checkpointed", "time_ratio", "cpu_time_ratio", "loss_plain", "loss_checkpointed"}``; the
    issue's targets are memory_ratio <= 0.5 and time_ratio <= 1.4.
    """
    check_positive_int("repeats", repeats)
    batch = _check_batch(batch)
    plain = activation_memory(model, batch, checkpointing=False)
    ckpt = activation_memory(model, batch, checkpointing=True)

    def timed(enabled: bool) -> tuple[float, float]:
        with _checkpointing(model, enabled):
            return _step_seconds(model, batch)

    timed(False), timed(True)  # warm-up: first calls allocate and pick kernels
    ratios, cpu_ratios, t_plain, t_ckpt = [], [], [], []
    for r in range(repeats):
        if r % 2 == 0:
            a = timed(False)
            b = timed(True)
        else:
            b = timed(True)
            a = timed(False)
        t_plain.append(a[0])
        t_ckpt.append(b[0])
        ratios.append(b[0] / a[0])
        cpu_ratios.append(b[1] / a[1])
    peak_ratio = None
    if plain["peak_bytes"] and ckpt["peak_bytes"] is not None:
        peak_ratio = ckpt["peak_bytes"] / plain["peak_bytes"]
    return {
        "saved_bytes_plain": plain["saved_bytes"],
        "saved_bytes_checkpointed": ckpt["saved_bytes"],
        "memory_ratio": ckpt["saved_bytes"] / plain["saved_bytes"],
        "peak_bytes_plain": plain["peak_bytes"],
        "peak_bytes_checkpointed": ckpt["peak_bytes"],
        "peak_ratio": peak_ratio,
        "seconds_plain": statistics.median(t_plain),
        "seconds_checkpointed": statistics.median(t_ckpt),
        "time_ratio": statistics.median(ratios),
        "cpu_time_ratio": statistics.median(cpu_ratios),
        "loss_plain": plain["loss"],
        "loss_checkpointed": ckpt["loss"],
    }


# --------------------------------------------------------------------------------------------
# 2. Mixed precision
# --------------------------------------------------------------------------------------------

# PRECISIONS, autocast_context and check_precision live in training.py: train() (chapter 04's loop)
# uses them too, so a notebook's PRECISION parameter trains in bf16/fp16 on a GPU.


def _move(batch: Batch, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def precision_run(
    model_factory: Callable[[], nn.Module],
    batches: Sequence[Batch],
    precision: str = "fp32",
    device: str | torch.device = "cpu",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> list[float]:
    """Train a fresh model for ``len(batches)`` AdamW steps in ``precision``; the loss of each step. Chapter 09.

    ``model_factory()`` builds the model (it is called with torch seeded by ``seed``, so every precision
    starts from the same weights; the global RNG state is restored afterwards). Each step: forward under
    ``autocast_context(precision, device)``, backward, optimizer step. The weights and AdamW's state stay
    fp32 throughout: autocast only changes the dtype the matrix products compute in. fp16 (CUDA only)
    goes through ``torch.amp.GradScaler("cuda")``: ``scaler.scale(loss).backward()``, ``scaler.step``,
    ``scaler.update()``; a step whose scaled gradients overflowed is skipped and the scale halved.
    """
    if isinstance(model_factory, nn.Module) or not callable(model_factory):
        raise TypeError(f"model_factory must be a function that builds a fresh model (e.g. lambda: GPT(config)), "
                        f"got {type(model_factory).__name__}: every precision must start from the same new weights")
    if isinstance(batches, Mapping) or not isinstance(batches, Sequence):
        raise TypeError("batches must be a list of batch dicts (one per step), e.g. [random_blocks(...) for _ in "
                        f"range(50)], got {type(batches).__name__}")
    if len(batches) == 0:
        raise ValueError("batches is empty: pass at least one batch (one optimizer step per batch)")
    device = torch.device(device)
    check_precision(precision, device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but torch sees no CUDA GPU; use device='cpu'")
    batches = [_check_batch(b) for b in batches]

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model = model_factory().to(device).train()
    optimizer = configure_optimizer(model, weight_decay=weight_decay, lr=lr)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")  # a no-op unless fp16
    losses = []
    for batch in batches:
        batch = _move(batch, device)
        with autocast_context(precision, device):
            loss = model_loss(model, batch)
        scaler.scale(loss).backward()  # the backward runs outside autocast, in the forward ops' dtypes
        scaler.step(optimizer)  # unscales the gradients first; skips the step if they hold inf/nan
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def compare_precisions(
    model_factory: Callable[[], nn.Module],
    batches: Sequence[Batch],
    precisions: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
    lr: float = 1e-3,
    seed: int = 0,
) -> dict[str, Any]:
    """Loss curves of the same training run in several precisions, against fp32. Chapter 09.

    ``precisions``: default fp32 and bf16, plus fp16 on CUDA. Each run starts from the same weights
    (``seed``) and sees the same batches. Returns ``{"losses": {precision: [loss per step]}, "rows":
    [{precision, final_loss, max_abs_diff, mean_abs_diff, seconds, time_ratio}]}``, differences and time
    ratios against the fp32 run (fp32 is always run, first).
    """
    device = torch.device(device)
    if precisions is None:
        precisions = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    precisions = list(precisions)
    for p in precisions:
        check_precision(p, device)
    order = ["fp32"] + [p for p in dict.fromkeys(precisions) if p != "fp32"]
    losses, seconds = {}, {}
    for p in order:
        t0 = time.perf_counter()
        losses[p] = precision_run(model_factory, batches, p, device, lr=lr, seed=seed)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds[p] = time.perf_counter() - t0
    rows = []
    for p in order:
        diffs = [abs(a - b) for a, b in zip(losses[p], losses["fp32"])]
        rows.append({
            "precision": p,
            "final_loss": losses[p][-1],
            "max_abs_diff": max(diffs),
            "mean_abs_diff": sum(diffs) / len(diffs),
            "seconds": seconds[p],
            "time_ratio": seconds[p] / seconds["fp32"],
        })
    return {"losses": losses, "rows": rows}


def plot_loss_curves(losses: Mapping[str, Sequence[float]], ax: Any = None, title: str = "loss by precision"):
    """One line per precision (``compare_precisions(...)["losses"]``); returns the matplotlib Axes. Chapter 09."""
    if not isinstance(losses, Mapping):
        raise TypeError(f"losses must be a dict {{precision: [loss per step]}}, e.g. "
                        f"compare_precisions(...)['losses'], got {type(losses).__name__}")
    if not losses:
        raise ValueError("losses must be a non-empty dict {precision: [loss per step]}, e.g. "
                         "compare_precisions(...)['losses']")
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    for name, curve in losses.items():
        ax.plot(range(1, len(curve) + 1), list(curve), label=name, linestyle="--" if name != "fp32" else "-")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats/token)")
    ax.set_title(title)
    ax.legend()
    return ax


# --------------------------------------------------------------------------------------------
# 3. The manual's deprecated AMP spelling (ERRATA section 9)
# --------------------------------------------------------------------------------------------

MANUAL_AMP = {
    # verbatim from the manual ("Лучшие практики", 1): `inputs` is never defined, and ``model(inputs)`` passes
    # input ids and no labels, so ``outputs.loss`` is None and ``scaler.scale(loss)`` has nothing to scale
    "manual": (
        "from torch.cuda.amp import autocast, GradScaler\n"
        "\n"
        "scaler = GradScaler()\n"
        "with autocast():\n"
        "    outputs = model(inputs)\n"
        "    loss = outputs.loss\n"
        "    \n"
        "scaler.scale(loss).backward()\n"
        "scaler.step(optimizer)\n"
        "scaler.update()\n"
    ),
    "current": (
        "scaler = torch.amp.GradScaler('cuda')                 # fp16 only; bf16 needs no scaler\n"
        "with torch.autocast('cuda', dtype=torch.float16):     # or 'cpu' with torch.bfloat16\n"
        "    loss = model(**batch).loss                        # batch has labels; the manual's model(inputs) none\n"
        "scaler.scale(loss).backward()\n"
        "scaler.step(optimizer)\n"
        "scaler.update()\n"
        "optimizer.zero_grad()                                 # the manual never zeroes the gradients\n"
    ),
}
"""The manual's mixed-precision snippet, as it is written, and its current spelling. Chapter 09 (ERRATA section 9)."""

# old spelling -> current spelling
_DEPRECATED_AMP = [
    (r"torch\.cuda\.amp\.autocast\b", "torch.amp.autocast('cuda', ...)"),
    (r"torch\.cuda\.amp\.GradScaler\b", "torch.amp.GradScaler('cuda', ...)"),
    (r"torch\.cpu\.amp\.autocast\b", "torch.amp.autocast('cpu', ...)"),
    (r"from\s+torch\.cuda\.amp\s+import\b[^\n]*", "torch.amp.autocast('cuda') / torch.amp.GradScaler('cuda')"),
    (r"from\s+torch\.cpu\.amp\s+import\b[^\n]*", "torch.amp.autocast('cpu')"),
]


def find_deprecated_amp(code: str) -> list[tuple[str, str]]:
    """Deprecated AMP spellings in ``code``: ``[(what was written, what to write instead)]``. Chapter 09.

    E.g. ``find_deprecated_amp(MANUAL_AMP["manual"])`` finds the manual's
    ``from torch.cuda.amp import autocast, GradScaler``.
    """
    if not isinstance(code, str):
        raise TypeError(f"code must be a string of Python source, got {type(code).__name__}")
    found = []
    for pattern, fix in _DEPRECATED_AMP:
        found += [(m.group(0).strip(), fix) for m in re.finditer(pattern, code)]
    return found


def amp_deprecation_warnings() -> list[str]:
    """The ``FutureWarning`` messages torch gives for the manual's spelling. Chapter 09 (ERRATA section 9).

    Calls ``torch.cuda.amp.autocast()`` and ``torch.cuda.amp.GradScaler()`` (harmless without a GPU:
    they disable themselves with a UserWarning, which is left out) under
    ``warnings.catch_warnings(record=True)``. torch 2.13 says e.g. "`torch.cuda.amp.autocast(args...)` is
    deprecated. Please use `torch.amp.autocast('cuda', args...)` instead."
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.cuda.amp.autocast():
            pass
        torch.cuda.amp.GradScaler()
    return [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]


# --------------------------------------------------------------------------------------------
# 4. torch.cuda.empty_cache(): what it frees, and what it does not (ERRATA section 9)
# --------------------------------------------------------------------------------------------


def _cuda_memory_mb(device: torch.device) -> dict[str, float]:
    torch.cuda.synchronize(device)
    return {"allocated MB": torch.cuda.memory_allocated(device) / 2**20,
            "reserved MB": torch.cuda.memory_reserved(device) / 2**20}


def empty_cache_report(device: str | torch.device = "cuda", megabytes: int = 256) -> list[dict[str, Any]]:
    """What ``torch.cuda.empty_cache()`` frees, step by step, on a CUDA device. Chapter 09 (ERRATA section 9).

    PyTorch's CUDA allocator keeps freed blocks *reserved* (cached) for the next tensor instead of handing
    them back to the driver; ``nvidia-smi`` shows reserved memory. ``empty_cache()`` returns the cached,
    unused blocks to the driver. It frees nothing a tensor still holds, and it does not make a training
    step fit: the same step would reserve the same memory again (the manual presents it as a memory saver).
    Allocates ``megabytes`` MiB, then records ``torch.cuda.memory_allocated`` and ``memory_reserved``
    (MiB) at five moments: before, with the tensor, after ``empty_cache()`` with the tensor still held
    (nothing freed), after ``del`` (allocated falls, reserved stays), after ``empty_cache()`` (reserved
    falls). Returns ``[{"moment", "allocated MB", "reserved MB"}, ...]``. Needs CUDA: on any other device
    there is no caching allocator and ``empty_cache`` has nothing to do (a ValueError says so).
    """
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"empty_cache_report needs a CUDA device, got {device.type!r}: torch.cuda.empty_cache() only "
                         "returns blocks cached by PyTorch's CUDA allocator (on the CPU there is no such cache and it "
                         "does nothing); run it on a GPU, e.g. empty_cache_report('cuda')")
    if not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but torch sees no CUDA GPU: empty_cache_report needs one")
    check_positive_int("megabytes", megabytes, hint="the size of the test tensor in MiB")
    torch.cuda.empty_cache()  # start from no cached blocks, so each change below is this tensor's
    rows = [{"moment": "before", **_cuda_memory_mb(device)}]
    x = torch.empty(megabytes * 2**20, dtype=torch.uint8, device=device)
    rows.append({"moment": f"a {megabytes} MiB tensor held", **_cuda_memory_mb(device)})
    torch.cuda.empty_cache()
    rows.append({"moment": "empty_cache(), tensor still held", **_cuda_memory_mb(device)})
    del x
    rows.append({"moment": "del tensor", **_cuda_memory_mb(device)})
    torch.cuda.empty_cache()
    rows.append({"moment": "empty_cache() after del", **_cuda_memory_mb(device)})
    return rows
