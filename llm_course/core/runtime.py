"""Where the code runs and how it starts: device choice, seeds, eval mode, batches on the device.

The lowest layer's runtime helpers, used from chapter 01 on. A notebook calls ``get_device()`` once and
``seed_everything(SEED)`` before anything random happens; with the same seed a CPU run is bitwise
reproducible. Every module that measures a model (a held-out loss, generation, attention maps) runs it
under ``with eval_mode(model):`` (dropout off, the previous train/eval state of every submodule restored
afterwards), finds the model's device with ``module_device`` and moves a batch there with ``to_device``.
``quiet_loading`` hides transformers' progress bar while a local checkpoint loads. ``release_memory``
gives the memory of deleted objects back to the operating system before a memory-hungry step (chapter 09).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import os
import random
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from llm_course.core.checks import check_int

__all__ = ["get_device", "seed_everything", "describe_device", "quiet_loading", "quiet_transformers", "eval_mode",
           "train_mode", "module_device", "to_device", "resident_mb", "release_memory"]

_VALID_DEVICES = ("auto", "cpu", "cuda", "mps")


@contextlib.contextmanager
def quiet_loading(local: bool = True) -> Iterator[None]:
    """Hide transformers' "Loading weights" progress bar while loading local files. Chapter 04.

    A local checkpoint loads in milliseconds: the bar is noise in a notebook. ``local=False`` (a Hub
    download) keeps it, since there it shows real progress.
    """
    from transformers.utils import logging as hf_logging

    quiet = local and hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' informational warnings for a block (errors still show). Chapter 05.

    While the ``Trainer`` runs on a GPT-2-style model they are all benign: the pad token set on the
    tokenizer is copied into the config ("new PAD/BOS/EOS tokens"), ``loss_type=None`` means the default
    causal-LM loss, and the tied ``lm_head`` is stored once, so reloading the best checkpoint reports it
    "missing". Also a decorator: ``@quiet_transformers()``.
    """
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def get_device(preference: str | torch.device | None = "auto") -> torch.device:
    """Pick the device a notebook runs on. Chapter 01.

    ``"auto"`` (or ``None``) prefers CUDA, then Apple's MPS, then the CPU. The environment
    variable ``LLM_COURSE_DEVICE`` overrides ``"auto"`` (handy in CI or on a shared GPU).
    Asking for a device that is not available is an error, not a silent fallback: a student
    who asked for ``"cuda"`` should learn that the machine has none.
    """
    if isinstance(preference, torch.device):
        preference = str(preference)
    pref = (preference or "auto").strip().lower()
    if pref == "auto":
        pref = os.environ.get("LLM_COURSE_DEVICE", "auto").strip().lower() or "auto"
    base = pref.split(":")[0]
    if base not in _VALID_DEVICES:
        raise ValueError(
            f"unknown device {preference!r}: use one of {', '.join(_VALID_DEVICES)} "
            "(optionally with an index, e.g. 'cuda:1')"
        )
    mps_ok = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if base == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_ok:
            return torch.device("mps")
        return torch.device("cpu")
    if base == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {pref!r} was requested but this machine has no CUDA GPU "
            "(torch.cuda.is_available() is False); use DEVICE='auto' or 'cpu'"
        )
    if base == "mps" and not mps_ok:
        raise ValueError(
            "device 'mps' was requested but Apple's Metal backend is not available here; "
            "use DEVICE='auto' or 'cpu'"
        )
    return torch.device(pref)


def seed_everything(seed: int, deterministic: bool = True) -> int:
    """Seed Python, NumPy and torch (CPU and CUDA). Chapter 01.

    With ``deterministic=True`` torch is also asked for deterministic algorithms
    (``warn_only`` so that an op without a deterministic version warns instead of failing);
    on the CPU this makes two runs with the same seed bitwise identical. Returns the seed.
    """
    seed = check_int("seed", seed, minimum=0)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        # cuBLAS needs this to be deterministic; harmless on the CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        if torch.backends.cudnn.is_available():
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
    return seed


def describe_device(device: torch.device | None = None) -> str:
    """One line naming the device and what it supports (bf16, its memory). Chapter 01."""
    device = device or get_device()
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        bf16 = torch.cuda.is_bf16_supported()
        return f"cuda: {p.name}, {p.total_memory / 2**30:.1f} GiB, bf16={'yes' if bf16 else 'no'}"
    if device.type == "mps":
        return "mps: Apple GPU (Metal)"
    return f"cpu: {os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads"


