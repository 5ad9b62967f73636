"""``torch.compile`` for decoding: a fixed-shape decode step, compiled once. Chapter 07 (inference).

``torch.compile(fn)`` does three things the first time ``fn`` runs:

1. **graph capture** (TorchDynamo): it runs the Python code symbolically and records the tensor
   operations into a graph (an FX graph), with *guards* (conditions on shapes, dtypes, Python values)
   under which the graph stays valid; a call that breaks a guard triggers a new compilation;
2. **lowering and fusion** (TorchInductor): chains of elementwise operations (add, GELU, LayerNorm's
   arithmetic, masking) are fused into one loop each, and on a CPU written out as C++ that a C
   compiler (gcc / clang, or MSVC on Windows) turns into a shared library; matrix multiplies still go
   to oneDNN / MKL;
3. every later call runs the compiled code: fewer, larger operations and far less Python.

The cost is the first call: seconds to minutes of compilation (``compile_seconds`` reports it),
paid again whenever a guard breaks. A decode step whose cache grows by one position per token breaks
a shape guard at every token, so ``StaticStep`` keeps every shape fixed, the way transformers'
``StaticCache`` does for ``torch.compile``: a preallocated cache of ``max_length`` slots, the new key
and value written into slot ``position`` (a tensor, not a Python number), and attention over all
slots with a mask that hides the ones not yet written. One compilation then serves the whole text::

    gen = StaticGenerator(model, batch_size=1, max_length=160)   # compiled on its first call
    ids = gen.generate(input_ids, max_new_tokens=128)            # then reused: one compilation
    ids = generate_static(model, input_ids, max_new_tokens=128, compile=False)  # the same step, eager

``compile_status()`` says whether ``torch.compile`` can run here: it needs torch >= 2.0, and its CPU
backend a C++ compiler (on Windows, Visual Studio's ``cl``, supported only in recent torch). Where it
cannot, ``maybe_compile`` warns with the reason and returns the eager function, so code runs either way.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_course.core.checks import check_bool, check_int, check_positive_int
from llm_course.core.runtime import eval_mode
from llm_course.infer.static_cache import StaticCacheDecoder
from llm_course.models.gpt import GPT

__all__ = ["compile_status", "maybe_compile", "StaticStep", "StaticGenerator", "generate_static"]

COMPILERS = ("g++", "clang++", "c++")  # what TorchInductor's CPU backend calls (or $CXX)


def compile_status() -> tuple[bool, str]:
    """Can ``torch.compile`` compile for the CPU here, and if not, why not. Chapter 07.

    Returns ``(True, the compiler found)`` or ``(False, the first thing missing and how to get it)``.
    Checks only: compiles nothing.
    """
    major, minor = (int(p) for p in torch.__version__.split(".")[:2])
    if (major, minor) < (2, 0) or not hasattr(torch, "compile"):
        return False, f"torch {torch.__version__} has no torch.compile (added in 2.0): pip install -U torch"
    if platform.system() == "Windows":
        if (major, minor) < (2, 6):
            return False, (f"torch {torch.__version__} cannot compile for the CPU on Windows (supported from "
                           "torch 2.6 with Visual Studio's C++ compiler): upgrade torch, or use Linux/WSL")
        if shutil.which("cl") is None:
            return False, ("no C++ compiler on PATH: torch.compile on Windows needs Visual Studio's cl.exe (run "
                           "from a 'Developer Command Prompt for VS', or install the Build Tools)")
        return True, "cl (MSVC)"
    wanted = [os.environ["CXX"]] if os.environ.get("CXX") else list(COMPILERS)
    for name in wanted:
        found = shutil.which(name)
        if found:
            return True, found
    return False, (f"no C++ compiler found (looked for {', '.join(wanted)} on PATH): torch.compile's CPU backend "
                   "writes C++ and compiles it. Install one (Debian/Ubuntu: apt-get install g++; conda: "
                   "conda install gxx_linux-64; macOS: xcode-select --install)")


def maybe_compile(fn: Callable, **options: Any) -> tuple[Callable, str]:
    """``(torch.compile(fn, **options), "compiled")`` where it can run, else ``(fn, the reason)``. Chapter 07.

    Where ``compile_status()`` says no, a ``UserWarning`` names the reason and the eager ``fn`` is
    returned unchanged: the caller's code runs either way, only slower. Compilation itself happens
    lazily, on the first call of the returned function.
    """
    if not callable(fn):
        raise TypeError(f"maybe_compile needs a function or nn.Module to compile, got {type(fn).__name__}")
    ready, why = compile_status()
    if not ready:
        warnings.warn(f"torch.compile cannot run here, using eager PyTorch: {why}", UserWarning, stacklevel=2)
        return fn, why
    return torch.compile(fn, **options), "compiled"


class StaticStep(nn.Module):
    """One decode step of a course ``GPT`` with every shape fixed. Chapter 07 (inference).

    ``step(token, position)``: ``token`` (B, 1) ids, ``position`` a (1,) long tensor (the same position
    for every row: unpadded prompts) -> (B, V) float logits. Keys and values live in two buffers of shape
    (layers, B, heads, max_length, head_dim); slot ``position`` is written in place and attention reads
    all ``max_length`` slots, the unwritten ones masked. ``fill(past, length)`` copies a prompt's cache
    (the model's own ``past_key_values``) into the first ``length`` slots.
    """

    def __init__(self, model: GPT, batch_size: int, max_length: int) -> None:
        super().__init__()
        if not StaticCacheDecoder.supports(model):
            raise TypeError("StaticStep needs a course GPT built from standard GPTBlocks (see "
                            "StaticCacheDecoder.supports); use llm_course.infer.generation.generate for other models")
        c = model.config
        check_positive_int("batch_size", batch_size)
        check_int("max_length", max_length, 1, c.n_positions, hint=f"at most the model's n_positions={c.n_positions}")
        self.model = model
        self.n_head, self.head_dim = c.n_head, c.n_embd // c.n_head
        weight = model.lm_head.weight
        shape = (c.n_layer, batch_size, self.n_head, max_length, self.head_dim)
        self.register_buffer("keys", torch.zeros(shape, dtype=weight.dtype, device=weight.device), persistent=False)
        self.register_buffer("values", torch.zeros_like(self.keys), persistent=False)
        self.register_buffer("slots", torch.arange(max_length, device=weight.device), persistent=False)

    def fill(self, past: tuple[tuple[torch.Tensor, torch.Tensor], ...], length: int) -> None:
        """Copy the prompt's keys and values, (B, H, length, D) per layer, into slots 0 .. length - 1."""
        for i, (k, v) in enumerate(past):
            self.keys[i, :, :, :length] = k
            self.values[i, :, :, :length] = v

    def forward(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        m, H, D = self.model, self.n_head, self.head_dim
        B = token.shape[0]
        x = m.wte(token) + m.wpe(position)  # (B, 1, C)
        visible = (self.slots <= position)[None, None, None, :]  # (1, 1, 1, max_length): written slots only
        for i, block in enumerate(m.h):
            q, k, v = block.attn.qkv_proj(block.ln_1(x)).view(B, 1, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)
            self.keys[i].index_copy_(2, position, k)  # (B, H, max_length, D): slot `position` written in place
            self.values[i].index_copy_(2, position, v)
            a = F.scaled_dot_product_attention(q, self.keys[i], self.values[i], attn_mask=visible,
                                               scale=block.attn.scale)  # (B, H, 1, D)
            x = x + block.attn.out_proj(a.transpose(1, 2).reshape(B, 1, H * D))
            x = x + block.mlp(block.ln_2(x))
        return m.lm_head(m.ln_f(x))[:, 0, :].float()  # (B, V)


class StaticGenerator:
    """Greedy decoding with one ``StaticStep``, compiled once and reused. Chapter 07 (inference).

    ``gen = StaticGenerator(model, batch_size, max_length)``, then ``gen.generate(input_ids, n)`` for
    any unpadded (batch_size, T) prompt with T + n <= max_length. ``compile=False`` (or no compiler, with
    a warning from ``maybe_compile``) runs the same step eagerly. The first ``generate`` pays the
    compilation; ``compile_seconds`` records it (the first step's time, compilation included).
    """

    def __init__(self, model: GPT, batch_size: int, max_length: int, compile: bool = True,
                 options: dict[str, Any] | None = None) -> None:
        check_bool("compile", compile)
        self.model = model
        self.step = StaticStep(model, batch_size, max_length)
        self.compiled = False
        self.run: Callable = self.step
        if compile:
            self.run, why = maybe_compile(self.step, dynamic=False, options=options)
            self.compiled = why == "compiled"
        self.compile_seconds: float | None = None

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """(B, T) prompt -> (B, T + max_new_tokens) greedy ids; the prompt runs through the eager forward."""
        check_int("max_new_tokens", max_new_tokens, minimum=0)
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype != torch.long or input_ids.ndim != 2:
            raise TypeError("input_ids must be a (batch, seq_len) LongTensor of token ids")
        B, T = input_ids.shape
        limit = self.step.keys.shape[3]
        if B != self.step.keys.shape[1] or T + max_new_tokens > limit:
            raise ValueError(f"a prompt of shape {(B, T)} plus max_new_tokens ({max_new_tokens}) does not fit this "
                             f"generator (batch {self.step.keys.shape[1]}, max_length {limit}): make one with "
                             "StaticGenerator(model, batch_size, max_length)")
        if max_new_tokens == 0:
            return input_ids
        with eval_mode(self.model):
            out = self.model(input_ids, use_cache=True)  # the prompt: (B, T, V) logits and its cache
            self.step.fill(out.past_key_values, T)
            next_id = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)  # (B, 1)
            ids = [input_ids, next_id]
            for t in range(T, T + max_new_tokens - 1):
                t0 = time.perf_counter()
                next_id = self.run(next_id, torch.tensor([t], device=input_ids.device)).argmax(dim=-1, keepdim=True)
                if self.compile_seconds is None:
                    self.compile_seconds = time.perf_counter() - t0
                ids.append(next_id)
        return torch.cat(ids, dim=1)


def generate_static(model: GPT, input_ids: torch.Tensor, max_new_tokens: int, compile: bool = True) -> torch.Tensor:
    """Greedy decoding with a fixed-shape step, compiled where ``torch.compile`` can run. Chapter 07.

    ``input_ids``: (B, T) unpadded prompts. Returns (B, T + max_new_tokens) ids, the same as
    ``llm_course.infer.generation.generate(model, input_ids, max_new_tokens=...)``. Each call compiles
    a new step (seconds): to decode many texts, keep a ``StaticGenerator``.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype != torch.long or input_ids.ndim != 2:
        raise TypeError("input_ids must be a (batch, seq_len) LongTensor of token ids")
    check_int("max_new_tokens", max_new_tokens, minimum=0)
    B, T = input_ids.shape
    if T + max_new_tokens > model.config.n_positions:
        raise ValueError(f"the prompt ({T} tokens) plus max_new_tokens ({max_new_tokens}) is more than the model's "
                         f"n_positions={model.config.n_positions}: shorten the prompt or ask for fewer tokens")
    return StaticGenerator(model, B, T + max_new_tokens, compile=compile).generate(input_ids, max_new_tokens)
