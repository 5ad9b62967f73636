"""Hyperparameter search with Ray Tune: ASHA that really stops weak trials early. Chapter 09 (best practices).

A search runs many *trials* (one fine-tuning run each, with its own learning rate, batch size and weight
decay) and keeps the best. Most trials are bad, and most bad ones are bad from the start, so the
**ASHA** scheduler (Asynchronous Successive Halving) stops them early: at each *rung* (after
``grace_period`` steps, then ``reduction_factor`` times as many, ...) a trial goes on only if its
held-out loss is in the best ``1 / reduction_factor`` of the losses other trials had at that rung.
ASHA can only do that if the trial *tells* it how it is doing while it runs: the trainable reports the
held-out loss after every evaluation (``tune.report``), and each report is a point where ASHA may stop it.

The pieces:

1. ``search_space(lr=..., batch_size=..., weight_decay=...)``: what to search, checked before any
   process starts (a list is a set of choices, a ``(low, high)`` tuple a range).
2. ``make_job(model, tokenizer)``: the fine-tuning job (course-gpt on instruction examples from
   chapter 05), as one plain object: model config, weights and encoded examples.
3. ``finetune_trial(config, data, ...)``: the trainable, one trial. ``data`` is *passed* to it with
   ``tune.with_parameters`` (Ray puts it in its object store once; every trial, on any machine of a
   cluster, fetches it from there), never read from a notebook global.
4. ``run_search(job, space, ...)``: ``ray.init`` with the CPUs this machine has (or ``address=`` of a
   Ray cluster: the same code then runs trials on all its machines), ``tune.Tuner`` with a
   ``TuneConfig(scheduler=ASHAScheduler(...))`` and a ``RunConfig`` that stores results in a folder you
   choose (a temporary one by default), never ``~/ray_results``. Returns a ``SearchResult``:
   ``.summary()`` (trials stopped early, training steps run against all trials to the end, the best
   config), ``results_table(result)`` and ``plot_trials(result)``.

Where the manual goes wrong (ERRATA section 9): it calls the legacy ``tune.run``; its trainable trains
to the end and returns one final loss, so ASHA sees each trial once, when all its work is already done,
and can never stop one early; and ``train_dataset`` is a global of the notebook. ``manual_trial`` is
that trainable (reporting once, at the end): under the very same ASHA scheduler
(``run_search(..., single_report=True)``) it has 0 trials stopped early.

Notebook use::

    from llm_course import hpsearch
    from llm_course.zoo.loading import load_pretrained

    model, tok = load_pretrained("course-gpt")
    job = hpsearch.make_job(model, tok)                    # 400 training, 64 held-out instructions
    space = hpsearch.search_space(lr=(1e-4, 3e-2), batch_size=[4, 8, 16], weight_decay=(0.0, 0.3))
    result = hpsearch.run_search(job, space, num_samples=12, max_steps=60, report_every=10)
    result.summary()          # {"stopped_early": 9, "steps_run": 330, "steps_saved_ratio": 2.18, ...}
    hpsearch.results_table(result); hpsearch.plot_trials(result)
    manual = hpsearch.run_search(job, space, num_samples=12, max_steps=60, single_report=True)
    manual.summary()["stopped_early"]                      # 0: one report, at the end

Measured (Ray 2.60, course-gpt, the default search above: 12 trials of up to 60 steps, a report every 10,
``reduction_factor=3``, 2 CPUs, seed 0): ASHA stopped 9 of the 12 trials early (6 at step 10, 3 at step
30) and ran 330 of the 720 training steps (2.2 times fewer), and still found the config that wins when all
12 run to the end (lr 5.5e-4, batch 16, weight decay 0.13: held-out loss 2.41). ASHA is asynchronous: a
trial is compared with whatever reached its rung before it, so the count varies from run to run with the
timing (a second run: 7 of 12 stopped, 410 steps, the same best config). The manual-style search
(``single_report=True``, same seed, same configs): 0 stopped, all 720 steps. Memory (proportional set size,
summed over the notebook and all of Ray's processes): 2.3 GB at the peak: the notebook 0.5 (with
transformers and course-gpt loaded), each of the two trial workers about 0.78 (torch, ray.tune and a
training run), Ray's own daemons 0.25. Chapter 09's search (8 trials of 30 steps, ``cpus_per_trial=2`` on 2
CPUs: one trial at a time) peaked at 1.67 GB with glibc's default malloc arenas and 1.52 GB with the two per
Ray process that ``start_ray`` sets (``_lean_ray_processes``); Binder's 2 GB also holds JupyterLab's server.
In notebook 09 (2026-12-05), after ``release_memory`` trimmed the notebook's heap and with the fixed malloc
thresholds ``start_ray`` now also sets, the notebook and Ray's processes peaked at 1.52-1.58 GB (before
both: 1.85-1.92 GB, which with the server's 0.13 GB reached Binder's limit in CI).

Ray is an optional dependency (``pip install "ray[tune]"``): this module imports without it and says
so, with the command, when a search is started.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llm_course.core.checks import check_float, check_int, check_positive_int
from llm_course.core.deps import require
from llm_course.core.paths import cache_dir
from llm_course.models.gpt import GPT, GPTConfig
from llm_course.train import instruct, instructions
from llm_course.train.loop import NonFiniteLossError

__all__ = [
    "RAY_PACKAGE",
    "SearchSpace",
    "search_space",
    "FineTuneJob",
    "make_job",
    "finetune_trial",
    "manual_trial",
    "SearchResult",
    "run_search",
    "results_table",
    "plot_trials",
    "available_cpus",
    "start_ray",
    "RayStartError",
    "MANUAL_RESOURCES",
    "check_trial_resources",
]

RAY_PACKAGE = "ray[tune]"  # what pip installs for this chapter
METRIC = "eval_loss"  # the reported metric ASHA compares (held-out response loss, nats / token)


# --------------------------------------------------------------------------------------------
# 1. The search space, checked without Ray
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchSpace:
    """What to search: for each hyperparameter a kind and its values. Chapter 09 (best practices).

    ``params`` maps a name to ``(kind, values)``: ``("choice", (4, 8, 16))`` draws one of the values,
    ``("loguniform", (low, high))`` a number spread evenly on a log scale (learning rates: 1e-4 is as
    far from 1e-3 as 1e-3 from 1e-2), ``("uniform", (low, high))`` evenly. Build it with ``search_space``.
    """

    params: dict[str, tuple[str, tuple[Any, ...]]]

    def to_tune(self) -> dict[str, Any]:
        """The ``param_space`` for ``tune.Tuner``: ``tune.choice`` / ``tune.loguniform`` / ``tune.uniform``."""
        tune = _tune()
        make = {"choice": lambda v: tune.choice(list(v)), "loguniform": lambda v: tune.loguniform(*v),
                "uniform": lambda v: tune.uniform(*v)}
        return {name: make[kind](values) for name, (kind, values) in self.params.items()}

    def __repr__(self) -> str:
        parts = [f"{name}={kind}{values}" for name, (kind, values) in self.params.items()]
        return f"SearchSpace({', '.join(parts)})"


def _range_or_choices(name: str, spec: Any, range_kind: str, minimum: float, allow_equal_min: bool,
                      integer: bool) -> tuple[str, tuple[Any, ...]]:
    """One hyperparameter's spec: a list (choices) or a (low, high) tuple (a range), checked."""
    def check_value(v: Any) -> Any:
        if integer:
            return check_int(f"each {name} value", v, minimum=int(minimum) + (0 if allow_equal_min else 1))
        return check_float(f"each {name} value", v, low=minimum, low_open=not allow_equal_min)

    if isinstance(spec, list):
        if not spec:
            raise ValueError(f"the search space for {name!r} has no values (an empty list); give at least one "
                             f"choice, e.g. {name}=[...], or leave the argument out for the default")
        return "choice", tuple(check_value(v) for v in spec)
    if isinstance(spec, tuple):
        if integer:
            raise TypeError(f"{name}: a tuple means a (low, high) range, which {name} does not take; list the "
                            f"choices instead, e.g. {name}={list(spec) or [4, 8, 16]}")
        if len(spec) == 0:
            raise ValueError(f"the search space for {name!r} has no values (an empty tuple); give a range "
                             f"{name}=(low, high) or a list of choices")
        if len(spec) != 2:
            raise ValueError(f"{name}: a tuple is a (low, high) range, got {len(spec)} numbers {spec!r}; "
                             f"for a set of choices use a list: {name}={list(spec)}")
        low, high = (check_value(v) for v in spec)
        if not low < high:
            raise ValueError(f"{name}: the range ({low}, {high}) is empty or inverted; it needs low < high "
                             f"(for a single value use a one-element list: {name}=[{low}])")
        return range_kind, (low, high)
    raise TypeError(f"{name}: give a list of choices or a (low, high) tuple, got {type(spec).__name__} {spec!r}")


