"""The training loop, written out: from a model and a stream of batches to a trained model. Chapter 04.

``train(model, get_batch, TrainConfig(...))`` runs AdamW (``configure_optimizer``: weight decay on
matrices only) with a linear warmup and cosine decay of the learning rate (``lr_at``), gradient
accumulation and clipping, optional mixed precision (``train.precision``), held-out evaluations
(``nn.evaluation.estimate_loss``), callbacks, checkpoints it can resume from (``train.checkpoints``)
and a live loss curve in a notebook (``train.liveplot``). It returns a ``TrainResult`` (per-step
history, evaluations) or raises ``NonFiniteLossError`` at the first NaN/Inf. ``batch_source`` turns a
callable or an iterable of batches into ``get_batch(i)``; fine-tuning's measuring harness reuses it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from llm_course.core.checks import check_choice, check_float, check_int, check_positive
from llm_course.core.runtime import get_device, seed_everything, to_device
from llm_course.nn.evaluation import estimate_loss, model_loss
from llm_course.train.checkpoints import (
    CHECKPOINT_NAME,
    load_checkpoint,
    save_checkpoint,
)
from llm_course.train.liveplot import LossPlot
from llm_course.train.precision import PRECISIONS, autocast_context, resolve_precision

__all__ = ["TrainConfig", "TrainResult", "NonFiniteLossError", "configure_optimizer", "lr_at", "batch_source", "train"]

Batch = Mapping[str, torch.Tensor]  # e.g. {"input_ids": (B, T), "labels": (B, T)}: the model's kwargs
BatchSource = Callable[[int], Batch] | Iterable[Batch]
Callback = Callable[[dict, "TrainResult"], "bool | None"]


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Everything that shapes a training run. Chapter 04 (pretraining).

    Optimisation: ``max_steps`` optimizer updates; the learning rate warms up linearly from 0 to ``lr``
    over ``warmup_steps`` and then follows a cosine down to ``min_lr`` at ``max_steps`` (``lr_at``).
    ``weight_decay`` and ``betas`` are AdamW's (decay on matrices only, ``configure_optimizer``).
    ``grad_clip``: clip the global gradient norm to this value (None or 0: no clipping).
    ``grad_accum_steps``: micro-batches per update; the effective batch is grad_accum_steps times the
    batch that ``get_batch`` returns.

    Evaluation: every ``eval_interval`` steps (and at the last step) the mean loss over ``eval_steps``
    held-out batches; ``chars_per_token`` (characters of text per token of the held-out data) adds bits
    per character. Logging: ``log_interval`` steps between log lines (0: silent), ``progress`` a tqdm bar,
    ``live_plot`` a loss curve redrawn in place in a notebook (nothing happens outside one).

    Precision: ``precision`` is "fp32" (default), "bf16", "fp16" (CUDA only, with a GradScaler) or "auto"
    (``resolve_precision``: bf16 or fp16 on a CUDA GPU, fp32 elsewhere). Mixed precision runs the forward
    pass under ``torch.autocast``; weights and AdamW's state stay fp32 (chapter 09).

    Reproducibility and saving: ``seed`` seeds Python, NumPy and torch at the start of a fresh run (None:
    leave them as they are); ``device`` is passed to ``get_device`` ("auto", "cpu", "cuda", ...).
    ``checkpoint_dir`` (None: never save) receives ``checkpoint.safetensors`` every
    ``checkpoint_interval`` steps (0: only at the end) and whenever a callback stops the run.
    """

    max_steps: int = 1000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = 1.0
    grad_accum_steps: int = 1
    eval_interval: int = 100
    eval_steps: int = 20
    chars_per_token: float | None = None
    log_interval: int = 10
    seed: int | None = 1337
    device: str = "auto"
    checkpoint_dir: str | Path | None = None
    checkpoint_interval: int = 0
    progress: bool = True
    live_plot: bool = True
    precision: str = "fp32"

    def __post_init__(self) -> None:
        for name, minimum in [("max_steps", 1), ("warmup_steps", 0), ("grad_accum_steps", 1),
                              ("eval_interval", 1), ("eval_steps", 1), ("log_interval", 0),
                              ("checkpoint_interval", 0)]:
            check_int(f"TrainConfig.{name}", getattr(self, name), minimum=minimum)
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) cannot exceed max_steps ({self.max_steps})")
        check_positive("TrainConfig.lr", self.lr)
        check_float("TrainConfig.min_lr", self.min_lr, 0.0, self.lr, hint="the cosine decays from lr down to it")
        check_float("TrainConfig.weight_decay", self.weight_decay, low=0.0)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"TrainConfig.betas must be two numbers in [0, 1), e.g. (0.9, 0.95), got {self.betas!r}")
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        check_float("TrainConfig.grad_clip", self.grad_clip, low=0.0, allow_none=True, hint="None or 0: no clipping")
        check_positive("TrainConfig.chars_per_token", self.chars_per_token, allow_none=True,
                       hint="e.g. len(val_text) / len(val_ids)")
        check_int("TrainConfig.seed", self.seed, minimum=0, allow_none=True)
        check_choice("TrainConfig.precision", self.precision, (*PRECISIONS, "auto"))


