"""Multi-process training: the course GPT with DistributedDataParallel (DDP). Chapter 09 (best practices).

Data parallelism in one picture. Every process ("rank") holds a full copy of the model; each step the
*global* batch of B sequences is cut into W equal slices, one per rank::

    global batch (B, T) ──► rank 0: rows [0, B/W)      forward, backward ─┐
                        ──► rank 1: rows [B/W, 2B/W)   forward, backward ─┼─► all-reduce: mean gradient
                        ──► ...                                           ─┘   (identical on every rank)
    every rank: clip the (same) gradient norm, AdamW step  ──►  the copies stay identical

Because the all-reduce *averages* the gradients and every slice scores as many tokens, a run on W
processes with B/W sequences each computes the gradient of the mean loss over all B sequences: the same
numbers as one process with batch B, up to float rounding (the sums are added in another order). The test
(tests/test_distributed.py) launches 2 processes and checks exactly that against a 1-process run.

Run it::

    python -m llm_course.train.distributed --steps 20 --out runs/ch09/ddp_1.json             # one process
    torchrun --standalone --nproc_per_node=2 -m llm_course.train.distributed \\
        --steps 20 --out runs/ch09/ddp_2.json                                          # two processes

``torchrun`` starts the processes and gives each its ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT``; ``--standalone`` picks a free port on this machine. The backend is
gloo on the CPU and NCCL on CUDA GPUs (one GPU per process: ``cuda:LOCAL_RANK``). On a 2-core laptop two
CPU processes are *not* faster than one (they share the cores and add communication): the point here is
that the numbers are the same, so a script that is right on a laptop is right on 8 GPUs.

What each piece does, in the order ``train_data_parallel`` runs them:

1. ``read_dist_env``: rank and world size from torchrun's environment (absent: one plain process).
2. ``check_sharding``: the global batch must split evenly over the ranks, and the data must hold at
   least one sequence per rank (clear ``ValueError`` otherwise, raised on every rank *before* any
   process talks to another, so a bad setting cannot leave the others waiting forever).
3. ``seed_everything(seed)`` then ``GPT(config)`` on every rank: the same initial weights as a 1-process
   run with that seed. (DDP also broadcasts rank 0's weights when it wraps the model, so the copies
   start equal even if a rank were seeded differently.)
4. ``global_batch_at(tokens, i, ...)``: micro-batch ``i`` of the *global* batch, drawn from a generator
   seeded by (seed, i), so every rank draws the same B sequences and ``shard_batch`` keeps its rows.
   No rank needs to receive data from another, and the batch does not depend on W.
5. ``loss * local_targets * W / global_targets`` then ``backward()``: DDP all-reduces (averages) the
   gradients during backward. With full blocks the factor is exactly 1; with padding (ranks scoring
   different numbers of tokens) it makes the result the mean over *all* targets, not a mean of means.
   With ``grad_accum_steps > 1`` the first micro-batches run under ``model.no_sync()``: gradients
   accumulate locally and only the last backward of the step communicates.
6. ``clip_grad_norm_`` and AdamW (``configure_optimizer``, ``lr_at`` from chapter 04): the gradient is
   already the same on every rank, so each computes the same norm and the same update.
7. The logged loss is the global mean (``all_reduce`` of the per-rank sums of nats); rank 0 writes the
   per-step records to ``--out`` (JSON); a barrier waits for every rank, then the process group is
   destroyed and each torchrun rank ends at once (``_exit_worker`` says why).

``launch(nproc, args)`` runs this module from Python (the notebook and the tests use it): torchrun with
every rank's output kept in its own file, a time limit that stops all the processes, and a
``DistributedRunError`` that names the rank that failed, how, and shows every rank's stderr.

Data: ``--data synthetic`` (default, instant) is a seeded stream from a random first-order Markov chain
over ``--vocab-size`` tokens, each token followed by one of ``--branching`` successors: the loss falls from
ln(vocab_size) towards ln(branching), so a short run shows learning. ``--data docs`` tokenizes the first
``--tokens`` tokens' worth of the docs corpus (``llm_course.text.corpora.docs_corpus``) with the shipped
course-gpt tokenizer (slower to prepare, real text).

Several GPUs: ``accelerate`` and FSDP — see ``notes()`` (printed by ``--notes``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from llm_course.core.checks import (
    check_choice,
    check_index,
    check_int,
    check_positive,
    check_positive_int,
    check_str,
)
from llm_course.core.runtime import seed_everything
from llm_course.models.gpt import GPT
from llm_course.models.shape import ModelShape
from llm_course.nn.objectives import count_targets, random_blocks
from llm_course.train.loop import TrainConfig, configure_optimizer, lr_at

__all__ = [
    "DataParallelConfig",
    "DistEnv",
    "TORCHRUN_ENV",
    "read_dist_env",
    "check_sharding",
    "shard_range",
    "shard_batch",
    "synthetic_stream",
    "docs_stream",
    "global_batch_at",
    "pick_device_and_backend",
    "train_data_parallel",
    "DistributedRunError",
    "launch",
    "notes",
    "main",
]

# The variables torchrun (torch.distributed.run) sets in every process it starts.
TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DataParallelConfig(ModelShape):
    """What a data-parallel run trains on, besides the optimisation settings. Chapter 09 (best practices).

    The model: a GPT of the ``ModelShape`` fields (``n_layer``, ``n_embd``, ``n_head``, contexts of
    ``block_size`` tokens; ``vocab_size`` for synthetic data), without dropout. ``global_batch``:
    sequences per micro-batch summed over all processes (each rank gets ``global_batch // world_size``).
    Data: ``data`` is "synthetic" (``synthetic_stream(n_tokens, vocab_size, branching, seed)``) or
    "docs" (``docs_stream(n_tokens)``, the course-gpt tokenizer's vocabulary; ``vocab_size`` is then
    ignored). ``backend``: "auto" (NCCL on CUDA, gloo on the CPU), "gloo" or "nccl". ``timeout_s``: how
    long a collective may wait for the other ranks before the run fails (instead of hanging when one
    process died).
    """

    vocab_size: int = 256
    global_batch: int = 16
    data: str = "synthetic"
    branching: int = 4
    n_tokens: int = 50_000
    backend: str = "auto"
    timeout_s: float = 300.0

    def __post_init__(self) -> None:
        super().__post_init__()  # the shape: positive integers, n_embd divisible by n_head
        for name, minimum in [("global_batch", 1), ("branching", 1), ("n_tokens", 2)]:
            check_int(f"DataParallelConfig.{name}", getattr(self, name), minimum=minimum)
        check_choice("DataParallelConfig.data", self.data, ("synthetic", "docs"))
        check_choice("DataParallelConfig.backend", self.backend, ("auto", "gloo", "nccl"))
        if self.branching > self.vocab_size:
            raise ValueError(f"branching ({self.branching}) cannot exceed vocab_size ({self.vocab_size})")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 seconds, got {self.timeout_s!r}")


@dataclass(frozen=True)
class DistEnv:
    """Who this process is: ``rank`` of ``world_size``, ``local_rank`` on its machine. Chapter 09.

    ``distributed`` is False for a plain ``python -m llm_course.train.distributed`` run (rank 0 of 1, no
    process group, no DDP wrapper).
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    distributed: bool = False


def read_dist_env(force: bool = False, environ: Mapping[str, str] | None = None) -> DistEnv:
    """Rank and world size from the variables torchrun sets. Chapter 09 (best practices).

    Without them (and ``force=False``) this is a single plain process. With ``force=True`` (the CLI's
    ``--distributed``) a missing variable is a ``ValueError`` that says to launch with torchrun.
    Malformed values (not integers, rank outside [0, world_size)) are ``ValueError`` too.
    """
    env = os.environ if environ is None else environ
    present = [k for k in TORCHRUN_ENV if k in env]
    if not present and not force:
        return DistEnv()
    missing = [k for k in TORCHRUN_ENV if k not in env]
    if missing:
        why = "--distributed was given, but" if force and not present else "only some torchrun variables are set:"
        raise ValueError(
            f"{why} the environment lacks {', '.join(missing)}: these are set by torchrun. Launch with "
            "`torchrun --standalone --nproc_per_node=2 -m llm_course.train.distributed ...` (or drop --distributed "
            "to train in one plain process)")
    try:
        rank, local_rank, world_size = (int(env[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    except ValueError:
        raise ValueError(f"RANK, LOCAL_RANK and WORLD_SIZE must be integers, got {env['RANK']!r}, "
                         f"{env['LOCAL_RANK']!r}, {env['WORLD_SIZE']!r}") from None
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ValueError(f"inconsistent torchrun environment: RANK={rank}, LOCAL_RANK={local_rank}, "
                         f"WORLD_SIZE={world_size} (need 0 <= RANK < WORLD_SIZE)")
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world_size, distributed=True)


# --------------------------------------------------------------------------------------------
# Sharding: which rows of the global batch each rank trains on
# --------------------------------------------------------------------------------------------


def check_sharding(global_batch: int, world_size: int, n_sequences: int | None = None) -> int:
    """Check that the global batch splits evenly over the ranks; return the per-rank batch. Chapter 09.

    ``n_sequences``: how many sequences (blocks of block_size tokens) the data holds, if known. Each rank
    needs at least one sequence per step, and a global batch larger than the data would repeat windows
    within a step. A ``ValueError`` says which number to change.
    """
    check_positive_int("global_batch", global_batch)
    check_positive_int("world_size", world_size)
    if n_sequences is not None and n_sequences < world_size:
        raise ValueError(
            f"the world size ({world_size} processes) is larger than the data ({n_sequences} sequences): every "
            "process needs at least one sequence per step. Use fewer processes (--nproc_per_node), more data "
            "(--tokens) or a shorter --block-size")
    if world_size > global_batch:
        raise ValueError(
            f"the world size ({world_size} processes) is larger than the global batch ({global_batch} sequences): "
            f"every process needs at least one sequence per step. Use --global-batch {world_size} (or a larger "
            "multiple of the world size) or fewer processes (--nproc_per_node)")
    if global_batch % world_size:
        lower, upper = global_batch // world_size * world_size, -(-global_batch // world_size) * world_size
        raise ValueError(
            f"the global batch ({global_batch} sequences) is not divisible by the world size ({world_size} "
            f"processes): the ranks would get different batch sizes, and the averaged gradient would no longer "
            f"be the one of the global batch. Use --global-batch {lower} or {upper}")
    if n_sequences is not None and n_sequences < global_batch:
        raise ValueError(
            f"the global batch ({global_batch} sequences) is larger than the data ({n_sequences} sequences of "
            "block_size tokens): use a smaller --global-batch, more --tokens or a shorter --block-size")
    return global_batch // world_size


def shard_range(global_batch: int, rank: int, world_size: int) -> slice:
    """The rows of the global batch that ``rank`` trains on: a contiguous slice. Chapter 09.

    Rank r gets rows ``[r * b, (r + 1) * b)`` with ``b = global_batch // world_size``: the slices of all
    ranks, in rank order, are the global batch exactly once. Errors as in ``check_sharding``, plus a
    rank outside ``[0, world_size)``.
    """
    per_rank = check_sharding(global_batch, world_size)
    check_index("rank", rank, world_size, hint=f"one of the {world_size} processes")
    return slice(rank * per_rank, (rank + 1) * per_rank)


def shard_batch(batch: Mapping[str, torch.Tensor], rank: int, world_size: int) -> dict[str, torch.Tensor]:
    """This rank's rows of every (B, ...) tensor of ``batch`` (``shard_range``). Chapter 09."""
    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        raise TypeError("batch must be a dict like {'input_ids': (B, T), 'labels': (B, T)}")
    rows = shard_range(int(batch["input_ids"].shape[0]), rank, world_size)
    return {k: v[rows] for k, v in batch.items()}


# --------------------------------------------------------------------------------------------
# Data: one deterministic token stream, the same on every rank
# --------------------------------------------------------------------------------------------


def synthetic_stream(n_tokens: int, vocab_size: int, branching: int = 4, seed: int = 0) -> torch.Tensor:
    """A seeded token stream from a random Markov chain: (n_tokens,) long. Chapter 09 (best practices).

    Each token id has ``branching`` allowed successors (drawn once from the seed) and the next token is one
    of them uniformly, so the best possible loss is ln(branching) nats per token, against ln(vocab_size)
    for a model that has learned nothing. The same arguments give the same stream on every rank.
    """
    if n_tokens < 2 or vocab_size < 2 or not 1 <= branching <= vocab_size:
        raise ValueError(f"need n_tokens >= 2, vocab_size >= 2 and 1 <= branching <= vocab_size, got "
                         f"n_tokens={n_tokens}, vocab_size={vocab_size}, branching={branching}")
    g = torch.Generator().manual_seed(seed)
    successors = torch.stack([torch.randperm(vocab_size, generator=g)[:branching] for _ in range(vocab_size)])
    choices = torch.randint(branching, (n_tokens,), generator=g).tolist()
    table = successors.tolist()
    stream = [int(torch.randint(vocab_size, (1,), generator=g))]
    for c in choices[1:]:
        stream.append(table[stream[-1]][c])
    return torch.tensor(stream, dtype=torch.long)


def docs_stream(n_tokens: int) -> tuple[torch.Tensor, int]:
    """The first ``n_tokens`` tokens of the docs corpus, with the course-gpt tokenizer. Chapter 09.

    Returns ``(tokens, vocab_size)``. Reads the shipped tokenizer (``llm_course/checkpoints/course-gpt``)
    and the cached docs text; nothing is downloaded.
    """
    from llm_course.core.paths import CHECKPOINTS_DIR
    from llm_course.text.corpora import docs_corpus
    from llm_course.text.tokenizer import ByteLevelBPETokenizer

    tokenizer = ByteLevelBPETokenizer.from_pretrained(CHECKPOINTS_DIR / "course-gpt")
    text = docs_corpus().train[: 8 * n_tokens]  # a BPE token is ~4 characters of English: 8 is plenty
    ids = tokenizer.encode(text)[:n_tokens]
    if len(ids) < n_tokens:
        raise ValueError(f"the docs corpus gave only {len(ids)} tokens; ask for fewer (--tokens)")
    return torch.tensor(ids, dtype=torch.long), tokenizer.vocab_size


def global_batch_at(
    tokens: torch.Tensor, i: int, global_batch: int, block_size: int, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Micro-batch ``i`` of the run: ``global_batch`` random windows as ``{input_ids, labels}``. Chapter 09.

    Drawn by ``random_blocks`` from a generator seeded by ``(seed, i)``, so it depends on neither the rank
    nor the world size nor what was drawn before: every rank draws the same global batch and keeps its
    rows (``shard_batch``), and a 1-process run sees exactly the same sequences.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + i)
    return random_blocks(tokens, global_batch, block_size, generator=g)


# --------------------------------------------------------------------------------------------
# Devices and backends
# --------------------------------------------------------------------------------------------


def pick_device_and_backend(device: str, backend: str, env: DistEnv) -> tuple[torch.device, str | None]:
    """This rank's device and the process-group backend (None: no process group). Chapter 09.

    ``device``: "auto" (CUDA if available, else the CPU), "cpu" or "cuda"; a distributed CUDA run puts
    rank ``local_rank`` on ``cuda:local_rank``. ``backend``: "auto" = NCCL on CUDA, gloo on the CPU. NCCL
    without CUDA, or more local ranks than GPUs, is a ``ValueError``.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda' for data-parallel training, got {device!r} "
                         "(Apple's MPS has no distributed backend here)")
    if backend not in ("auto", "gloo", "nccl"):
        raise ValueError(f"backend must be 'auto', 'gloo' or 'nccl', got {backend!r}")
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise ValueError("--device cuda was requested but this machine has no CUDA GPU "
                         "(torch.cuda.is_available() is False); use --device cpu (backend gloo)")
    if backend == "nccl" and (not cuda or device == "cpu"):
        raise ValueError("the NCCL backend needs CUDA GPUs (one per process), and "
                         + ("this machine has none" if not cuda else "--device cpu was given")
                         + ": use --backend gloo (or auto) to train on the CPU")
    kind = "cuda" if device == "cuda" or (device == "auto" and cuda) else "cpu"
    if kind == "cuda" and env.distributed:
        if env.local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {env.local_rank} but only {torch.cuda.device_count()} CUDA GPU(s): "
                             "start at most one process per GPU (--nproc_per_node)")
        chosen = torch.device("cuda", env.local_rank)
    else:
        chosen = torch.device(kind)
    if not env.distributed:
        return chosen, None
    if backend == "auto":
        backend = "nccl" if kind == "cuda" else "gloo"
    if backend == "gloo" and not dist.is_gloo_available():
        raise ValueError("this torch build has no gloo backend; install a standard torch wheel")
    if backend == "nccl" and not dist.is_nccl_available():
        raise ValueError("this torch build has no NCCL backend; use --backend gloo")
    return chosen, backend


# --------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------


def _sum_over_ranks(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """The sum of ``value`` over all ranks (the value itself in a plain process)."""
    if env.distributed:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)  # gloo has no AVG: sum, then divide
    return value


def train_data_parallel(
    cfg: DataParallelConfig,
    train_cfg: TrainConfig,
    env: DistEnv | None = None,
    out: str | Path | None = None,
    save_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Train a GPT data-parallel on ``env.world_size`` processes; returns the run's record. Chapter 09.

    Called in every process (torchrun starts them). ``train_cfg`` supplies the optimisation settings of
    chapter 04 (``max_steps``, ``lr``/``min_lr``/``warmup_steps`` via ``lr_at``, ``weight_decay``,
    ``betas``, ``grad_clip``, ``grad_accum_steps``, ``seed``, ``device``); evaluation and checkpoint
    settings are not used. ``env``: ``read_dist_env()`` if None. Every check runs before the process group
    is created. The record (returned on every rank, written to ``out`` as JSON by rank 0) holds
    ``losses`` (the global mean loss of each step), ``steps`` (step, loss, lr, grad_norm, tokens_per_sec),
    the sizes, backend, device and seconds. ``save_dir``: rank 0 saves the trained model there
    (``save_pretrained``: config.json + model.safetensors).
    """
    if not isinstance(cfg, DataParallelConfig):
        raise TypeError(f"cfg must be a DataParallelConfig, got {type(cfg).__name__}")
    if not isinstance(train_cfg, TrainConfig):
        raise TypeError(f"train_cfg must be a TrainConfig, got {type(train_cfg).__name__}")
    env = read_dist_env() if env is None else env
    seed = train_cfg.seed if train_cfg.seed is not None else 0

    # -- 1. checks and data, identical on every rank, before any rank talks to another --------
    device, backend = pick_device_and_backend(train_cfg.device, cfg.backend, env)
    if cfg.data == "synthetic":
        tokens, vocab_size = synthetic_stream(cfg.n_tokens, cfg.vocab_size, cfg.branching, seed), cfg.vocab_size
    else:
        tokens, vocab_size = docs_stream(cfg.n_tokens)
    per_rank = check_sharding(cfg.global_batch, env.world_size, n_sequences=tokens.numel() // cfg.block_size)
    accum = train_cfg.grad_accum_steps

    # -- 2. the process group, and the same model on every rank ------------------------------
    if backend is not None:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size,
                                timeout=datetime.timedelta(seconds=cfg.timeout_s))
    try:
        seed_everything(seed)
        model: nn.Module = GPT(cfg.gpt_config(vocab_size)).to(device)
        raw_model = model  # the GPT inside the DDP wrapper: what gets saved
        if env.distributed:
            # DDP broadcasts rank 0's weights now and hooks an all-reduce (mean) of the gradients into
            # backward(), bucket by bucket, overlapping communication with the rest of the backward pass.
            model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        optimizer = configure_optimizer(raw_model, train_cfg.weight_decay, train_cfg.lr, train_cfg.betas)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        max_norm = train_cfg.grad_clip if train_cfg.grad_clip else math.inf

        # -- 3. the loop ----------------------------------------------------------------------
        records: list[dict[str, float]] = []
        model.train()
        t_start = time.perf_counter()
        for step in range(1, train_cfg.max_steps + 1):
            t0 = time.perf_counter()
            lr = lr_at(step, train_cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # Micro-batches of this step: every rank draws the global ones and keeps its rows.
            micro = [global_batch_at(tokens, (step - 1) * accum + k, cfg.global_batch, cfg.block_size, seed)
                     for k in range(accum)]
            total_targets = sum(count_targets(b["labels"]) for b in micro)  # over all ranks and micro-batches
            nats = torch.zeros((), device=device)  # this rank's summed loss in nats, for logging
            for k, global_batch in enumerate(micro):
                batch = {key: v.to(device) for key, v in shard_batch(global_batch, env.rank, env.world_size).items()}
                local_targets = count_targets(batch["labels"])
                loss = model(**batch).loss  # mean over this rank's targets
                # DDP averages gradients over W ranks; this factor turns that into the gradient of the
                # mean over all total_targets (exactly 1.0 for full blocks and one micro-batch).
                scaled = loss * (local_targets * env.world_size / total_targets)
                last = k == accum - 1
                if env.distributed and not last:
                    with model.no_sync():  # accumulate locally; only the last backward all-reduces
                        scaled.backward()
                else:
                    scaled.backward()
                nats += loss.detach() * local_targets
            loss_value = float(_sum_over_ranks(nats, env)) / total_targets
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"the loss is {loss_value} at step {step} (lr {lr:.3g}): lower --lr")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))  # same on every rank
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seen = accum * cfg.global_batch * cfg.block_size
            records.append({"step": step, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                            "tokens_per_sec": seen / max(time.perf_counter() - t0, 1e-9)})
            if env.rank == 0 and train_cfg.log_interval and step % train_cfg.log_interval == 0:
                print(f"step {step}/{train_cfg.max_steps}: loss {loss_value:.4f}, lr {lr:.2e}, "
                      f"grad norm {grad_norm:.3f}, {records[-1]['tokens_per_sec']:,.0f} tokens/s", flush=True)

        result = {
            "world_size": env.world_size, "backend": backend, "device": str(device),
            "global_batch": cfg.global_batch, "per_rank_batch": per_rank, "block_size": cfg.block_size,
            "grad_accum_steps": accum, "seconds": time.perf_counter() - t_start,
            "losses": [r["loss"] for r in records], "steps": records,
            "config": dataclasses.asdict(cfg), "model_config": dataclasses.asdict(raw_model.config),
            "train_config": {k: v for k, v in dataclasses.asdict(train_cfg).items()
                             if k not in ("checkpoint_dir", "eval_interval", "eval_steps", "chars_per_token",
                                          "checkpoint_interval", "progress", "live_plot")},
        }
        if env.rank == 0:
            if out is not None:
                Path(out).parent.mkdir(parents=True, exist_ok=True)
                Path(out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
            if save_dir is not None:
                raw_model.save_pretrained(save_dir)
        if backend is not None:
            # Every rank has finished every collective (and rank 0 has written its files) before any rank
            # starts tearing down: no process closes its connections while another still uses them.
            dist.barrier()
        return result
    finally:
        if backend is not None and dist.is_initialized():
            dist.destroy_process_group()


# --------------------------------------------------------------------------------------------
# Launching: torchrun from Python, with every rank's own output kept
# --------------------------------------------------------------------------------------------


class DistributedRunError(RuntimeError):
    """A launched run failed or timed out. Chapter 09 (best practices).

    The message names what happened (which rank ended how, a likely cause where one is recognised) and
    ends with every rank's own stderr; ``returncode``, ``rank_logs`` (rank -> its stderr text) and
    ``log_dir`` are kept as attributes.
    """

    def __init__(self, message: str, returncode: int | None, rank_logs: dict[int, str], log_dir: Path | None):
        super().__init__(message)
        self.returncode, self.rank_logs, self.log_dir = returncode, rank_logs, log_dir


_SIGNALS = {-int(s): s.name for s in (signal.SIGABRT, signal.SIGKILL, signal.SIGSEGV, signal.SIGTERM,
                                      signal.SIGBUS, signal.SIGINT)}
# What a rank's stderr says -> what to tell the student.
_KNOWN_CAUSES = [
    (r"address already in use|EADDRINUSE", "a network port the run needs is taken by another program: wait a "
     "moment and run it again, or find the program with `ss -ltnp`"),
    (r"Connection (reset|closed) by peer|Connection refused", "a rank lost its connection to another one "
     "(that rank died first: look at its output above)"),
    (r"out of memory|Cannot allocate memory|MemoryError", "a rank ran out of memory: use a smaller "
     "--global-batch or --block-size, or fewer processes"),
    (r"Timed out|timed out|DistBackendError.*timeout", "a rank waited longer than --timeout-s for the others: "
     "one of them is stuck or much slower"),
]


def _rank_logs(log_dir: Path) -> dict[int, str]:
    """Each rank's stderr from torchrun's ``--log-dir`` (``<run id>/attempt_<k>/<rank>/stderr.log``)."""
    logs: dict[int, str] = {}
    for path in sorted(log_dir.glob("*/attempt_*/*/stderr.log")):
        if path.parent.name.isdigit():
            logs[int(path.parent.name)] = path.read_text(encoding="utf-8", errors="replace")
    return logs


def _rank_stdout(log_dir: Path, rank: int) -> str:
    paths = sorted(log_dir.glob(f"*/attempt_*/{rank}/stdout.log"))
    return paths[-1].read_text(encoding="utf-8", errors="replace") if paths else ""


def _describe_failure(nproc: int, returncode: int | None, launcher_output: str, rank_logs: dict[int, str],
                      tail_chars: int) -> str:
    """One message: how each failed rank ended, a recognised cause, then every rank's own stderr."""
    if returncode is None:
        head = f"the {nproc}-process run did not finish in time and was stopped"
    elif nproc == 1:
        how = _SIGNALS.get(returncode, f"exit code {returncode}")
        head = f"the 1-process run failed ({how})"
    else:
        # torchrun's summary lists each failed rank ("rank : 1 (local_rank: 1)" then "exitcode : -6 (pid: 123)")
        # and, last, the "Root Cause (first observed failure)": that one is named first.
        pattern = r"rank\s*:\s*(\d+).*?\n\s*exitcode\s*:\s*(-?\d+)"
        _, _, root_part = launcher_output.rpartition("Root Cause")
        root = re.findall(pattern, root_part)[:1]
        ended = {r: int(c) for r, c in re.findall(pattern, launcher_output)}

        def how(code: int) -> str:
            return f"was killed by {_SIGNALS[code]}" if code in _SIGNALS else f"exited with code {code}"

        words = [f"rank {r} {how(int(c))} first" for r, c in root]
        words += [f"rank {r} {how(c)}" + (" (stopped by torchrun after that)" if root and c == -15 else "")
                  for r, c in ended.items() if not root or r != root[0][0]]
        head = f"the {nproc}-process run failed: " + ("; ".join(words) or f"torchrun exited with code {returncode}")
    text = launcher_output + "\n".join(rank_logs.values())
    causes = [why for pattern, why in _KNOWN_CAUSES if re.search(pattern, text)]
    own_errors = [ln for ln in text.splitlines() if re.match(r"(\[rank \d+\] )?error: ", ln)]
    parts = [head + "."]
    if own_errors:
        parts.append("The script said:\n" + "\n".join(dict.fromkeys(own_errors)))
    if causes:
        parts.append("Likely cause: " + "; ".join(causes) + ".")
    for rank, log in sorted(rank_logs.items()):
        tail = log[-tail_chars:].strip() or "(empty)"
        parts.append(f"--- rank {rank} stderr (last {tail_chars} characters) ---\n{tail}")
    if not rank_logs:
        parts.append(f"--- output (last {tail_chars} characters) ---\n{launcher_output[-tail_chars:].strip()}")
    return "\n".join(parts)


def _descendants(pid: int) -> list[int]:
    """The pids of every process below ``pid`` (Linux ``/proc``; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "(command name)": state, ppid, ...
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Stop a launch that ran out of time: torchrun and every rank, which torchrun starts in sessions of
    their own (so one ``killpg`` does not reach them). SIGTERM first (torchrun then stops its ranks), then
    SIGKILL to whatever is left."""
    ranks = _descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    left = [*ranks, *_descendants(proc.pid)] + ([proc.pid] if proc.poll() is None else [])
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def launch(
    nproc: int,
    args: Sequence[str],
    *,
    timeout_s: float = 300.0,
    log_dir: str | Path | None = None,
    threads_per_process: int = 1,
    tail_chars: int = 2000,
    module: str = "llm_course.train.distributed",
) -> str:
    """Run ``llm_course.train.distributed`` with ``args`` on ``nproc`` processes; returns rank 0's stdout. Chapter 09.

    ``nproc == 1``: one plain ``python -m llm_course.train.distributed`` process. ``nproc > 1``: ``torchrun
    --standalone`` (its rendezvous binds a free port itself) with ``--log-dir`` and ``--redirects 3``, so
    every rank's stdout and stderr are kept in their own files under ``log_dir`` (a temporary folder if
    None). The launch runs in its own process session: past ``timeout_s`` seconds the launcher *and* all
    its ranks are killed, nothing is left running. ``threads_per_process`` sets ``OMP_NUM_THREADS`` (2
    processes on 2 cores: 1 each). Any torchrun variables of the calling process (a notebook started under
    torchrun) are not passed on. ``module``: another script to launch the same way (``python -m module``).

    A failure raises ``DistributedRunError``: which rank ended how (exit code or signal), the script's
    own ``error:`` lines, a likely cause where one is recognised (a port taken, a rank out of memory,
    a lost peer, a timeout), then each rank's stderr (the last ``tail_chars`` characters).
    """
    check_positive_int("nproc", nproc)
    check_positive_int("threads_per_process", threads_per_process)
    check_positive("timeout_s", timeout_s, hint="seconds")
    if isinstance(args, (str, bytes)):
        raise TypeError("args must be a list of command-line words, e.g. ['--steps', '8']")
    logs = Path(tempfile.mkdtemp(prefix="llm_course_ddp_") if log_dir is None else log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    check_str("module", module)
    if not re.fullmatch(r"[A-Za-z_][\w.]*", module):
        raise ValueError(f"module must be a dotted module name like 'llm_course.train.distributed', got {module!r}")
    module_args = ["-m", module, *map(str, args)]
    if nproc == 1:
        command = [sys.executable, *module_args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   "--log-dir", str(logs), "--redirects", "3", *module_args]
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env["OMP_NUM_THREADS"] = str(threads_per_process)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)  # the launcher and its ranks: one process group to stop
    try:
        output, _ = proc.communicate(timeout=timeout_s)
        returncode: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        _stop(proc)
        output, _ = proc.communicate()
        returncode = None
    rank_logs = _rank_logs(logs) if nproc > 1 else {}
    if returncode != 0:
        raise DistributedRunError(_describe_failure(nproc, returncode, output, rank_logs, tail_chars),
                                  returncode, rank_logs, logs if nproc > 1 else None)
    return output if nproc == 1 else _rank_stdout(logs, 0)


# --------------------------------------------------------------------------------------------
# Notes for instructors with several GPUs
# --------------------------------------------------------------------------------------------

_NOTES = """\
Several GPUs: three ways up from this script (chapter 09)

1. torchrun + DDP, as here. One process per GPU, NCCL backend:
       torchrun --standalone --nproc_per_node=8 -m llm_course.train.distributed --global-batch 256 --steps 2000
   Keep --global-batch fixed when you change the number of GPUs and the loss curve stays the same
   (this module's test checks it on 2 CPU processes); each GPU then gets global_batch / n_gpus sequences.
   Several machines: the same command on each, with --nnodes=N --node_rank=i --rdzv_endpoint=HOST:PORT
   instead of --standalone.

2. Hugging Face accelerate. `accelerate launch` is a front end to torchrun; a script that already sets up
   DDP itself (like this one) runs under it unchanged:
       accelerate launch --multi_gpu --num_processes 8 -m llm_course.train.distributed --steps 2000
   (`accelerate config` writes the same choices to a YAML file once.) Scripts written with
   `accelerator = Accelerator(); model, optimizer = accelerator.prepare(model, optimizer)` and
   `accelerator.backward(loss)` get DDP, mixed precision (--mixed_precision bf16) and FSDP
   (--use_fsdp --fsdp_version 2) without changing the training loop; transformers' Trainer uses it inside.

3. FSDP (fully sharded data parallel, ZeRO-3). DDP keeps a full copy of the weights, gradients and AdamW
   state on every GPU (about 16 bytes per parameter in float32 with AdamW), so the model must fit on
   one GPU. FSDP shards all three over the GPUs and all-gathers each layer's weights just before it runs.
   In torch 2.x the API is FSDP2, `torch.distributed.fsdp.fully_shard` (it replaces the older
   `FullyShardedDataParallel` wrapper class):
       from torch.distributed.fsdp import fully_shard
       for block in model.h:          # shard each transformer block (one all-gather per block) ...
           fully_shard(block)
       fully_shard(model)             # ... then the rest (embeddings, final LayerNorm, tied head)
       optimizer = configure_optimizer(model, ...)   # built *after* sharding: the parameters are DTensors
   Call model(...) rather than model.forward(...) (the all-gathers run in hooks), and save with
   torch.distributed.checkpoint or gather a full state dict on rank 0. Mixed precision:
   fully_shard(..., mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)).
   For the course's small GPTs DDP is faster; FSDP pays off once weights + optimizer state outgrow one GPU.
"""


def notes() -> str:
    """Several GPUs: torchrun + DDP, ``accelerate launch``, FSDP2 (``fully_shard``). Chapter 09."""
    return _NOTES


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    d, t = DataParallelConfig(), TrainConfig()
    p = argparse.ArgumentParser(
        prog="python -m llm_course.train.distributed",
        description="Data-parallel (DDP) training of the course GPT. One process: "
                    "python -m llm_course.train.distributed; "
                    "several: torchrun --standalone --nproc_per_node=N -m llm_course.train.distributed.")
    p.add_argument("--steps", type=int, default=20, help="optimizer updates (default 20)")
    p.add_argument("--global-batch", type=int, default=d.global_batch,
                   help="sequences per micro-batch over all processes (a multiple of the world size)")
    p.add_argument("--block-size", type=int, default=d.block_size, help="tokens per sequence")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per update")
    p.add_argument("--n-layer", type=int, default=d.n_layer)
    p.add_argument("--n-embd", type=int, default=d.n_embd)
    p.add_argument("--n-head", type=int, default=d.n_head)
    p.add_argument("--data", choices=("synthetic", "docs"), default=d.data)
    p.add_argument("--vocab-size", type=int, default=d.vocab_size, help="synthetic data only")
    p.add_argument("--branching", type=int, default=d.branching, help="synthetic data: successors per token")
    p.add_argument("--tokens", type=int, default=d.n_tokens, help="length of the token stream")
    p.add_argument("--lr", type=float, default=t.lr)
    p.add_argument("--min-lr", type=float, default=t.min_lr)
    p.add_argument("--warmup", type=int, default=2, help="warmup steps (default 2)")
    p.add_argument("--weight-decay", type=float, default=t.weight_decay)
    p.add_argument("--grad-clip", type=float, default=t.grad_clip, help="0: no clipping")
    p.add_argument("--seed", type=int, default=t.seed)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--backend", choices=("auto", "gloo", "nccl"), default=d.backend,
                   help="auto: nccl on CUDA, gloo on the CPU")
    p.add_argument("--distributed", action="store_true",
                   help="require torchrun's environment (an error instead of a silent 1-process run)")
    p.add_argument("--timeout-s", type=float, default=d.timeout_s,
                   help="seconds a rank waits for the others before failing")
    p.add_argument("--log-interval", type=int, default=5, help="steps between log lines on rank 0 (0: silent)")
    p.add_argument("--out", type=Path, default=None, help="JSON file for the per-step records (rank 0)")
    p.add_argument("--save-dir", type=Path, default=None, help="save the trained model here (rank 0)")
    p.add_argument("--notes", action="store_true", help="print the notes on accelerate and FSDP, and exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see ``_parser``); returns the exit code. Chapter 09 (best practices).

    Bad settings print ``error: ...`` (one line per rank that hits it) and return 2, without a traceback.
    """
    args = _parser().parse_args(argv)
    if args.notes:
        print(notes())
        return 0
    try:
        env = read_dist_env(force=args.distributed)
        cfg = DataParallelConfig(
            global_batch=args.global_batch, block_size=args.block_size, n_layer=args.n_layer, n_embd=args.n_embd,
            n_head=args.n_head, data=args.data, vocab_size=args.vocab_size, branching=args.branching,
            n_tokens=args.tokens, backend=args.backend, timeout_s=args.timeout_s)
        train_cfg = TrainConfig(
            max_steps=args.steps, lr=args.lr, min_lr=min(args.min_lr, args.lr),
            warmup_steps=min(args.warmup, args.steps), weight_decay=args.weight_decay,
            grad_clip=args.grad_clip, grad_accum_steps=args.grad_accum, seed=args.seed, device=args.device,
            log_interval=args.log_interval, progress=False, live_plot=False)
        result = train_data_parallel(cfg, train_cfg, env, out=args.out, save_dir=args.save_dir)
    except ValueError as e:
        rank = os.environ.get("RANK")
        print(f"{'[rank ' + rank + '] ' if rank is not None else ''}error: {e}", file=sys.stderr, flush=True)
        return 2
    if env.rank == 0:
        losses = result["losses"]
        print(f"{env.world_size} process(es), {result['backend'] or 'no process group'} on {result['device']}: "
              f"loss {losses[0]:.4f} -> {losses[-1]:.4f} in {len(losses)} steps, {result['seconds']:.1f} s"
              + (f"; wrote {args.out}" if args.out else ""), flush=True)
    return 0


def _exit_worker(code: int) -> None:
    """End a torchrun rank at once, after flushing its output, without the interpreter's teardown.

    Why (chapter 09's flaky test, issue 23): DDP's gradient all-reduce runs on gloo's worker threads
    (``pt_gloo_runloop``), and each finished piece of work holds a copy of autograd's thread-local state,
    which holds Python objects. Whichever thread drops the work last must take the GIL to release them.
    ``destroy_process_group`` does not stop these threads while DDP's reducer still references the group
    (they are still listed in ``/proc/self/task`` after it). If a gloo thread drops a work while the main
    thread is already in the interpreter's teardown (``Py_FinalizeEx``), CPython ends that thread with
    ``pthread_exit``; its unwinding meets a ``noexcept`` C++ destructor and calls ``std::terminate``:
    "terminate called without an active exception", SIGABRT, after the run had finished and written its
    results. A core dump shows exactly that stack (``~AsyncAllreduceWork`` -> ``~ThreadLocalState`` ->
    ``gil_scoped_acquire`` -> ``take_gil`` -> ``PyThread_exit_thread`` -> ``std::terminate``); it hit about
    one 2-process run in 10-25 on a quiet 2-core machine. ``os._exit`` ends the process, threads and all,
    without that teardown, once every rank has passed the barrier at the end of ``train_data_parallel``
    and the results are on disk.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _code = main()
    if all(k in os.environ for k in TORCHRUN_ENV):  # a rank started by torchrun
        _exit_worker(_code)
    sys.exit(_code)
