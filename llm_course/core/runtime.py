"""Small utilities every chapter uses: device choice and reproducible seeding.

Chapter 01 (setting up). A notebook calls ``get_device()`` once and ``seed_everything(SEED)``
before anything random happens; with the same seed a CPU run is bitwise reproducible.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import numpy as np
import torch

__all__ = ["get_device", "seed_everything", "describe_device"]

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
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
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