def search_space(
    lr: Sequence[float] = (1e-4, 3e-2),
    batch_size: Sequence[int] | None = None,
    weight_decay: Sequence[float] = (0.0, 0.3),
) -> SearchSpace:
    """The learning rate / batch size / weight decay to search, checked. Chapter 09 (best practices).

    A **list** is a set of choices (``batch_size=[4, 8, 16]``, ``lr=[1e-3, 3e-3]``); a **tuple**
    ``(low, high)`` is a range: log-uniform for ``lr``, uniform for ``weight_decay``. ``batch_size``
    takes a list only (default ``[4, 8, 16]``). A space with no values (an empty
    list), an inverted range (low >= high), lr <= 0, weight decay < 0 or a batch size < 1 is a ValueError
    here, before Ray starts a single process.
    """
    batch_size = [4, 8, 16] if batch_size is None else batch_size
    return SearchSpace({
        "lr": _range_or_choices("lr", lr, "loguniform", 0.0, False, integer=False),
        "batch_size": _range_or_choices("batch_size", batch_size, "", 1, True, integer=True),
        "weight_decay": _range_or_choices("weight_decay", weight_decay, "uniform", 0.0, True, integer=False),
    })


# --------------------------------------------------------------------------------------------
# 2. The job: everything a trial needs, in one object handed to it
# --------------------------------------------------------------------------------------------


