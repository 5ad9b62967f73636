"""Watching a training run: TensorBoard curves and alarms for NaN/Inf and exploding gradients. Chapter 09.

A run that diverges rarely says so. The loss turns to NaN at step 3,000 and every later step trains on
NaN weights; one bad batch sends the gradient norm to 100x its usual size and the clipped update still
knocks the model off course. This module makes both visible for the course's own loop
(``llm_course.train.loop.train``), with the same names everywhere::

    train/loss  train/lr  train/grad_norm  train/tokens_per_sec     every step
    eval/loss  eval/perplexity  eval/bits_per_char                  every evaluation

* ``TensorBoardLogger(log_dir)``: a ``train`` callback writing those scalars to a local TensorBoard log
  directory (no account, no network). ``tensorboard_command(log_dir)`` says how to open it (a terminal
  command, or the ``%tensorboard`` magic in Jupyter); ``read_scalars`` reads the numbers back and
  ``plot_scalars`` draws them inline with Matplotlib, so a notebook shows the curves without the UI.
* ``DivergenceDetector``: a ``train`` callback that stops a run whose gradient norm jumps above
  ``max_grad_ratio`` times its running median (an "exploding gradient"), naming the step and the value.
  ``train`` itself already refuses a NaN/Inf loss or gradient norm (``NonFiniteLossError``, raised
  before the weights are touched); the detector adds the spike check, and applies the NaN/Inf check to
  numbers from anywhere else (a loop of your own, a Trainer).
* ``wandb_offline_logger``: Weights & Biases as an option, in offline mode only: the manual's
  ``wandb.init`` needs an account and a network (ERRATA section 9); offline runs need neither and can
  be uploaded later with ``wandb sync``. The course never requires it.

The same scalars and checks for Hugging Face's ``Trainer`` (``MonitorCallback``), and the manual's
``monitor_gradients`` measured, are in ``llm_course.train.trainer_monitoring``.

Where the manual goes wrong ("Мониторинг и отладка"; ERRATA section 9): its ``LoggingCallback`` calls
``wandb.log`` with no ``wandb.init`` (an error) and needs an account and a network even with one.

Notebook use::

    from llm_course.train.monitoring import DivergenceDetector, TensorBoardLogger, plot_scalars, tensorboard_command
    from llm_course.train.loop import train

    tb = TensorBoardLogger("runs/ch09/tb/baseline")
    result = train(model, get_batch, cfg, evaluate=get_val_batch,
                   callbacks=[tb, DivergenceDetector(max_grad_ratio=10)])
    plot_scalars(tb.log_dir)                 # the same curves as TensorBoard, inline
    print(tensorboard_command("runs/ch09/tb"))   # %load_ext tensorboard / %tensorboard --logdir runs/ch09/tb
"""

from __future__ import annotations

import math
import os
import shlex
import statistics
import warnings
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_course.core.checks import check_choice, check_float, check_positive_int, check_str
from llm_course.core.deps import require
from llm_course.train.liveplot import in_notebook
from llm_course.train.loop import NonFiniteLossError, TrainResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "TRAIN_TAGS",
    "DivergenceWarning",
    "ExplodingGradientError",
    "Alert",
    "DivergenceDetector",
    "TensorBoardLogger",
    "read_scalars",
    "plot_scalars",
    "tensorboard_command",
    "WandbOfflineLogger",
    "wandb_offline_logger",
]

# A ``train`` record's key -> the TensorBoard tag it is logged under. Evaluation metrics go to "eval/<key>".
TRAIN_TAGS = {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm",
              "tokens_per_sec": "train/tokens_per_sec"}
EVAL_KEYS = ("loss", "perplexity", "bits_per_char")  # estimate_loss's metrics worth a curve ("tokens" is a count)
SPIKE_ACTIONS = ("raise", "stop", "warn")


# --------------------------------------------------------------------------------------------
# Detecting divergence: NaN/Inf values and gradient-norm spikes
# --------------------------------------------------------------------------------------------


