"""Watching a Hugging Face ``Trainer`` run, and the manual's ``monitor_gradients`` measured. Chapter 09.

``MonitorCallback`` is a ``transformers.TrainerCallback`` that gives ``Trainer`` runs what
``llm_course.train.monitoring`` gives the course's own loop: the same TensorBoard scalars
(``TensorBoardLogger``) and the same divergence checks (``DivergenceDetector``). It matters there: with
its default ``logging_nan_inf_filter=True`` the Trainer *replaces* a NaN loss in its log by the average of
the previous ones, so the printed losses look healthy while the weights turn to NaN. The callback checks
the gradients themselves before every optimizer step. It is built on first use (importing transformers
takes seconds that the course's loop does not need).

Where the manual goes wrong ("Мониторинг и отладка"; ERRATA section 9): its ``monitor_gradients(model)``
(``manual_monitor_gradients``, kept verbatim) computes the right number at the wrong time: called from a
Trainer callback it sees gradients already cleared (0.0 after the step) or already clipped (a 10^4 spike
reads as ``max_grad_norm``), and its ``.item()`` per parameter waits on the GPU once per tensor.
``gradient_norm_timing`` shows all three. The norm worth watching is the one measured before clipping,
which ``train`` records and the Trainer logs as ``grad_norm``.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from llm_course.core.checks import check_positive
from llm_course.nn.evaluation import model_loss
from llm_course.train.monitoring import Alert, DivergenceDetector, TensorBoardLogger

__all__ = ["MonitorCallback", "manual_monitor_gradients", "gradient_norm_timing"]  # noqa: F822 (module __getattr__)


# --------------------------------------------------------------------------------------------
# Hugging Face Trainer: the same scalars and the same checks
# --------------------------------------------------------------------------------------------


def _first_nonfinite_grad(model: nn.Module) -> tuple[str, float] | None:
    """The name and norm of the first parameter whose gradient holds a NaN or an Inf, or None."""
    for name, p in model.named_parameters():
        if p.grad is not None and not torch.isfinite(p.grad).all():
            return name, float(torch.linalg.vector_norm(p.grad.float()))
    return None


def _total_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all ``tensors`` together, one tensor (no ``.item()``: no device sync). Works on every
    torch the course allows (``torch.nn.utils.get_total_norm`` only exists from torch 2.6)."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.detach().float()) for t in tensors]))


# --------------------------------------------------------------------------------------------
# The manual's monitor_gradients, and when it measures (ERRATA section 9)
# --------------------------------------------------------------------------------------------


def manual_monitor_gradients(model: nn.Module) -> float:
    """The manual's ``monitor_gradients`` ("Мониторинг и отладка"), as written. Chapter 09 (ERRATA section 9).

    The number it computes is right (the 2-norm of all gradients), but only at the right moment, which the
    manual never says: after ``clip_grad_norm_`` it reads the clipped norm (a spike is invisible), after
    ``zero_grad`` it reads 0.0; and its ``.item()`` per parameter waits for the GPU once per tensor.
    ``gradient_norm_timing`` shows all three. Kept verbatim to be measured, not used.
    """
    total_norm = 0
    for name, param in model.named_parameters():  # noqa: B007 - the manual's code, verbatim
        if param.grad is not None:
            param_norm = param.grad.data.norm(2)
            total_norm += param_norm.item() ** 2
    total_norm = total_norm ** (1. / 2)
    return total_norm


def gradient_norm_timing(model: nn.Module, batch: Mapping[str, torch.Tensor], max_grad_norm: float = 1.0,
                         spike: float = 1.0) -> dict[str, Any]:
    """One training step, and what the manual's ``monitor_gradients`` reads at each moment of it. Chapter 09.

    Forward + backward on ``batch`` (a dict with ``input_ids`` and ``labels``); the gradients are then
    multiplied by ``spike`` (e.g. 1e4: an exploding gradient, as one bad batch gives). Returns
    ``{"course": the norm clip_grad_norm_ returns (measured before clipping, what train() logs as
    grad_norm), "manual, before clipping", "manual, after clipping", "manual, after zero_grad",
    "item_calls": the .item() calls (device syncs) the manual's function makes per reading, one per
    parameter with a gradient, against 1 for the course}``. The model's gradients are cleared afterwards;
    its weights are not changed (no optimizer step).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(batch, Mapping) or "input_ids" not in batch or "labels" not in batch:
        raise ValueError("batch must be a dict with 'input_ids' and 'labels' (labels=input_ids for a language "
                         f"model), so that the model returns a loss; got {type(batch).__name__}"
                         + (f" with keys {sorted(batch)}" if isinstance(batch, Mapping) else ""))
    check_positive("max_grad_norm", max_grad_norm)
    check_positive("spike", spike)

    model.zero_grad(set_to_none=True)
    model_loss(model, dict(batch)).backward()
    params = [p for p in model.parameters() if p.grad is not None]
    with torch.no_grad():
        for p in params:
            p.grad.mul_(spike)
    before = manual_monitor_gradients(model)
    course = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))  # the norm *before* clipping
    after_clip = manual_monitor_gradients(model)
    model.zero_grad(set_to_none=True)  # what optimizer.zero_grad() / the Trainer does after every step
    return {"course": course, "manual, before clipping": before, "manual, after clipping": after_clip,
            "manual, after zero_grad": manual_monitor_gradients(model), "item_calls": len(params)}