# --------------------------------------------------------------------------------------------
# A model in eval mode, a batch on the model's device
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _module_mode(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    """Set ``model`` to train (True) or eval (False) mode for a block; then every submodule's own mode back."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    modes = [(module, module.training) for module in model.modules()]
    model.train(training)
    try:
        yield model
    finally:
        for module, was_training in modes:
            module.training = was_training  # the flag itself: module.train() would also set the children


def eval_mode(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """Run a block with ``model`` in eval mode, then restore every submodule's own mode. Chapter 04.

    ``with eval_mode(model): loss = model(**batch).loss`` switches dropout off for the block. Afterwards
    (also when the block raises) each submodule gets back exactly the ``training`` flag it had before,
    so a model with some parts frozen in eval mode (e.g. a LoRA base) is left as it was; a plain
    ``model.train(was_training)`` would set every submodule to the top module's mode. Gradients are
    not switched off: add ``torch.no_grad()`` where none are needed. Yields the model.
    """
    return _module_mode(model, False)


def train_mode(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """Run a block with ``model`` in train mode, then restore every submodule's own mode. Chapter 06.

    The twin of ``eval_mode``, for code that trains or measures a training step on a model it was
    handed (``finetuning_costs.measure_finetuning``, ``practices.activation_memory``) and must give
    it back in the mode it came in. Yields the model.
    """
    return _module_mode(model, True)


def module_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (its buffers' if it has none, else the CPU). Chapter 04.

    Where the batches for ``model`` must go: ``to_device(batch, module_device(model))``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def to_device(batch: Any, device: torch.device | str, what: str = "the batch") -> dict[str, Any]:
    """Check that a batch is a dict of the model's keyword arguments and move its tensors to ``device``. Chapter 04.

    ``batch``: e.g. ``{"input_ids": (B, T), "labels": (B, T)}``; it must hold ``input_ids``. Values that
    are not tensors are kept as they are. ``what`` names the batch in the error message, e.g.
    ``"get_batch(3)"``. Returns a new dict; the input is not changed.
    """
    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        got = f"a dict with keys {sorted(batch)}" if isinstance(batch, Mapping) else type(batch).__name__
        raise TypeError(f"{what} must be a dict like {{'input_ids': ..., 'labels': ...}} (the model's keyword "
                        f"arguments), got {got}")
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# --------------------------------------------------------------------------------------------
# Giving memory back before a memory-hungry step
# --------------------------------------------------------------------------------------------


def resident_mb() -> float | None:
    """This process's resident set size in MiB (what the operating system has given it), or None where
    it cannot be read (no ``/proc`` and no ``psutil``). Chapter 09 (best practices)."""
    try:
        with open("/proc/self/statm") as f:  # Linux: size, resident, ... in pages
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process().memory_info().rss / 2**20


def _glibc() -> Any:
    """The C library when it is glibc (it has ``malloc_trim``), else None (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def release_memory() -> dict[str, Any]:
    """Collect garbage, then hand the freed heap pages back to the operating system. Chapter 09.

    ``del model`` frees a tensor's storage, but many small Python and torch allocations live in the C
    library's heap, and glibc keeps freed heap pages for later use: the process's resident size (what a
    container's memory limit counts, e.g. Binder's 2 GB) barely moves. This runs ``gc.collect()`` (objects
    kept alive only by reference cycles) and then glibc's ``malloc_trim(0)``, which returns every whole free
    page of every heap to the system. Delete what you no longer need first: memory still referenced stays.
    Elsewhere than glibc (macOS, Windows) only the collection runs; ``trimmed`` says which.

    Returns ``{"rss_mb_before", "rss_mb_after", "freed_mb", "trimmed"}`` (sizes None where the resident
    size cannot be read).
    """
    before = resident_mb()
    gc.collect()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)  # returns 1 if it gave memory back, 0 if there was none to give
    after = resident_mb()
    freed = None if before is None or after is None else round(before - after, 1)
    return {"rss_mb_before": None if before is None else round(before, 1),
            "rss_mb_after": None if after is None else round(after, 1), "freed_mb": freed, "trimmed": libc is not None}