class DivergenceWarning(RuntimeWarning):
    """Shown when a ``DivergenceDetector`` stops (or, with ``on_spike="warn"``, flags) a run. Chapter 09."""


class ExplodingGradientError(FloatingPointError):
    """The gradient norm jumped far above its running median. Chapter 09 (best practices).

    ``.step``: the update; ``.grad_norm``: its norm (before clipping); ``.median``: the running median it
    was compared with; ``.result``: the ``TrainResult`` so far when raised from ``train`` (else None).
    """

    def __init__(self, message: str, step: int, grad_norm: float, median: float) -> None:
        super().__init__(message)
        self.step, self.grad_norm, self.median = step, grad_norm, median
        self.result: TrainResult | None = None


@dataclass
class Alert:
    """One thing a ``DivergenceDetector`` found. Chapter 09 (best practices).

    kind: ``"nonfinite_loss"``, ``"nonfinite_grad"`` or ``"grad_spike"``; value: the offending number;
    median: the running median of the gradient norm it was compared with (spikes only).
    """

    step: int
    kind: str
    value: float
    message: str
    median: float | None = None


class DivergenceDetector:
    """Stop training on a NaN/Inf loss or gradient norm, or on an exploding gradient. Chapter 09.

    The spike rule: keep the last ``window`` finite gradient norms; once there are ``min_steps`` of them,
    a norm above ``max_grad_ratio`` x their median is a spike. The median, not the mean, so that one
    earlier spike does not raise the bar for the next; a ratio, not a fixed number, because a healthy
    norm depends on the model, the data and the loss scale. Norms are logged *before* clipping: clipping
    bounds the update, but a 100x gradient still says that something (a bad batch, a too-high learning
    rate) went wrong.

    ``on_spike``: ``"stop"`` ends the run (``train``'s callback returns True: a checkpoint is saved and
    the result returned with ``stopped_early``; a Trainer gets ``control.should_training_stop``) after a
    ``DivergenceWarning`` naming the step and the value; ``"raise"`` raises ``ExplodingGradientError``;
    ``"warn"`` warns and trains on. A NaN/Inf loss or gradient norm always raises ``NonFiniteLossError``:
    there is nothing to train on from there.

    Use it as a ``train`` callback (``callbacks=[DivergenceDetector()]``), inside ``MonitorCallback`` for a
    Trainer, or call ``check(step, loss, grad_norm)`` from a loop of your own. ``alerts`` lists what it found.
    """

    def __init__(self, max_grad_ratio: float = 10.0, window: int = 100, min_steps: int = 10,
                 on_spike: str = "stop") -> None:
        check_float("max_grad_ratio", max_grad_ratio, low=1.0, low_open=True,
                    hint="a spike is a gradient norm this many times the running median, e.g. 10")
        check_positive_int("window", window)
        check_positive_int("min_steps", min_steps)
        if min_steps > window:
            raise ValueError(f"min_steps ({min_steps}) cannot exceed window ({window}): the median is taken over the "
                             "last `window` norms, so there would never be enough of them")
        check_choice("on_spike", on_spike, SPIKE_ACTIONS)
        self.max_grad_ratio = float(max_grad_ratio)
        self.min_steps = min_steps
        self.on_spike = on_spike
        self.norms: deque[float] = deque(maxlen=window)  # the last `window` finite gradient norms
        self.alerts: list[Alert] = []

    def check(self, step: int, loss: float | None = None, grad_norm: float | None = None) -> Alert | None:
        """Look at one step's loss and gradient norm (either may be None); return an ``Alert`` or None.

        Acts on nothing (no raising, no warning): ``__call__`` and ``MonitorCallback`` decide what to do.
        """
        alert = None
        if loss is not None and not math.isfinite(loss):
            alert = Alert(step, "nonfinite_loss", float(loss),
                          f"the training loss is {loss} at step {step}. Lower the learning rate, use gradient "
                          "clipping, or look for bad data in this batch")
        elif grad_norm is not None and not math.isfinite(grad_norm):
            alert = Alert(step, "nonfinite_grad", float(grad_norm),
                          f"the gradient norm is {grad_norm} at step {step}"
                          + (f" (loss {loss:.4f})" if loss is not None else "")
                          + ". Lower the learning rate or look for overflow (fp16) in this batch")
        elif grad_norm is not None:
            if len(self.norms) >= self.min_steps:
                median = statistics.median(self.norms)
                if grad_norm > self.max_grad_ratio * median:
                    alert = Alert(step, "grad_spike", float(grad_norm),
                                  f"exploding gradient at step {step}: norm {grad_norm:.4g} is "
                                  f"{grad_norm / median if median > 0 else math.inf:.1f}x the median {median:.4g} "
                                  f"of the last {len(self.norms)} "
                                  f"steps (limit {self.max_grad_ratio:g}x). Lower the learning rate, keep gradient "
                                  "clipping on, or look at this step's batch", median=median)
            self.norms.append(float(grad_norm))
        if alert is not None:
            self.alerts.append(alert)
        return alert

    def act(self, alert: Alert | None) -> bool:
        """Do what the alert calls for: raise, or warn and return True (stop) / False (go on)."""
        if alert is None:
            return False
        if alert.kind != "grad_spike":
            raise NonFiniteLossError(alert.message, alert.step)
        if self.on_spike == "raise":
            raise ExplodingGradientError(alert.message, alert.step, alert.value, alert.median)
        stop = self.on_spike == "stop"
        warnings.warn(("training stopped: " if stop else "") + alert.message, DivergenceWarning, stacklevel=3)
        return stop

    def __call__(self, record: Mapping[str, Any], result: TrainResult | None = None) -> bool:
        """``train`` callback: check this step's record; True stops the run."""
        try:
            return self.act(self.check(record["step"], record.get("loss"), record.get("grad_norm")))
        except ExplodingGradientError as err:
            err.result = result  # the history up to the spike, for plotting after the exception
            raise