@dataclass
class FineTuneJob:
    """A small fine-tuning job, as data a trial receives. Chapter 09 (best practices).

    ``config`` and ``state_dict``: the starting model (a course ``GPT``), rebuilt in every trial so each
    starts from the same weights. ``train_encoded`` / ``eval_encoded``: ``instruct.encode_instruction``
    dicts (prompt labels -100, response + end-of-text learned). ``pad_token_id``: the end-of-text id.
    Handed to trials with ``tune.with_parameters``: Ray stores it once in its object store.
    """

    config: GPTConfig
    state_dict: dict[str, torch.Tensor]
    train_encoded: list[dict[str, list[int]]]
    eval_encoded: list[dict[str, list[int]]]
    pad_token_id: int

    def build_model(self) -> GPT:
        """A fresh ``GPT`` with the job's starting weights."""
        model = GPT(self.config)
        model.load_state_dict(self.state_dict)
        return model

    def __repr__(self) -> str:
        params = sum(t.numel() for name, t in self.state_dict.items() if name != "lm_head.weight")
        return (f"FineTuneJob(GPT {params:,} parameters, {len(self.train_encoded)} training / "
                f"{len(self.eval_encoded)} held-out examples)")


def make_job(
    model: GPT,
    tokenizer: Any,
    n_train: int = 400,
    n_eval: int = 64,
    tasks: Sequence[str] = instructions.QUICK_TASKS,
    seed: int = 0,
    max_length: int | None = None,
) -> FineTuneJob:
    """The chapter's search job: instruction-tune ``model`` on ``n_train`` examples. Chapter 09 (best practices).

    ``model``: a course ``GPT`` (``load_pretrained("course-gpt")`` gives one); its weights are copied, so
    the search never changes it. Training examples come from ``instructions.make_instructions(n_train,
    split="train")``, held-out ones from the ``"test"`` split (phrasings and inputs training never shows),
    both on ``tasks``; ``max_length``: the model's context by default.
    """
    if not isinstance(model, GPT):
        raise TypeError("model must be a course llm_course.models.gpt.GPT (load_pretrained('course-gpt') returns "
                        f"one), got {type(model).__name__}")
    check_positive_int("n_train", n_train, hint="a number of examples")
    check_positive_int("n_eval", n_eval, hint="a number of examples")
    max_length = max_length or model.config.n_positions
    train = instructions.make_instructions(n_train, seed=seed, split="train", tasks=tasks)
    held_out = instructions.make_instructions(n_eval, seed=seed, split="test", tasks=tasks)
    encode = lambda examples: [instruct.encode_instruction(tokenizer, ex, max_length) for ex in examples]  # noqa: E731
    state = {name: t.detach().to("cpu", copy=True) for name, t in model.state_dict().items()}
    return FineTuneJob(model.config, state, encode(train), encode(held_out), instruct.eos_token_id(tokenizer))


# --------------------------------------------------------------------------------------------
# 3. The trainables: one trial each
# --------------------------------------------------------------------------------------------


def _tune() -> Any:
    """``ray.tune``, or a MissingDependencyError that says ``pip install "ray[tune]"``."""
    return require("ray.tune", RAY_PACKAGE)


