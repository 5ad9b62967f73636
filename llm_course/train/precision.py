"""Mixed precision for training: which precisions a device can train in and the autocast context. Chapter 09.

``PRECISIONS`` are "fp32", "bf16" and "fp16". ``resolve_precision("auto", device)`` picks bf16 on a GPU
that has it (A100, H100, L4), fp16 on an older one (T4, V100), fp32 on a CPU; ``check_precision`` gives a
clear error for a precision the device cannot train in (fp16 needs CUDA and a GradScaler). The forward
pass runs under ``autocast_context(precision, device)``: ``torch.autocast`` for bf16/fp16, nothing for
fp32; weights and AdamW's state stay fp32. The training loop (``train.loop``, chapter 04) uses it so that a
GPU trains in bf16/fp16; chapter 09 explains and measures it.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from llm_course.core.checks import check_choice

__all__ = ["PRECISIONS", "check_precision", "resolve_precision", "autocast_context"]


# --------------------------------------------------------------------------------------------
# Which precision, and the autocast context
# --------------------------------------------------------------------------------------------

PRECISIONS = ("fp32", "bf16", "fp16")
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: Any, device: torch.device) -> None:
    """A clear error for a precision the device cannot train in. Chapter 09 (best practices)."""
    check_choice("precision", precision, PRECISIONS)
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