# --------------------------------------------------------------------------------------------
# TensorBoard: writing, reading back, plotting, opening
# --------------------------------------------------------------------------------------------


def _log_dir(log_dir: str | Path, must_exist: bool) -> Path:
    if not isinstance(log_dir, (str, os.PathLike)):
        raise TypeError(f"log_dir must be a path (str or Path), got {type(log_dir).__name__}")
    path = Path(log_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"log_dir {str(path)!r} is a file; TensorBoard writes a directory of event files: pass a "
                         "directory (e.g. 'runs/ch09/tb/run1')")
    if must_exist and not path.exists():
        raise FileNotFoundError(f"log_dir {str(path)!r} does not exist; pass the directory a TensorBoardLogger wrote")
    return path


class TensorBoardLogger:
    """A ``train`` callback that writes each step's scalars to a TensorBoard log directory. Chapter 09.

    ``train/loss``, ``train/lr``, ``train/grad_norm`` (before clipping) and ``train/tokens_per_sec`` every
    step; ``eval/loss``, ``eval/perplexity`` and (with ``chars_per_token``) ``eval/bits_per_char`` at each
    evaluation. Values are stored as float64 (``double_precision=True``), so ``read_scalars`` gives back
    exactly the numbers in ``TrainResult.history``; TensorBoard shows them as usual. Events are flushed to
    disk every step, so TensorBoard (and ``read_scalars``) sees the run while it trains.

    One run per directory: put runs side by side (``runs/ch09/tb/lr1e-3``, ``runs/ch09/tb/lr1e-2``) and
    point TensorBoard at the parent to compare them. The event file is opened at the first step logged and
    marked as a (re)start there (``SummaryWriter(purge_step=step)``): a run resumed from its checkpoint at
    step N into the same directory starts at N + 1, and TensorBoard (and ``read_scalars``) drops what the
    first run wrote after its checkpoint instead of drawing a zigzag. ``close()`` (or ``with``) when done.
    """

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = _log_dir(log_dir, must_exist=False)
        require("tensorboard")  # a clear "pip install tensorboard" rather than torch's ImportError
        self.writer: Any = None  # torch.utils.tensorboard.SummaryWriter, opened at the first step

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        """Write one scalar (float64) at ``step``."""
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=step)
        self.writer.add_scalar(tag, float(value), step, new_style=True, double_precision=True)

    def log(self, record: Mapping[str, Any]) -> None:
        """Write one ``train`` record (``step``, ``loss``, ``lr``, ``grad_norm``, ``tokens_per_sec``, ``eval``)."""
        step = int(record["step"])
        for key, tag in TRAIN_TAGS.items():
            if record.get(key) is not None:
                self.add_scalar(tag, record[key], step)
        for key in EVAL_KEYS:
            if key in record.get("eval", {}):
                self.add_scalar(f"eval/{key}", record["eval"][key], step)
        self.flush()

    def __call__(self, record: Mapping[str, Any], result: TrainResult | None = None) -> None:
        """``train`` callback: log this step (never stops the run)."""
        self.log(record)

    def flush(self) -> None:
        """Write what is buffered to disk."""
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file (a later ``log`` opens a new one)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in a TensorBoard log directory: ``{tag: [(step, value), ...]}``. Chapter 09.

    Reads with the ``EventAccumulator`` that TensorBoard's own UI uses (``plugin_event_accumulator``), with
    nothing sampled away (by default it keeps 500 points per tag), so it sees what the UI shows: float64
    scalars (what ``TensorBoardLogger`` writes; exact) and classic float32 ``simple_value`` ones (what most
    other writers, transformers' own ``TensorBoardCallback`` included, write), minus the steps a resumed
    run wrote over. ``log_dir`` is one run's directory (its event files, not those of subdirectories); a
    parent of runs is refused with the runs it holds.
    """
    path = _log_dir(log_dir, must_exist=True)
    require("tensorboard")
    from tensorboard.backend.event_processing import plugin_event_accumulator as pea
    from tensorboard.util import tensor_util

    if not any(p.name.startswith("events.out.tfevents") for p in path.iterdir()):
        runs = sorted(str(Path(root).relative_to(path)) for root, _, files in os.walk(path)
                      if any(f.startswith("events.out.tfevents") for f in files))
        hint = f"; it holds runs {runs[:10]}: pass one of them, e.g. {str(path / runs[0])!r}" if runs else ""
        raise FileNotFoundError(f"no TensorBoard event files in {str(path)!r}{hint}")
    acc = pea.EventAccumulator(str(path), size_guidance={pea.TENSORS: 0})  # 0: keep every event
    acc.Reload()
    scalars: dict[str, list[tuple[int, float]]] = {}
    for tag in acc.Tags()["tensors"]:  # legacy float32 scalars arrive here too, converted
        if acc.SummaryMetadata(tag).plugin_data.plugin_name == "scalars":  # not histograms, text, ...
            scalars[tag] = [(e.step, float(tensor_util.make_ndarray(e.tensor_proto).item()))
                            for e in acc.Tensors(tag)]
    return scalars


def plot_scalars(source: str | Path | Mapping[str, list[tuple[int, float]]], tags: list[str] | None = None,
                 ncols: int = 2) -> Figure:
    """The scalars of a log directory (or of ``read_scalars``'s dict), one panel per quantity. Chapter 09.

    Tags that differ only before the slash share a panel (``train/loss`` and ``eval/loss``: one "loss"
    panel), so held-out loss sits on the training curve. The gradient norm is drawn on a log scale, where
    a spike stands out. ``tags``: only these (default: all). Returns a Matplotlib ``Figure`` (made without
    pyplot); a notebook shows it inline when it is the cell's last value.
    """
    from matplotlib.figure import Figure

    scalars = read_scalars(source) if isinstance(source, (str, os.PathLike)) else source
    if not isinstance(scalars, Mapping):
        raise TypeError(f"source must be a log directory or read_scalars()'s dict, got {type(source).__name__}")
    if tags is not None:
        unknown = [t for t in tags if t not in scalars]
        if unknown:
            raise ValueError(f"no scalars tagged {unknown}; available: {sorted(scalars)}")
        scalars = {t: scalars[t] for t in tags}
    if not scalars:
        raise ValueError("there are no scalars to plot")
    check_positive_int("ncols", ncols)
    panels: dict[str, list[str]] = {}  # "loss" -> ["train/loss", "eval/loss"]
    for tag in scalars:
        panels.setdefault(tag.rsplit("/", 1)[-1], []).append(tag)
    ncols = min(ncols, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(5 * ncols, 2.8 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (name, panel_tags) in zip(axes, panels.items()):
        for tag in panel_tags:
            steps, values = zip(*scalars[tag]) if scalars[tag] else ((), ())
            few = len(steps) <= 20  # a handful of evaluations: show the points
            ax.plot(steps, values, "o-" if few else "-", lw=1, ms=3, label=tag)
        if name == "grad_norm":
            ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(panel_tags) > 1:
            ax.legend()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    return fig


def tensorboard_command(log_dir: str | Path, notebook: bool | None = None) -> str:
    """How to open TensorBoard on ``log_dir``: a shell command, or the Jupyter magics. Chapter 09.

    In a terminal: ``tensorboard --logdir runs/ch09/tb`` and then http://localhost:6006. In Jupyter (or
    Colab): ``%load_ext tensorboard`` then ``%tensorboard --logdir runs/ch09/tb``, which shows the UI in
    the notebook. ``notebook``: None = whichever fits where this runs. Returns the text; starts nothing.
    Point it at the parent of several runs to compare them.
    """
    path = _log_dir(log_dir, must_exist=False)
    notebook = in_notebook() if notebook is None else notebook
    arg = shlex.quote(str(path))
    if notebook:
        return f"%load_ext tensorboard\n%tensorboard --logdir {arg}"
    return f"tensorboard --logdir {arg}   # then open http://localhost:6006"


# --------------------------------------------------------------------------------------------
# Weights & Biases, offline only
# --------------------------------------------------------------------------------------------


class WandbOfflineLogger:
    """A ``train`` callback logging the same scalars to an offline wandb run. Chapter 09 (best practices).

    Made by ``wandb_offline_logger``; ``run`` is the ``wandb`` run. ``finish()`` when done.
    """

    def __init__(self, run: Any) -> None:
        self.run = run

    def __call__(self, record: Mapping[str, Any], result: TrainResult | None = None) -> None:
        values = {tag: float(record[key]) for key, tag in TRAIN_TAGS.items() if record.get(key) is not None}
        values.update({f"eval/{k}": float(v) for k, v in record.get("eval", {}).items() if k in EVAL_KEYS})
        self.run.log(values, step=int(record["step"]))

    def finish(self) -> None:
        """Close the run; its files stay in the run directory for ``wandb sync``."""
        self.run.finish()


def wandb_offline_logger(project: str = "llm-course", run_dir: str | Path = "runs/wandb",
                         config: Mapping[str, Any] | None = None, **init_kwargs: Any) -> WandbOfflineLogger:
    """An offline Weights & Biases run as a ``train`` callback: no account, no network. Chapter 09.

    Optional: wandb is not a course dependency (``MissingDependencyError``, "pip install wandb", if it is
    not installed). Sets ``WANDB_MODE=offline`` (so transformers' own WandbCallback stays offline too) and
    calls ``wandb.init(mode="offline", ...)``, which never asks for a login; the run is written under
    ``run_dir`` and can be uploaded later, if you want, with ``wandb sync <run_dir>/wandb/offline-run-...``.
    The manual's ``wandb.init(project=...)`` instead needs an account and a network (ERRATA section 9).
    ``init_kwargs`` go to ``wandb.init`` (``name=``, ``tags=``...; not ``mode``).
    """
    if "mode" in init_kwargs:
        raise TypeError("wandb_offline_logger always runs offline; do not pass mode=")
    check_str("project", project, non_empty=True)
    path = _log_dir(run_dir, must_exist=False)
    wandb = require("wandb")
    os.environ["WANDB_MODE"] = "offline"
    path.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=project, dir=str(path), mode="offline", config=dict(config or {}), **init_kwargs)
    return WandbOfflineLogger(run)