def _train_trial(config: Mapping[str, Any], data: FineTuneJob, max_steps: int, eval_interval: int, seed: int,
                 on_eval: Callable[[dict[str, float]], None]) -> None:
    """Fine-tune a fresh copy of the job's model with ``config``; ``on_eval`` gets every evaluation."""
    if not isinstance(data, FineTuneJob):
        raise TypeError(f"data must be a FineTuneJob (hpsearch.make_job(...)), got {type(data).__name__}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a trial holds one CPU of Ray's; more threads would fight the other trials
    model = data.build_model()

    def callback(record: dict, result: Any) -> None:
        if "eval" in record:
            on_eval({METRIC: record["eval"]["loss"], "step": record["step"], "train_loss": record["loss"]})

    try:
        instruct.tune_encoded(model, data.train_encoded, data.pad_token_id, max_steps, int(config["batch_size"]),
                              float(config["lr"]), eval_encoded=data.eval_encoded, callbacks=[callback], seed=seed,
                              weight_decay=float(config["weight_decay"]), eval_interval=eval_interval,
                              progress=False, device="cpu")
    except NonFiniteLossError as err:  # a diverged trial is a result (the worst), not a crash of the search
        on_eval({METRIC: float("inf"), "step": err.step, "train_loss": float("inf")})
    finally:
        torch.set_num_threads(threads)  # run outside Ray (a notebook cell), the caller keeps its threads


def finetune_trial(
    config: Mapping[str, Any],
    data: FineTuneJob,
    max_steps: int = 60,
    report_every: int = 10,
    seed: int = 0,
    report: Callable[[dict[str, float]], None] | None = None,
) -> None:
    """One trial, reporting the held-out loss after every evaluation. Chapter 09 (best practices).

    ``config``: ``{"lr", "batch_size", "weight_decay"}`` (what Tune drew from the search space).
    ``data``: the ``FineTuneJob``, handed over by ``tune.with_parameters``: everything the trial uses
    comes in through its arguments (no globals), so it runs the same in a notebook, a script or on any
    machine of a cluster. Every ``report_every`` steps it reports ``{"eval_loss", "step", "train_loss"}``
    with ``report`` (default ``ray.tune.report``; pass a function to run a trial without Ray): each report
    is a point at which ASHA can stop the trial.
    """
    report = report or _tune().report
    _train_trial(config, data, max_steps, report_every, seed, on_eval=report)


def manual_trial(
    config: Mapping[str, Any],
    data: FineTuneJob,
    max_steps: int = 60,
    report_every: int = 10,
    seed: int = 0,
    report: Callable[[dict[str, float]], None] | None = None,
) -> None:
    """The manual's trainable (ERRATA 9): train to the end, then report one final loss. Chapter 09.

    Same training as ``finetune_trial`` (``report_every`` is ignored: it evaluates once, at the end,
    like the manual's ``trainer.train()`` followed by ``return {"loss": ...}``). ASHA sees this trial
    once, after all its steps have run, so it cannot save any of them.
    """
    report = report or _tune().report
    _train_trial(config, data, max_steps, max_steps, seed, on_eval=report)


# --------------------------------------------------------------------------------------------
# 4. Running the search
# --------------------------------------------------------------------------------------------


def available_cpus() -> int:
    """The CPUs this process may run on (the affinity mask, not the machine's count). Chapter 09."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class RayStartError(RuntimeError):
    """Ray's own processes did not start in time (a busy machine). Chapter 09 (best practices)."""


@dataclass
class SearchResult:
    """What ``run_search`` returns. Chapter 09 (best practices).

    ``trials``: one dict per trial, in the order they were drawn: ``trial`` (number), ``lr``, ``batch_size``,
    ``weight_decay``, ``steps`` (training steps it ran), ``eval_loss`` (its last report; inf if the loss
    diverged), ``best_eval_loss``, ``train_loss`` (the training loss at the last report), ``stopped_early`` (it
    ran fewer than ``max_steps`` steps and did not diverge: ASHA stopped it), ``seconds`` (the trial's own run
    time) and ``curve`` (``[(step, eval_loss), ...]``, every report). ``wall_seconds``: the whole ``Tuner.fit``;
    ``peak_ray_memory_mb``: the largest memory (proportional set size, so shared pages count once) of the driver
    plus every Ray process it started (GCS, raylet, agents, workers) seen during the search (None when Ray runs
    elsewhere, e.g. a cluster, or psutil is missing), ``peak_memory_by_process`` its parts (MiB by process
    name). ``num_cpus``: the CPUs Ray had.
    """

    trials: list[dict[str, Any]]
    max_steps: int
    report_every: int
    single_report: bool
    scheduler: dict[str, Any]
    wall_seconds: float
    num_cpus: int
    peak_ray_memory_mb: float | None = None
    peak_memory_by_process: dict[str, float] = field(default_factory=dict)
    storage_path: str | None = None
    ray_version: str = ""
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Trials stopped early, steps run against all trials to the end, and the best config.

        ``steps_saved_ratio`` = (trials x max_steps) / steps run: how many times fewer training steps
        the search needed than running every trial to the end. ``trial_seconds_if_all_finished``
        extrapolates each stopped trial's seconds per step to ``max_steps`` (an estimate; the manual-style
        search, ``single_report=True``, measures it). ``best_config`` is the trial with the lowest held-out
        loss; ``best_config_by_train_loss`` the one the manual would pick (lowest training loss).
        """
        if not self.trials:
            raise ValueError("this search has no finished trials; see .errors")
        stopped = [t for t in self.trials if t["stopped_early"]]
        steps_run = sum(t["steps"] for t in self.trials)
        steps_all = len(self.trials) * self.max_steps
        seconds = sum(t["seconds"] for t in self.trials)
        seconds_all = sum(t["seconds"] * self.max_steps / max(t["steps"], 1) for t in self.trials)
        best = min(self.trials, key=lambda t: t["eval_loss"])
        by_train = [t for t in self.trials if math.isfinite(t.get("train_loss", math.nan))]
        best_train = min(by_train, key=lambda t: t["train_loss"]) if by_train else None
        return {
            "trials": len(self.trials),
            "stopped_early": len(stopped),
            "stopped_fraction": len(stopped) / len(self.trials),
            "steps_run": steps_run,
            "steps_if_all_finished": steps_all,
            "steps_saved_ratio": steps_all / max(steps_run, 1),
            "trial_seconds": seconds,
            "trial_seconds_if_all_finished": seconds_all,
            "wall_seconds": self.wall_seconds,
            "peak_ray_memory_mb": self.peak_ray_memory_mb,
            "best_config": {k: best[k] for k in ("lr", "batch_size", "weight_decay")},
            "best_eval_loss": best["eval_loss"],
            # the manual's choice (analysis.best_config with metric="loss" = result.training_loss): the lowest
            # *training* loss, which rewards fitting the training batches, not generalizing. None without
            # training losses. Compare it only where every trial ran to the end (single_report=True).
            "best_config_by_train_loss": ({k: best_train[k] for k in ("lr", "batch_size", "weight_decay")}
                                          if best_train else None),
            "eval_loss_of_best_by_train_loss": best_train["eval_loss"] if best_train else None,
        }


def _process_name(cmdline: list[str]) -> str:
    """A short name for a Ray process from its command line: "raylet", "gcs_server", "ray::worker", ..."""
    if not cmdline:
        return "other"
    first = Path(cmdline[0]).name
    if first.startswith("ray::"):
        return "ray::worker (trials)"
    for arg in cmdline[1:3]:
        if arg.endswith(".py"):
            return Path(arg).stem  # dashboard, agent, log_monitor, monitor, runtime_env/agent/main ...
        if arg == "-m" or arg.startswith("ray."):
            continue
    return first


class _MemoryWatch:
    """Samples the resident memory of this process and all its descendants (Ray's processes) in a thread."""

    def __init__(self, every_s: float = 0.5) -> None:
        try:
            import psutil
        except ImportError:
            psutil = None
        self.psutil, self.every_s, self.peak_mb, self.children = psutil, every_s, None, 0
        self.peak_by_process: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        if self.psutil is None:
            return
        me = self.psutil.Process()
        children = me.children(recursive=True)
        self.children = max(self.children, len(children))  # 0: Ray runs elsewhere (a cluster)
        by_process: dict[str, float] = {}
        for proc in [me, *children]:
            try:  # PSS: shared pages (libraries, Ray's shared-memory object store) split among their users
                info = proc.memory_full_info()
                name = "driver (this process)" if proc.pid == me.pid else _process_name(proc.cmdline())
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                continue  # a worker that just exited
            by_process[name] = by_process.get(name, 0.0) + getattr(info, "pss", info.rss) / 2**20
        mb = sum(by_process.values())
        if self.peak_mb is None or mb > self.peak_mb:
            self.peak_mb, self.peak_by_process = mb, dict(sorted(by_process.items(), key=lambda kv: -kv[1]))

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def __enter__(self) -> _MemoryWatch:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def _trial_row(number: int, result: Any, max_steps: int) -> dict[str, Any]:
    """One ``ray.tune.Result`` as a plain dict (see ``SearchResult.trials``)."""
    frame = result.metrics_dataframe
    curve = [] if frame is None or METRIC not in frame else \
        [(int(s), float(v)) for s, v in zip(frame["step"], frame[METRIC])]
    metrics = result.metrics or {}
    steps = curve[-1][0] if curve else 0
    return {
        "trial": number,
        "lr": float(result.config["lr"]),
        "batch_size": int(result.config["batch_size"]),
        "weight_decay": float(result.config["weight_decay"]),
        "steps": steps,
        METRIC: curve[-1][1] if curve else float("nan"),
        "best_eval_loss": min(v for _, v in curve) if curve else float("nan"),
        # the training loss (of the last batch) at the last report: what the manual picks its best config by
        "train_loss": float(metrics.get("train_loss", float("nan"))),
        # ASHA stopped it: it ended before max_steps without diverging (a NaN loss ends a trial by itself)
        "stopped_early": steps < max_steps and bool(curve) and math.isfinite(curve[-1][1]),
        "seconds": float(metrics.get("time_total_s", 0.0)),
        "curve": curve,
    }


@contextmanager
def _lean_ray_processes(enabled: bool = True, arenas: int = 2) -> Iterator[None]:
    """While Ray starts its processes, make them lighter: few malloc arenas, prompt frees, one OpenMP thread.

    Binder's 2 GB counts the container: the notebook, Ray's daemons and the trial worker together.
    ``MALLOC_ARENA_MAX``: glibc gives each thread that allocates its own memory arena (up to 8 per core), and
    every Ray process runs many threads (gRPC, the object store, Tune's trial thread), so their resident memory
    grows by arenas they barely use. With two per process the chapter's search (2 CPUs, one trial at a time)
    peaked about 150 MB lower (1,521 vs 1,673 MB, PSS of the driver and all of Ray's processes), with the same
    trials and results. ``OMP_NUM_THREADS=1``: a trial trains on one thread (``_train_trial``), so the OpenMP
    pool torch builds at import needs no more; measured, a trial's process 606 -> 538 MB.
    ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` at 64 KiB: glibc raises its mmap threshold each
    time a large block is freed (up to 32 MiB), after which a training step's tensors come from the heap and
    stay resident when freed; fixed thresholds send them to mmap and give freed memory back at once. Measured
    on chapter 09's search: the trial's process 652 -> 513 MB, the peak of the notebook and Ray's processes
    1,684 -> 1,533 MB (notebook 09 under pytest: 1,722 -> 1,570 MB); the price is page faults on fresh memory:
    its two searches took 68 s instead of 50 (a 1 MiB threshold: 1,658 MB, 56 s). Ray's processes (and the
    workers the raylet starts later) inherit all four; the notebook's own allocator and threads were set up
    when it started and are not affected (``release_memory`` in ``llm_course.core.runtime`` trims its heap).
    A variable that is already set is left as it is.
    """
    lean = {"MALLOC_ARENA_MAX": str(arenas), "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536",
            "MALLOC_TRIM_THRESHOLD_": "65536"}
    added = [name for name in lean if enabled and name not in os.environ]
    os.environ.update({name: lean[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


@contextmanager
def _fast_ray_processes(enabled: bool = True) -> Iterator[None]:
    """While Ray starts its processes, hide the optional ``rfc3987_syntax`` package from them.

    Every Python process Ray starts (GCS helpers, dashboard and runtime-env agents, workers) imports
    ``jsonschema``, which imports ``rfc3987_syntax`` if it is installed (Jupyter's ``jupyter-events`` installs
    it), and that package builds an Earley parser at import time: about 2.7 s of CPU per process, measured
    here. The raylet gives its agents only ~15 s to start, so on a busy two-core laptop Ray fails to start at
    all. ``jsonschema`` imports the package inside ``suppress(ImportError)``, so a stand-in that raises
    ImportError (first on the ``PYTHONPATH`` Ray's processes inherit) only turns off jsonschema's IRI format
    check, which Ray does not use. This process (the notebook) is not affected: PYTHONPATH is read at start.
    """
    if not enabled or importlib.util.find_spec("rfc3987_syntax") is None:
        yield
        return
    stub = cache_dir() / "ray_process_stubs"
    (stub / "rfc3987_syntax").mkdir(parents=True, exist_ok=True)
    (stub / "rfc3987_syntax" / "__init__.py").write_text(
        'raise ImportError("llm_course.train.hpsearch hides rfc3987_syntax from Ray\'s processes (slow import)")\n')
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(stub), *([old] if old else [])])
    try:
        yield  # the processes started now (and the workers the raylet starts later) inherit it
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


MANUAL_RESOURCES = {"cpu": 2, "gpu": 1}
"""The manual's ``resources_per_trial``: on a machine without a GPU no trial can ever start. Chapter 09."""


def check_trial_resources(resources: Mapping[str, float],
                          available: Mapping[str, float] | None = None) -> dict[str, float]:
    """Refuse a per-trial resource request the Ray cluster can never meet. Chapter 09 (ERRATA section 9).

    Tune does not fail on such a request: it keeps every trial PENDING and waits, forever, for a GPU or
    CPUs that will not come (the manual's ``resources_per_trial={"cpu": 2, "gpu": 1}`` on a machine without
    a GPU). ``resources``: ``{"cpu": 2, "gpu": 1, ...}`` (lower-case names as in ``resources_per_trial``).
    ``available``: what the cluster has, in Ray's spelling (``{"CPU": 2.0, "GPU": 1.0}``); default
    ``ray.cluster_resources()`` of the running Ray. Returns ``available``; raises ValueError naming each
    resource asked for that the cluster has too little of. (A cluster with an autoscaler may grow: check
    against what it can scale to.)
    """
    if not isinstance(resources, Mapping) or not resources:
        raise TypeError(f"resources must be a non-empty dict such as {{'cpu': 2}}, got {resources!r}")
    if available is None:
        ray = require("ray", RAY_PACKAGE)
        if not ray.is_initialized():
            raise ValueError("Ray is not running: call hpsearch.start_ray() first, or pass available= "
                             "(e.g. {'CPU': 2, 'GPU': 0})")
        available = ray.cluster_resources()
    have = {str(k).upper(): float(v) for k, v in available.items()}
    short = []
    for name, amount in resources.items():
        check_float(f"resources[{name!r}]", amount, low=0.0)
        key = str(name).upper()
        if amount > have.get(key, 0.0):
            short.append(f"{amount:g} {key} per trial, but the cluster has {have.get(key, 0.0):g}")
    if short:
        raise ValueError("this resource request can never be met: " + "; ".join(short) + ". Ray Tune would not "
                         "fail: it would keep every trial PENDING forever. Ask for what the machine has (no 'gpu' "
                         "key on a machine without a GPU; cpus_per_trial <= its CPUs), or run on a cluster that has it")
    return dict(available)


def start_ray(num_cpus: int | None = None, address: str | None = None, object_store_mb: int = 100,
              fast_start: bool = True) -> Any:
    """``ray.init`` for this chapter: the CPUs you have, little memory, a quiet notebook. Chapter 09.

    Local (``address=None``): ``num_cpus`` (default: ``available_cpus()``), an object store of
    ``object_store_mb`` MiB (the job is a few MB; Ray's default is 30% of RAM), no dashboard, and worker
    output kept out of the notebook (``log_to_driver=False``; it is in /tmp/ray/session_latest/logs).
    ``address``: a running Ray cluster (``"auto"``, ``"ray://head:10001"``): its CPUs are used, the
    local options do not apply. ``run_search`` calls this itself when Ray is not running (and shuts Ray
    down afterwards); call it yourself to run several searches in one Ray session, then ``ray.shutdown()``.
    ``fast_start``: hide one slow optional import from Ray's processes (see ``_fast_ray_processes``; on a busy
    2-core machine Ray does not start without it). Returns Ray's context. A ``RayStartError`` if Ray's processes
    do not come up (a very busy machine).
    """
    ray = require("ray", RAY_PACKAGE)
    if num_cpus is not None:
        check_positive_int("num_cpus", num_cpus)
        if address is not None:
            raise ValueError("num_cpus is for a local Ray; a cluster (address=...) has the CPUs it has")
    check_positive_int("object_store_mb", object_store_mb)
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "warning"}
    if address is None:
        options.update(num_cpus=num_cpus or available_cpus(), object_store_memory=object_store_mb * 2**20)
    try:
        with _fast_ray_processes(enabled=address is None and fast_start), _lean_ray_processes(enabled=address is None):
            return ray.init(address=address, **options)
    except Exception as err:  # Ray raises a bare Exception when its processes do not come up in time
        if "timed out during startup" not in str(err):
            raise
        raise RayStartError(
            "Ray could not start its processes in time: its raylet waits only ~15 s for its helper agents, and "
            "on a machine busy with other work they start slower than that (ray-project/ray#65983). Close "
            "other heavy programs and run the cell again; the logs are in /tmp/ray/session_latest/logs"
        ) from err


def run_search(
    job: FineTuneJob,
    space: SearchSpace | None = None,
    num_samples: int = 12,
    max_steps: int = 60,
    report_every: int = 10,
    seed: int = 0,
    *,
    single_report: bool = False,
    grace_period: int | None = None,
    reduction_factor: int = 3,
    address: str | None = None,
    num_cpus: int | None = None,
    cpus_per_trial: int = 1,
    object_store_mb: int = 100,
    storage_path: str | os.PathLike | None = None,
    name: str = "hpsearch",
) -> SearchResult:
    """Search ``space`` with ASHA, ``num_samples`` fine-tuning trials of ``job``. Chapter 09 (best practices).

    Each trial runs ``finetune_trial`` (or, with ``single_report=True``, the manual's ``manual_trial``)
    for up to ``max_steps`` steps, reporting the held-out loss every ``report_every`` steps. ASHA
    (``time_attr="step"``, ``max_t=max_steps``) looks at the first rung after ``grace_period`` steps
    (default ``report_every``), then after ``reduction_factor`` times as many, and so on; at each rung a
    trial whose loss is not in the best ``1 / reduction_factor`` seen there so far is stopped.

    Ray: if it is not running yet, ``ray.init`` starts it here, with ``num_cpus`` (default: the CPUs this
    process may use) and a small object store, no dashboard, no worker logs in the notebook; it is shut
    down again at the end. ``address="ray://host:10001"`` (or ``"auto"``) connects to a running Ray
    cluster instead and the same search spreads over all its CPUs (its machines need ``llm_course``
    installed). If you called ``ray.init`` yourself, that session is used and left running.
    Results are stored under ``storage_path/name`` (default: a temporary folder, removed afterwards);
    the returned ``SearchResult`` holds everything, so the folder is not needed to look at them.
    ``seed`` seeds Tune's sampling of configs (``BasicVariantGenerator(random_state=seed)``: the same seed
    draws the same configs, so an ASHA search and a ``single_report`` one compare like with like) and
    every trial's data order. ``reuse_actors=True``: a worker process that finished a trial runs the next
    one, so ``import torch`` is paid once per CPU, not once per trial.
    """
    space = search_space() if space is None else space
    if not isinstance(space, SearchSpace):
        raise TypeError(f"space must come from hpsearch.search_space(...), got {type(space).__name__}")
    if not isinstance(job, FineTuneJob):
        raise TypeError(f"job must be a FineTuneJob (hpsearch.make_job(model, tokenizer)), got {type(job).__name__}")
    for arg, value in (("num_samples", num_samples), ("max_steps", max_steps), ("report_every", report_every),
                       ("reduction_factor", reduction_factor), ("cpus_per_trial", cpus_per_trial),
                       ("object_store_mb", object_store_mb)):
        check_positive_int(arg, value)
    if report_every > max_steps:
        raise ValueError(f"report_every ({report_every}) must be <= max_steps ({max_steps}): a trial must report "
                         "before it ends for ASHA to be able to stop it")
    if reduction_factor < 2:
        raise ValueError(f"reduction_factor must be >= 2 (each rung keeps 1 / reduction_factor), "
                         f"got {reduction_factor}")
    grace_period = report_every if grace_period is None else check_positive_int("grace_period", grace_period)
    if grace_period >= max_steps:
        raise ValueError(f"grace_period ({grace_period}) must be < max_steps ({max_steps}), or ASHA has no rung")

    ray = require("ray", RAY_PACKAGE)
    tune = _tune()
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    started = not ray.is_initialized()
    if started:
        start_ray(num_cpus=num_cpus, address=address, object_store_mb=object_store_mb)
    elif address is not None or num_cpus is not None:
        raise ValueError("Ray is already running in this process (ray.init or start_ray was called); address and "
                         "num_cpus apply only when run_search starts it. Call ray.shutdown() first, or leave them out")

    watch = _MemoryWatch()
    temporary = storage_path is None
    folder = Path(tempfile.mkdtemp(prefix="llm_course_tune_") if temporary else storage_path).resolve()
    try:
        trainable = manual_trial if single_report else finetune_trial
        scheduler = {"time_attr": "step", "max_t": max_steps, "grace_period": grace_period,
                     "reduction_factor": reduction_factor}
        tuner = tune.Tuner(
            # with_parameters: ray.put(job) once, every trial gets it as its `data` argument (no globals)
            tune.with_resources(
                tune.with_parameters(trainable, data=job, max_steps=max_steps, report_every=report_every, seed=seed),
                {"cpu": cpus_per_trial}),
            param_space=space.to_tune(),
            tune_config=tune.TuneConfig(
                metric=METRIC, mode="min", num_samples=num_samples,
                scheduler=ASHAScheduler(**scheduler),
                search_alg=BasicVariantGenerator(random_state=seed),
                reuse_actors=True,  # a finished trial's worker process runs the next one: no new `import torch`
            ),
            run_config=tune.RunConfig(name=name, storage_path=str(folder), verbose=0),
        )
        cpus = int(ray.cluster_resources().get("CPU", 0))
        if address is None:  # a local Ray cannot grow: a trial that does not fit would wait forever
            check_trial_resources({"cpu": cpus_per_trial})
        t0 = time.perf_counter()
        with watch:
            grid = tuner.fit()
        wall = time.perf_counter() - t0
        results = sorted((grid[i] for i in range(len(grid))), key=_trial_order)
        errors = [str(r.error) for r in results if r.error is not None]
        trials = [_trial_row(i, r, max_steps) for i, r in enumerate(results) if r.error is None]
    finally:
        if started:
            ray.shutdown()
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)
    return SearchResult(trials, max_steps, report_every, single_report, scheduler, wall, cpus,
                        watch.peak_mb if watch.children else None, watch.peak_by_process if watch.children else {},
                        None if temporary else str(folder / name), ray.__version__, errors)