def __getattr__(name: str) -> Any:
    """``MonitorCallback`` is built on first use (PEP 562): it subclasses transformers' ``TrainerCallback``,
    and importing transformers takes seconds that the course's own loop does not need."""
    if name == "MonitorCallback":
        return _monitor_callback_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _monitor_callback_class() -> type:
    from transformers import TrainerCallback

    class MonitorCallback(TrainerCallback):
        """A ``transformers.TrainerCallback``: TensorBoard scalars and divergence checks for Trainer. Chapter 09.

        ``log_dir``: where to write ``train/loss``, ``train/lr``, ``train/grad_norm``, ``train/tokens_per_sec``
        and ``eval/loss``, ``eval/perplexity`` (the same tags as ``TensorBoardLogger``; None: no logging).
        ``detector``: the ``DivergenceDetector`` to use (None: ``DivergenceDetector()``).

        The checks, at two moments of each update:

        * before the optimizer step (``on_pre_optimizer_step``): every gradient must be finite, else
          ``NonFiniteLossError`` names the step and the first parameter whose gradient is NaN/Inf, and the
          weights are left as they were. A NaN loss gives NaN gradients, so this catches it too, even though
          the Trainer's log (``logging_nan_inf_filter=True``) would show an ordinary-looking loss;
        * at each log (``on_log``): the logged loss and the gradient norm (before clipping) go through the
          detector, spikes included; a spike with ``on_spike="stop"`` sets ``control.should_training_stop``.
          The Trainer logs every ``logging_steps`` updates: pass ``logging_steps=1`` to check (and plot)
          every step.

        ``train/tokens_per_sec`` needs ``TrainingArguments(include_num_input_tokens_seen=True)`` (the Trainer
        counts tokens only then); without it that tag is not written. Usage::

            args = TrainingArguments(..., logging_steps=1, report_to="none", include_num_input_tokens_seen=True)
            trainer = Trainer(model=model, args=args, train_dataset=train,
                              callbacks=[MonitorCallback("runs/ch09/tb/trainer")])
        """

        def __init__(self, log_dir: str | Path | None = None, detector: DivergenceDetector | None = None) -> None:
            if detector is not None and not isinstance(detector, DivergenceDetector):
                raise TypeError(f"detector must be a DivergenceDetector or None, got {type(detector).__name__}")
            self.detector = detector if detector is not None else DivergenceDetector()
            self.logger = TensorBoardLogger(log_dir) if log_dir is not None else None
            self._last_tokens = 0  # tokens seen and the time at the previous log: tokens/sec in between
            self._last_time = time.perf_counter()

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._last_tokens, self._last_time = state.num_input_tokens_seen, time.perf_counter()

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: nn.Module | None = None,
                                  **kwargs: Any) -> None:
            grads = [p.grad for p in model.parameters() if p.grad is not None] if model is not None else []
            if not grads or torch.isfinite(_total_norm(grads)):
                return
            step = state.global_step + 1  # global_step counts finished updates; this is the next one
            bad = _first_nonfinite_grad(model)
            where = f" (first in {bad[0]}, whose gradient norm is {bad[1]})" if bad else ""
            broken = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
            weights = f"; the weights {broken[:3]} already hold NaN/Inf values" if broken else ""
            alert = Alert(step, "nonfinite_grad", math.nan,
                          f"non-finite gradient at step {step}{where}{weights}; this update was not applied. A "
                          "NaN/Inf loss (NaN weights, fp16 overflow, bad data in this batch) makes every gradient "
                          "NaN: lower the learning rate or look at this step's batch")
            self.detector.alerts.append(alert)
            self.detector.act(alert)  # raises NonFiniteLossError

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
                   **kwargs: Any) -> None:
            logs = logs or {}
            record: dict[str, Any] = {"step": state.global_step}
            if "loss" in logs:  # a training log (not the eval one, not the end-of-training summary)
                record.update(loss=logs["loss"], lr=logs.get("learning_rate"), grad_norm=logs.get("grad_norm"))
                now, tokens = time.perf_counter(), state.num_input_tokens_seen
                if tokens > self._last_tokens:
                    record["tokens_per_sec"] = (tokens - self._last_tokens) / max(now - self._last_time, 1e-9)
                self._last_tokens, self._last_time = tokens, now
            if "eval_loss" in logs:
                record["eval"] = {"loss": logs["eval_loss"], "perplexity": math.exp(min(logs["eval_loss"], 700))}
            if self.logger is not None and len(record) > 1:
                self.logger.log(record)
            if "loss" in record:
                alert = self.detector.check(record["step"], record["loss"], record["grad_norm"])
                if self.detector.act(alert):
                    control.should_training_stop = True

        def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._last_time = time.perf_counter()  # evaluating is not training: restart the throughput clock

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._last_time = time.perf_counter()  # nor is saving a checkpoint

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.logger is not None:
                self.logger.flush()

    MonitorCallback.__module__, MonitorCallback.__qualname__ = __name__, "MonitorCallback"
    return MonitorCallback