# --------------------------------------------------------------------------------------------
# Optimizer and learning-rate schedule
# --------------------------------------------------------------------------------------------


def configure_optimizer(
    model: nn.Module,
    weight_decay: float,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.95),
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW with weight decay on the weight matrices only. Chapter 04 (pretraining).

    Two parameter groups: tensors with 2 or more dimensions (Linear weights, embeddings) decay; biases
    and LayerNorm scales (1-D) do not: pulling a norm's scale or a bias towards 0 is not regularisation,
    it just fights the model. ``model.named_parameters()`` yields a tied tensor (GPT's lm_head *is* wte)
    once, so it is updated once; frozen parameters (``requires_grad=False``) are left out.
    ``fused``: use PyTorch's fused AdamW kernel (one kernel for all tensors; CPU and CUDA since torch 2.4).
    None = use it when it is available, else the default implementation; True = insist on it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    decay, no_decay = [], []
    for _, p in model.named_parameters():  # a tied parameter is yielded once
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
    groups = [g for g in ({"params": decay, "weight_decay": float(weight_decay)},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    if fused is not False:
        try:
            return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
        except (RuntimeError, ValueError, TypeError) as e:  # e.g. a device without the fused kernel
            if fused:
                raise ValueError(f"fused AdamW is not available here ({e}); pass fused=None or False") from e
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The learning rate of update number ``step`` (1-based): linear warmup, then cosine decay. Chapter 04.

    ``lr * step / warmup_steps`` while ``step < warmup_steps`` (small steps while AdamW's moment estimates
    are still noisy), exactly ``lr`` at ``warmup_steps``, then half a cosine from ``lr`` down to ``min_lr``,
    reached at ``max_steps`` (and kept after it). Halfway through the decay it is ``(lr + min_lr) / 2``.
    """
    check_int("step", step, minimum=0)
    if step < cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    # 0 -> 1 over the decay, then held at 1 (max(1, ...): warmup_steps == max_steps leaves no decay phase)
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------


def batch_source(data: BatchSource, skip: int = 0, what: str = "get_batch") -> Callable[[int], Batch]:
    """``get_batch(i)`` for a callable or an iterable of batches; an iterable is read in order. Chapter 04.

    A re-iterable (a list, a DataLoader) starts a new pass when it runs out; a one-shot iterator (a
    generator) cannot, and running out is an error. ``skip`` batches are read and dropped first: on
    resume, an iterable is fast-forwarded to where the checkpointed run was.
    """
    if callable(data):
        return data
    if not isinstance(data, Iterable):
        raise TypeError(f"{what} must be a callable get_batch(i) -> dict or an iterable of dicts, "
                        f"got {type(data).__name__}")
    one_shot = iter(data) is data
    iterator = iter(data)

    def get(i: int) -> Batch:
        nonlocal iterator
        try:
            return next(iterator)
        except StopIteration:
            if one_shot:
                raise ValueError(f"{what} ran out of batches after {i}; pass a callable get_batch(i) or a "
                                 "re-iterable such as a list, or train for fewer steps") from None
            iterator = iter(data)  # a new pass over the data (an "epoch")
            try:
                return next(iterator)
            except StopIteration:
                raise ValueError(f"{what} is empty") from None

    for i in range(skip):
        get(i)
    return get


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf loss or gradient; ``.step`` says when. Chapter 04 (pretraining).

    ``.result``: the ``TrainResult`` up to the step before (its history can still be plotted).
    """

    def __init__(self, message: str, step: int, result: TrainResult | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.result = result


@dataclass
class TrainResult:
    """What ``train`` returns. Chapter 04 (pretraining).

    history: one dict per update: ``step`` (1-based), ``loss`` (mean over the micro-batches), ``lr``,
    ``grad_norm`` (before clipping) and ``tokens_per_sec``. evals: one dict per evaluation: ``step``,
    ``loss``, ``perplexity``, ``tokens`` and, with ``chars_per_token``, ``bits_per_char``.
    step: updates done. stopped_early: a callback stopped the run or it was interrupted (Ctrl-C / the
    notebook's stop button). checkpoint: the last checkpoint written, if any. precision: what the forward
    passes ran in ("auto" resolved); with fp16, ``skipped_steps`` counts updates the GradScaler skipped
    because the scaled gradients overflowed.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    step: int = 0
    stopped_early: bool = False
    checkpoint: Path | None = None
    precision: str = "fp32"
    skipped_steps: int = 0

    @property
    def losses(self) -> list[float]:
        """The training loss of every step, in order."""
        return [h["loss"] for h in self.history]


def train(
    model: nn.Module,
    get_batch: BatchSource,
    cfg: TrainConfig,
    evaluate: BatchSource | None = None,
    callbacks: Sequence[Callback] | None = None,
    *,
    generator: torch.Generator | None = None,
    resume_from: str | Path | None = None,
) -> TrainResult:
    """Train ``model`` for ``cfg.max_steps`` AdamW updates. Chapter 04 (pretraining).

    ``get_batch(i) -> dict`` returns micro-batch number i (0-based; i = (step - 1) * grad_accum_steps + k),
    a dict of the model's keyword arguments such as ``{"input_ids", "labels"}``; an iterable of such dicts
    works too. The model must return an object with ``.loss`` (our models and transformers' do).
    ``evaluate``: held-out batches in the same form; every ``cfg.eval_interval`` steps ``estimate_loss``
    averages ``cfg.eval_steps`` of them. ``callbacks``: functions ``callback(record, result)`` called after
    every step with that step's record (which holds ``"eval"`` when it evaluated); returning True stops
    training (a checkpoint is saved first if ``cfg.checkpoint_dir`` is set).
    ``generator``: the ``torch.Generator`` that ``get_batch`` draws from; its state goes into checkpoints.
    ``resume_from``: a checkpoint file or directory; weights, optimizer, step, RNG states, generator and
    history are restored and training continues from the next step (the same losses as an uninterrupted
    run). Give the same ``cfg``: the learning rate is recomputed from the step.

    Gradient accumulation divides each micro-batch's loss by ``grad_accum_steps``, so the gradient is the
    mean over all micro-batches: exactly one big batch's when every micro-batch scores as many tokens.
    A NaN/Inf loss or gradient norm stops the run with ``NonFiniteLossError`` before the weights are
    touched. Ctrl-C stops it too, but returns what was recorded so far. The model is left in eval mode.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator (the one get_batch draws from), got "
                        f"{type(generator).__name__}")
    if evaluate is not None and not callable(evaluate) and (
            not isinstance(evaluate, Iterable) or iter(evaluate) is evaluate):
        raise TypeError("evaluate must be a callable get_batch(i) or a re-iterable of batches (e.g. a list), not "
                        f"{type(evaluate).__name__}: every evaluation reads its batches from the start")
    callbacks = list(callbacks or [])
    if not all(callable(c) for c in callbacks):
        raise TypeError("callbacks must be functions callback(record, result)")

    device = get_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    model.to(device)
    optimizer = configure_optimizer(model, cfg.weight_decay, cfg.lr, cfg.betas)
    # fp16's narrow range needs loss scaling; for fp32 and bf16 the scaler is a no-op pass-through.
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    result = TrainResult(precision=precision)
    ckpt_path = Path(cfg.checkpoint_dir) / CHECKPOINT_NAME if cfg.checkpoint_dir is not None else None
    if resume_from is not None:
        ckpt = load_checkpoint(resume_from, model, optimizer, generator=generator)  # also restores the RNGs
        result.step = ckpt.step
        result.history = list(ckpt.extra.get("history", []))
        result.evals = list(ckpt.extra.get("evals", []))
    elif cfg.seed is not None:
        seed_everything(cfg.seed)
    accum = cfg.grad_accum_steps
    next_batch = batch_source(get_batch, skip=result.step * accum)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    max_norm = cfg.grad_clip if cfg.grad_clip else math.inf  # inf: measure the norm, clip nothing

    def save(step: int) -> None:
        extra = {"history": result.history, "evals": result.evals, "train_config": dataclasses.asdict(cfg)}
        save_checkpoint(ckpt_path, model, optimizer, step, extra, generator=generator)
        result.checkpoint = ckpt_path

    def log(message: str) -> None:
        if cfg.log_interval:
            tqdm.write(message)

    bar = tqdm(total=cfg.max_steps, initial=result.step, disable=not cfg.progress, desc="training")
    plot = LossPlot(every=cfg.log_interval or 10, enabled=None if cfg.live_plot else False)
    model.train()
    try:
        for step in range(result.step + 1, cfg.max_steps + 1):
            t0 = time.perf_counter()
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr

            # Forward/backward over grad_accum_steps micro-batches; gradients add up in p.grad.
            step_loss, tokens = torch.zeros((), device=device), 0
            for k in range(accum):
                i = (step - 1) * accum + k
                batch = to_device(next_batch(i), device, f"get_batch({i})")
                with autocast_context(precision, device):  # fp32: nothing; bf16/fp16: torch.autocast
                    loss = model_loss(model, batch) / accum  # so the summed gradient is the mean's
                scaler.scale(loss).backward()
                step_loss += loss.detach()
                tokens += batch["input_ids"].numel()
            loss_value = step_loss.item()
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(
                    f"the training loss is {loss_value} at step {step} (lr {lr:.3g}); the weights were not "
                    "updated. Lower the learning rate, use grad_clip, or look for bad data in this batch",
                    step, result)
            scaler.unscale_(optimizer)  # fp16: the true gradients again, before measuring and clipping them
            # clip_grad_norm_ returns the total norm measured *before* clipping: the number worth logging
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            skipped = False
            if not math.isfinite(grad_norm):
                if not scaler.is_enabled():
                    raise NonFiniteLossError(
                        f"the gradient norm is {grad_norm} at step {step} (loss {loss_value:.4f}); the weights "
                        "were not updated. Lower the learning rate or look for overflow", step, result)
                skipped = True  # fp16 overflow: the scaler skips this update and halves its scale
                result.skipped_steps += 1
            scaler.step(optimizer)  # optimizer.step(), unless fp16 gradients overflowed
            scaler.update()
            optimizer.zero_grad(set_to_none=True)

            record: dict[str, Any] = {"step": step, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                                      "tokens_per_sec": tokens / max(time.perf_counter() - t0, 1e-9)}
            if skipped:
                record["skipped"] = True
            result.history.append(record)
            result.step = step
            if evaluate is not None and (step % cfg.eval_interval == 0 or step == cfg.max_steps):
                metrics = estimate_loss(model, evaluate, cfg.eval_steps, chars_per_token=cfg.chars_per_token)
                result.evals.append({"step": step, **metrics})
                record = {**record, "eval": metrics}  # the history keeps train figures only
                bpc = f", {metrics['bits_per_char']:.3f} bits/char" if "bits_per_char" in metrics else ""
                log(f"step {step}: held-out loss {metrics['loss']:.4f}, perplexity {metrics['perplexity']:.2f}{bpc}")
            if cfg.log_interval and step % cfg.log_interval == 0:
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", grad_norm=f"{grad_norm:.2f}")
                if not cfg.progress:
                    log(f"step {step}/{cfg.max_steps}: loss {loss_value:.4f}, lr {lr:.2e}, grad norm "
                        f"{grad_norm:.2f}, {record['tokens_per_sec']:,.0f} tokens/s")
            bar.update(1)
            plot(record, result)
            stop = any([bool(callback(record, result)) for callback in callbacks])  # call every one
            if ckpt_path is not None and (stop or step == cfg.max_steps
                                          or (cfg.checkpoint_interval and step % cfg.checkpoint_interval == 0)):
                save(step)
            if stop:
                result.stopped_early = True
                log(f"stopped by a callback at step {step}")
                break
    except KeyboardInterrupt:
        result.stopped_early = True
        log(f"interrupted at step {result.step + 1}; the model holds the weights after step {result.step}")
    finally:
        bar.close()
        plot.update(result)
        model.eval()
    return result