def _trial_order(result: Any) -> int:
    """Sort key: Tune's trial ids are ``<experiment>_<number>``, numbered in the order configs were drawn."""
    trial_id = str((result.metrics or {}).get("trial_id", ""))
    tail = trial_id.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 10**9


# --------------------------------------------------------------------------------------------
# 5. Looking at the results
# --------------------------------------------------------------------------------------------


def results_table(result: SearchResult) -> Any:
    """One row per trial, best held-out loss first, as a pandas DataFrame. Chapter 09 (best practices).

    Columns: trial, lr, batch_size, weight_decay, steps, eval_loss, best_eval_loss, stopped_early,
    seconds. (pandas comes with ``ray[tune]``.)
    """
    pd = require("pandas")
    rows = [{k: v for k, v in t.items() if k != "curve"} for t in result.trials]
    return pd.DataFrame(rows).sort_values(METRIC, kind="stable").reset_index(drop=True)


def plot_trials(result: SearchResult, ax: Any = None, title: str | None = None) -> Any:
    """Held-out loss against training step, one line per trial. Chapter 09 (best practices).

    Trials ASHA stopped early are grey, dashed and end in an ×; trials that ran to ``max_steps`` are
    coloured; the best is drawn thick. The dotted verticals mark ASHA's rungs. Draws on ``ax`` (a new
    ``Figure``'s axes if None, without pyplot) and returns the Axes.
    """
    if ax is None:
        from matplotlib.figure import Figure

        ax = Figure(figsize=(7, 4)).add_subplot()
    best = min(result.trials, key=lambda t: t[METRIC])["trial"] if result.trials else None
    finished = sorted((t for t in result.trials if not t["stopped_early"]), key=lambda t: t[METRIC])
    labelled = {t["trial"] for t in finished[:5]}  # a legend for the 5 best finished trials, not all of them
    for t in result.trials:
        if not t["curve"]:
            continue
        steps, losses = zip(*t["curve"])
        label = f"lr {t['lr']:.1e}, bs {t['batch_size']}, wd {t['weight_decay']:.2f}"
        if t["stopped_early"]:
            ax.plot(steps, losses, "--", color="0.6", lw=1)
            ax.plot(steps[-1], losses[-1], "x", color="0.4")
        else:
            ax.plot(steps, losses, "o-", lw=3 if t["trial"] == best else 1.5, ms=3,
                    label=label if t["trial"] in labelled else None)
    rung = result.scheduler["grace_period"]
    while not result.single_report and rung < result.max_steps:
        ax.axvline(rung, color="0.8", ls=":", lw=1)
        rung *= result.scheduler["reduction_factor"]
    summary = result.summary() if result.trials else None
    if title is None and summary is not None:
        title = (f"{summary['stopped_early']} of {summary['trials']} trials stopped early; "
                 f"{summary['steps_run']} of {summary['steps_if_all_finished']} steps run")
    ax.set_title(title or "")
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out loss (nats / token)")
    ax.grid(alpha=0.3)
    if labelled:
        ax.legend(fontsize=7, title="ran to the end" + (" (5 best)" if len(finished) > 5 else ""),
                  title_fontsize=7)
    return ax
