"""The training loop, written out: from a model and a stream of batches to a trained model. Chapter 04.

Not a framework: one function, ``train``, does what nanoGPT's ``train.py`` does, and each piece it uses
is a small function you can call on its own::

    for step in 1 .. max_steps:
        lr = lr_at(step, cfg)                              # linear warmup, then cosine decay to min_lr
        for k in range(grad_accum_steps):                  # gradient accumulation:
            loss = model(**get_batch(i)).loss / grad_accum_steps   # i = index of the micro-batch
            loss.backward()                                #   grads add up to those of one big batch
        grad_norm = clip_grad_norm_(params, grad_clip)     # the norm *before* clipping is logged
        optimizer.step(); optimizer.zero_grad()            # AdamW, weight decay on matrices only
        every eval_interval steps: estimate_loss(...)      # held-out loss, perplexity, bits per char
        every checkpoint_interval steps: save_checkpoint(...)   # safetensors, written atomically

A checkpoint holds everything the next step depends on: the weights, AdamW's moment estimates, the step
(the learning rate is a pure function of it, so there is no scheduler object to save) and the random
number generators (torch CPU/CUDA, Python, NumPy and the generator your batches are drawn from). A run
stopped at step N and resumed from its checkpoint therefore produces bitwise the same losses, on the
CPU, as one that never stopped. Nothing is pickled: ``torch.save``/``torch.load`` files can run arbitrary
code when loaded, so checkpoints are safetensors files with a JSON header.

Where the manual's loops go wrong (ERRATA section 4): ``optimizer`` is an undefined global, there is no
learning-rate warmup or decay, no gradient clipping, no evaluation on held-out text, nothing is saved,
and a NaN loss trains on silently. (The double-shifted labels are fixed in the model: ``GPT`` shifts
once, see ``llm_course.gpt.causal_lm_loss``.)

Notebook use::

    import torch
    from llm_course.gpt import GPT, GPTConfig
    from llm_course.objectives import random_blocks
    from llm_course.training import TrainConfig, train

    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_positions=128, n_embd=128, n_layer=4, n_head=4))
    cfg = TrainConfig(max_steps=600, lr=1e-3, warmup_steps=60, eval_interval=100,
                      chars_per_token=len(val_text) / len(val_ids), checkpoint_dir="runs/ch04")
    train_gen = torch.Generator().manual_seed(0)           # the data's own RNG, saved in checkpoints
    get_batch = lambda i: random_blocks(train_ids, 16, 128, train_gen)
    # held-out batches fixed by their index: every evaluation sees the same ones, so points compare
    get_val_batch = lambda i: random_blocks(val_ids, 16, 128, torch.Generator().manual_seed(i))
    result = train(model, get_batch, cfg, evaluate=get_val_batch, generator=train_gen)
    # kernel died at step 400? Rebuild model and generator, then continue where the checkpoint left off:
    result = train(model, get_batch, cfg, evaluate=get_val_batch, generator=train_gen,
                   resume_from="runs/ch04")
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .objectives import bits_per_char, count_targets, perplexity
from .utils import get_device, seed_everything

__all__ = [
    "TrainConfig",
    "TrainResult",
    "NonFiniteLossError",
    "Checkpoint",
    "CHECKPOINT_NAME",
    "configure_optimizer",
    "lr_at",
    "estimate_loss",
    "save_checkpoint",
    "load_checkpoint",
    "plot_history",
    "LossPlot",
    "in_notebook",
    "train",
    "PRECISIONS",
    "check_precision",
    "resolve_precision",
    "autocast_context",
]

CHECKPOINT_NAME = "checkpoint.safetensors"  # the file train() writes inside cfg.checkpoint_dir
_FORMAT_KEY = "llm_course.checkpoint"  # safetensors metadata key holding the checkpoint's JSON part
_FORMAT_VERSION = 1

Batch = Mapping[str, torch.Tensor]  # e.g. {"input_ids": (B, T), "labels": (B, T)}: the model's kwargs
BatchSource = Callable[[int], Batch] | Iterable[Batch]
Callback = Callable[[dict, "TrainResult"], "bool | None"]


# --------------------------------------------------------------------------------------------
# Precision (chapter 09 explains it; the loop below uses it so a GPU trains in bf16/fp16)
# --------------------------------------------------------------------------------------------

PRECISIONS = ("fp32", "bf16", "fp16")
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: Any, device: torch.device) -> None:
    """A clear error for a precision the device cannot train in. Chapter 09 (best practices)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(
            f"fp16 mixed precision needs a CUDA GPU (with torch.amp.GradScaler('cuda')); the device is "
            f"{device.type!r}. On the CPU use precision='bf16', which needs no loss scaling"
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU has no bf16 support (it needs compute capability >= 8.0); use precision='fp16'")
    if precision != "fp32" and device.type not in ("cpu", "cuda"):
        raise ValueError(f"mixed precision is supported on the 'cpu' and 'cuda' devices, got {device.type!r}; "
                         "use precision='fp32'")


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """``"auto"`` -> bf16 on a GPU that has it (A100, H100, L4), fp16 on an older one (Colab's T4, V100),
    fp32 on a CPU or Apple GPU; any other value is checked and returned. Chapter 09 (best practices)."""
    device = torch.device(device)
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    check_precision(precision, device)
    return precision


def autocast_context(precision: str, device: str | torch.device = "cpu") -> contextlib.AbstractContextManager:
    """The ``with`` block for a forward pass in ``precision``. Chapter 09 (best practices).

    fp32: nothing (a null context). bf16 / fp16: ``torch.autocast(device_type, dtype)``, the current
    spelling of the manual's deprecated ``torch.cuda.amp.autocast()``.
    """
    device = torch.device(device)
    check_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AMP_DTYPES[precision])


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
        def check_int(name: str, minimum: int) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"TrainConfig.{name} must be an integer >= {minimum}, got {value!r}")

        for name, minimum in [("max_steps", 1), ("warmup_steps", 0), ("grad_accum_steps", 1),
                              ("eval_interval", 1), ("eval_steps", 1), ("log_interval", 0),
                              ("checkpoint_interval", 0)]:
            check_int(name, minimum)
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) cannot exceed max_steps ({self.max_steps})")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr!r}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"TrainConfig.min_lr must be in [0, lr={self.lr}], got {self.min_lr!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"TrainConfig.betas must be two numbers in [0, 1), e.g. (0.9, 0.95), got {self.betas!r}")
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        if self.grad_clip is not None and not self.grad_clip >= 0:
            raise ValueError(f"TrainConfig.grad_clip must be > 0 (or None / 0 for no clipping), got {self.grad_clip!r}")
        if self.chars_per_token is not None and not self.chars_per_token > 0:
            raise ValueError(f"TrainConfig.chars_per_token must be > 0, e.g. len(val_text) / len(val_ids), "
                             f"got {self.chars_per_token!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"TrainConfig.seed must be a non-negative integer or None, got {self.seed!r}")
        if self.precision not in (*PRECISIONS, "auto"):
            raise ValueError(f"TrainConfig.precision must be one of {(*PRECISIONS, 'auto')}, got {self.precision!r}")


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
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    if step < cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    # 0 -> 1 over the decay, then held at 1 (max(1, ...): warmup_steps == max_steps leaves no decay phase)
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


# --------------------------------------------------------------------------------------------
# Batches and evaluation
# --------------------------------------------------------------------------------------------


def _batch_source(data: BatchSource, skip: int = 0, what: str = "get_batch") -> Callable[[int], Batch]:
    """``get_batch(i)`` for a callable or an iterable of batches; an iterable is read in order.

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


def _to_device(batch: Any, device: torch.device, i: int, what: str) -> dict[str, torch.Tensor]:
    """Check that a batch is a dict of tensors (the model's keyword arguments) and move it to ``device``."""
    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        got = f"a dict with keys {sorted(batch)}" if isinstance(batch, Mapping) else type(batch).__name__
        raise TypeError(f"{what}({i}) must return a dict like {{'input_ids': ..., 'labels': ...}} (the model's "
                        f"keyword arguments), got {got}")
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _model_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``model(**batch).loss``, with a clear error when the model computed none."""
    loss = getattr(model(**batch), "loss", None)
    if loss is None:
        raise ValueError("the model returned no loss: the batches need 'labels' (for causal LM: labels = "
                         "input_ids, unshifted)")
    return loss


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def estimate_loss(
    model: nn.Module,
    get_batch: BatchSource,
    num_batches: int | None = None,
    chars_per_token: float | None = None,
    n_chars: int | None = None,
) -> dict[str, float]:
    """Mean loss on held-out batches, its perplexity and bits per character. Chapter 04 (pretraining).

    ``get_batch``: ``get_batch(i) -> dict`` for i = 0..num_batches-1, or a re-iterable of batches (its
    first ``num_batches``, or all of them when None, e.g. ``list(sequential_blocks(val_ids, 8, 128))``). The mean is
    weighted by the number of scored tokens (``count_targets``), so a short last batch counts for less.
    Bits per character: ``chars_per_token`` (characters per token of this text) gives
    ``loss / (chars_per_token * ln 2)``; ``n_chars`` (the characters the batches cover, when they cover a
    whole text once) gives ``total nats / (n_chars * ln 2)``. Runs in eval mode (dropout off) and restores
    the model's mode afterwards. Returns ``{"loss", "perplexity", "tokens"[, "bits_per_char"]}``.
    """
    if num_batches is None and callable(get_batch):
        raise ValueError("num_batches is needed with a callable get_batch(i) (it has no end)")
    if not callable(get_batch) and iter(get_batch) is get_batch:
        raise TypeError("evaluation batches must be a callable get_batch(i) or a re-iterable (e.g. a list), "
                        "not a one-shot iterator: it would be used up by the first evaluation")
    source = get_batch if callable(get_batch) else iter(get_batch)
    device, was_training = _model_device(model), model.training
    model.eval()
    total_nats, total_tokens, i = 0.0, 0, 0
    try:
        while num_batches is None or i < num_batches:
            if callable(source):
                raw = source(i)
            else:
                raw = next(source, None)
                if raw is None:  # the end of the list: fewer than num_batches is fine
                    break
            batch = _to_device(raw, device, i, "evaluate")
            n = count_targets(batch["labels"]) if "labels" in batch else 0
            total_nats += float(_model_loss(model, batch)) * n  # the model's loss is a mean over n tokens
            total_tokens += n
            i += 1
    finally:
        model.train(was_training)
    if total_tokens == 0:
        raise ValueError("the evaluation batches contain no scored tokens (all labels are -100?)")
    loss = total_nats / total_tokens
    metrics = {"loss": loss, "perplexity": perplexity(loss), "tokens": total_tokens}
    if chars_per_token is not None:
        metrics["bits_per_char"] = loss / (chars_per_token * math.log(2))
    if n_chars is not None:
        metrics["bits_per_char"] = bits_per_char(total_nats, n_chars)
    return metrics


# --------------------------------------------------------------------------------------------
# Checkpoints: safetensors for the tensors, JSON (in the safetensors header) for everything else
# --------------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """What ``load_checkpoint`` returns besides the restored objects. Chapter 04 (pretraining).

    step: updates done when it was saved. extra: the JSON-able dict given to ``save_checkpoint``
    (``train`` keeps its history there). path: the file it was read from.
    """

    step: int
    extra: dict[str, Any]
    path: Path


def _model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with each tensor once: a tied weight is stored under its first name only."""
    out, seen = {}, set()
    for name, t in model.state_dict(keep_vars=True).items():  # keep_vars: the Parameter objects themselves
        if id(t) not in seen:
            seen.add(id(t))
            out[name] = t.detach()
    return out


def _optimizer_param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    """The model's name of every parameter in the optimizer, group by group."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    groups = []
    for group in optimizer.param_groups:
        if any(id(p) not in name_of for p in group["params"]):
            raise ValueError("the optimizer holds a parameter that is not in the model; build it with "
                             "configure_optimizer(model, ...) for this model")
        groups.append([name_of[id(p)] for p in group["params"]])
    return groups


def _json_safe(value: Any) -> Any:
    """Tuples to lists, tensors and NumPy numbers to Python numbers, paths to str (for a checkpoint's JSON)."""
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return value


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    step: int,
    extra: dict[str, Any] | None = None,
    generator: torch.Generator | None = None,
) -> Path:
    """Save everything needed to resume training, as one safetensors file. Chapter 04 (pretraining).

    Tensors: ``model.<name>`` (weights; tied ones once), ``optimizer.<param name>.<key>`` (AdamW's
    ``exp_avg``, ``exp_avg_sq``, ``step``), ``rng.torch_cpu``, ``rng.torch_cuda.<i>`` and ``rng.generator``
    (the state of the ``generator`` that batches are drawn from). The rest is JSON in the file's header:
    the step, the optimizer's hyper-parameters, Python's and NumPy's RNG states and ``extra``.
    The file is written beside ``path`` under a temporary name and renamed over it with ``os.replace``
    (atomic): a crash in the middle of a save leaves the previous checkpoint intact.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    tensors = {f"model.{k}": v for k, v in _model_tensors(model).items()}
    meta: dict[str, Any] = {"version": _FORMAT_VERSION, "step": step, "extra": _json_safe(extra or {})}
    config = getattr(model, "config", None)
    if dataclasses.is_dataclass(config):
        meta["model_config"] = _json_safe(dataclasses.asdict(config))  # for information only

    if optimizer is not None:
        names = _optimizer_param_names(model, optimizer)
        state = optimizer.state_dict()  # {"state": {index: {key: value}}, "param_groups": [...]}
        flat_names = [n for group in names for n in group]  # the optimizer numbers parameters in this order
        scalars: dict[str, dict[str, Any]] = {}
        for index, values in state["state"].items():
            for key, value in values.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optimizer.{flat_names[index]}.{key}"] = value
                else:
                    scalars.setdefault(flat_names[index], {})[key] = _json_safe(value)
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": group_names}
                  for g, group_names in zip(state["param_groups"], names)]
        meta["optimizer"] = {"class": type(optimizer).__name__, "param_groups": _json_safe(groups),
                             "scalars": scalars}

    # Random number generators: the dropout masks and the batches of the next step depend on them.
    tensors["rng.torch_cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.torch_cuda.{i}"] = s
    if generator is not None:
        tensors["rng.generator"] = generator.get_state()
    version, mt_state, gauss = random.getstate()
    np_state = np.random.get_state()
    meta["rng"] = {"python": [version, list(mt_state), gauss],
                   "numpy": [np_state[0], np_state[1].tolist(), *(_json_safe(x) for x in np_state[2:])]}

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    metadata = {"format": "pt", _FORMAT_KEY: json.dumps(meta)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # on disk before the rename, so a power cut cannot leave an empty file
        os.replace(tmp, path)  # atomic: readers see the old checkpoint or the new one, never half of one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


_PICKLE_HELP = (
    "It looks like a pickle file (torch.save). This course never unpickles: loading a pickle can run "
    "arbitrary code hidden in the file. To convert a file you trust: "
    "state = torch.load(path, weights_only=True); safetensors.torch.save_file(state, 'model.safetensors')"
)


def _read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the JSON header of a checkpoint, with clear errors for everything else."""
    from safetensors import safe_open

    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; pass the file (or the checkpoint_dir) that "
                                "save_checkpoint()/train() wrote")
    with open(path, "rb") as f:
        head = f.read(8)
    # torch.save writes a zip archive ("PK\x03\x04") or, in old versions, a raw pickle (0x80, protocol)
    if head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
        raise ValueError(f"{path} is not a safetensors checkpoint. {_PICKLE_HELP}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error type for truncated or corrupt files
        raise ValueError(f"{path} is not a valid safetensors file ({e}): it is truncated or corrupt (an "
                         "interrupted copy?); use an earlier checkpoint") from e
    if _FORMAT_KEY not in metadata:
        raise ValueError(f"{path} is a safetensors file but not a training checkpoint (no {_FORMAT_KEY!r} "
                         "header); model weights saved with save_pretrained() load with from_pretrained()")
    try:
        meta = json.loads(metadata[_FORMAT_KEY])
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: the checkpoint's JSON header is corrupt ({e})") from e
    return tensors, meta


def _load_optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module, tensors: dict[str, torch.Tensor],
                          meta: dict[str, Any]) -> None:
    """Rebuild ``optimizer.state_dict()`` from the flat tensors (named by parameter) and load it."""
    saved = meta["optimizer"]  # load_checkpoint has checked that it exists and matches the optimizer
    names = _optimizer_param_names(model, optimizer)
    per_param: dict[str, dict[str, Any]] = {}  # "optimizer.h.0.ln_1.weight.exp_avg" -> [name][exp_avg]
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            name, state_key = key[len("optimizer."):].rsplit(".", 1)
            per_param.setdefault(name, {})[state_key] = value
    for name, values in saved["scalars"].items():
        per_param.setdefault(name, {}).update(values)
    flat_names = [n for group in names for n in group]  # the optimizer numbers parameters in this order
    state = {index: per_param[name] for index, name in enumerate(flat_names) if name in per_param}
    groups, start = [], 0
    for g in saved["param_groups"]:
        n = len(g["params"])
        hyper = {k: tuple(v) if isinstance(v, list) else v for k, v in g.items()}  # JSON made betas a list
        groups.append({**hyper, "params": list(range(start, start + n))})
        start += n
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Put every random number generator back where it was when the checkpoint was saved."""
    torch.set_rng_state(tensors["rng.torch_cpu"])
    cuda = [tensors[f"rng.torch_cuda.{i}"] for i in range(torch.cuda.device_count())
            if f"rng.torch_cuda.{i}" in tensors] if torch.cuda.is_available() else []
    if cuda:
        torch.cuda.set_rng_state_all(cuda)
    version, mt_state, gauss = meta["rng"]["python"]
    random.setstate((version, tuple(mt_state), gauss))
    name, keys, pos, has_gauss, cached = meta["rng"]["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
    restore_rng: bool = True,
) -> Checkpoint:
    """Restore a ``save_checkpoint`` file into ``model`` (and ``optimizer``, ``generator``). Chapter 04.

    ``path``: the file, or the directory holding ``checkpoint.safetensors``. With ``restore_rng`` the
    torch, Python and NumPy random generators are set back too, so training continues exactly as if it
    had never stopped. Clear errors (FileNotFoundError / ValueError) for a missing file, a truncated or
    corrupt one, a pickle file (refused: unpickling can run code), or a checkpoint of another model
    (names or shapes that do not match). Nothing is changed unless the whole file checks out.
    """
    path = Path(path)
    tensors, meta = _read_checkpoint(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    expected = _model_tensors(model)
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path} is a checkpoint of a different model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}; build the model with the config it was trained with")
    wrong = [f"{k}: {tuple(weights[k].shape)} in the file vs {tuple(v.shape)} in the model"
             for k, v in expected.items() if weights[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{path} has tensors whose shapes do not match the model ({'; '.join(wrong[:3])}); "
                         "build the model with the config it was trained with (see its 'model_config')")
    if generator is not None and "rng.generator" not in tensors:
        raise ValueError(f"{path} holds no data-generator state (it was saved without generator=...)")

    if optimizer is not None and meta.get("optimizer") is None:
        raise ValueError(f"{path} holds no optimizer state (saved with optimizer=None); pass optimizer=None")
    if optimizer is not None and _optimizer_param_names(model, optimizer) != [
            g["params"] for g in meta["optimizer"]["param_groups"]]:
        raise ValueError(f"{path}: the optimizer's parameter groups do not match the checkpoint's (trainable "
                         "parameters or weight-decay groups differ); build it with configure_optimizer()")

    model.load_state_dict(weights, strict=False)  # strict=False: a tied weight comes back through its twin
    if optimizer is not None:
        _load_optimizer_state(optimizer, model, tensors, meta)
    if restore_rng:
        _restore_rng(tensors, meta)
    if generator is not None:
        generator.set_state(tensors["rng.generator"])
    return Checkpoint(step=int(meta["step"]), extra=meta.get("extra", {}), path=path)


# --------------------------------------------------------------------------------------------
# Watching the run: a loss plot that updates in place in a notebook
# --------------------------------------------------------------------------------------------


def in_notebook() -> bool:
    """True inside a Jupyter (or Colab) kernel, False in a terminal, a script or pytest. Chapter 04."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ in ("ZMQInteractiveShell", "Shell")  # Jupyter, Colab


def plot_history(result: TrainResult, ax: Any = None) -> Any:
    """Training loss per step and held-out loss at each evaluation, on a Matplotlib Axes. Chapter 04.

    Draws on ``ax`` (a new ``Figure``'s axes if None, without pyplot) and returns the Axes.
    """
    if ax is None:
        from matplotlib.figure import Figure

        ax = Figure(figsize=(7, 3.5)).add_subplot()
    ax.plot([h["step"] for h in result.history], [h["loss"] for h in result.history],
            lw=1, alpha=0.8, label="train loss")
    if result.evals:
        ax.plot([e["step"] for e in result.evals], [e["loss"] for e in result.evals],
                "o-", label="held-out loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


class LossPlot:
    """A live loss curve for ``train``: redrawn in place in a notebook, a no-op elsewhere. Chapter 04.

    Called like a callback, ``plot(record, result)``; it redraws every ``every`` steps and after each
    evaluation. The figure is rendered to PNG and shown with ``IPython.display.display(...,
    display_id=True)``; later frames replace it through the display handle's ``update``, so the notebook
    keeps one image instead of hundreds.
    """

    def __init__(self, every: int = 10, enabled: bool | None = None) -> None:
        self.every = max(1, every)
        self.enabled = in_notebook() if enabled is None else enabled
        self.handle: Any = None  # IPython's DisplayHandle, once the first frame is shown

    def __call__(self, record: dict, result: TrainResult) -> None:
        if self.enabled and (record["step"] % self.every == 0 or "eval" in record):
            self.update(result)

    def update(self, result: TrainResult) -> None:
        """Draw ``result``'s history now (first call: show it; later calls: replace it)."""
        if not self.enabled or not result.history:
            return
        from IPython.display import Image, display

        from .widgets import figure_to_png

        ax = plot_history(result)
        ax.set_title(f"step {result.step}: train loss {result.history[-1]['loss']:.3f}")
        image = Image(data=figure_to_png(ax.figure, dpi=80))
        if self.handle is None:
            self.handle = display(image, display_id=True)
        else:
            self.handle.update(image)


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
    next_batch = _batch_source(get_batch, skip=result.step * accum)
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
                batch = _to_device(next_batch(i), device, i, "get_batch")
                with autocast_context(precision, device):  # fp32: nothing; bf16/fp16: torch.autocast
                    loss = _model_loss(model, batch) / accum  # so the summed gradient is the mean's
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
