"""Attention: the one operation every transformer is built around. Chapter 03 (attention).

Everything in this file works on tensors of these shapes (the names are used in every comment):

    B  batch size            H  number of heads         D  dims per head
    Tq number of queries     Tk number of keys/values   C  model width (= H * D usually)

Scaled dot-product attention, for one head:

    scores  = q @ k^T * scale          (Tq, Tk)   how well each query matches each key
    weights = softmax(scores + mask)   (Tq, Tk)   each row sums to 1 over the keys it may see
    out     = weights @ v              (Tq, D)    a weighted average of the values

Masks say which keys a query may look at. This file uses one convention throughout, the same as
``torch.nn.functional.scaled_dot_product_attention``: a **boolean mask is True where attending is
allowed**; a **float mask is added to the scores** (0 = allowed, -inf = forbidden, anything else =
a bias, which is how T5 adds its relative positions). A mask may have any shape that broadcasts to
(B, H, Tq, Tk): a causal mask is (Tq, Tk), a padding mask is (B, 1, 1, Tk).

What is here:

* ``scaled_dot_product_attention`` written out step by step (returns the weights, for teaching and
  plotting) and ``fast_scaled_dot_product_attention`` that calls PyTorch's fused kernel and gives the
  same numbers (tests check it, masks included);
* mask helpers: ``causal_mask``, ``padding_mask``, ``combine_masks``, ``to_additive_mask``;
* ``split_heads`` / ``merge_heads``;
* ``MultiHeadAttention`` (self- or cross-attention, masks, optional KV cache) and ``FeedForward``.

The manual's ``MultiHeadAttention`` (section "Трансформеры и механизмы внимания") fills
``mask == 0`` with -1e9, i.e. 1 = keep, like the True = keep used here; ``torch.nn.MultiheadAttention``
and ``nn.Transformer*`` layers use the opposite, True = *forbidden*. Because both conventions are
common, integer masks are refused with a message instead of guessing what 0 and 1 mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_course.core.checks import check_choice, check_positive_int

__all__ = [
    "causal_mask",
    "padding_mask",
    "combine_masks",
    "to_additive_mask",
    "scaled_dot_product_attention",
    "fast_scaled_dot_product_attention",
    "split_heads",
    "merge_heads",
    "AttentionOutput",
    "MultiHeadAttention",
    "FeedForward",
    "ACTIVATIONS",
]

# One (key, value) pair per layer, each (B, H, T_past, D): the KV cache of chapter 07.
KVCache = tuple[torch.Tensor, torch.Tensor]


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------

_MASK_DTYPE_HINT = (
    "attention masks must be bool (True = may attend) or float (added to the scores), got {dtype}. "
    "To turn a 0/1 attention_mask of shape (batch, seq_len) into a mask use padding_mask(attention_mask)."
)


def causal_mask(
    query_length: int, device: torch.device | str | None = None, key_length: int | None = None
) -> torch.Tensor:
    """Boolean (Tq, Tk) mask, True where query i may attend to key j. Chapter 03 (attention).

    The Tq queries are the *last* Tq of the Tk positions (with a KV cache the keys also hold the
    earlier tokens), so query i sits at position ``Tk - Tq + i`` and sees keys ``j <= Tk - Tq + i``.
    Without a cache (Tq == Tk) this is the usual lower triangle::

        causal_mask(3) = [[1, 0, 0],
                          [1, 1, 0],
                          [1, 1, 1]]

    The mask is built on ``device`` (the manual builds it on the CPU, which fails on a GPU).
    """
    key_length = query_length if key_length is None else key_length
    check_positive_int("query_length", query_length)
    check_positive_int("key_length", key_length)
    if key_length < query_length:
        raise ValueError(
            f"key_length ({key_length}) must be >= query_length ({query_length}): the queries are the "
            "newest positions and the keys include them"
        )
    ones = torch.ones(query_length, key_length, dtype=torch.bool, device=device)
    return ones.tril(diagonal=key_length - query_length)


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Turn a Hugging Face ``attention_mask`` (B, Tk) into a boolean (B, 1, 1, Tk) mask. Chapter 03.

    ``attention_mask`` has 1 for real tokens and 0 for padding (what a tokenizer returns). The result
    is True where a key is a real token; its shape broadcasts over heads (dim 1) and over queries
    (dim 2), so every query of every head ignores the padded keys.
    """
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
    if attention_mask.ndim != 2:
        raise ValueError(
            "attention_mask must have shape (batch, seq_len) with 1 for real tokens and 0 for padding, "
            f"got shape {tuple(attention_mask.shape)}"
        )
    if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise ValueError(
            "attention_mask must contain only 0 (padding) and 1 (real token); it looks like an additive "
            "mask (0 / -10000) or token ids were passed instead"
        )
    return attention_mask.bool()[:, None, None, :]


def to_additive_mask(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Boolean mask -> float mask to add to the scores: 0 where allowed, -inf where not. Chapter 03.

    A float mask is returned unchanged (cast to ``dtype``).
    """
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
    if not mask.is_floating_point():
        raise TypeError(_MASK_DTYPE_HINT.format(dtype=mask.dtype))
    return mask.to(dtype)


def combine_masks(*masks: torch.Tensor | None) -> torch.Tensor | None:
    """Combine masks (``None`` entries are skipped) into one. Chapter 03 (attention).

    Boolean masks are ANDed (a key is allowed only if every mask allows it). If any mask is a float
    (additive) mask, the result is additive: the float masks are summed and each boolean mask adds
    -inf where it forbids. Shapes broadcast, e.g. causal (Tq, Tk) with padding (B, 1, 1, Tk) gives
    (B, 1, Tq, Tk).
    """
    present = [m for m in masks if m is not None]
    if not present:
        return None
    for m in present:
        if m.dtype != torch.bool and not m.is_floating_point():
            raise TypeError(_MASK_DTYPE_HINT.format(dtype=m.dtype))
    if all(m.dtype == torch.bool for m in present):
        out = present[0]
        for m in present[1:]:
            out = out & m
        return out
    dtype = next(m.dtype for m in present if m.is_floating_point())
    out = to_additive_mask(present[0], dtype)
    for m in present[1:]:
        out = out + to_additive_mask(m, dtype)
    return out


# --------------------------------------------------------------------------------------------
# Scaled dot-product attention
# --------------------------------------------------------------------------------------------


def _check_qkv_and_mask(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool
) -> None:
    """Raise a clear error for shapes that would otherwise fail deep inside torch."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 4:
            raise ValueError(
                f"{name} must have shape (batch, heads, seq_len, head_dim), got {tuple(t.shape)}; "
                "use split_heads(x, n_head) to turn (batch, seq_len, n_embd) into that shape"
            )
    B, H, Tq, D = q.shape
    if k.shape[:2] != (B, H) or k.shape[-1] != D:
        raise ValueError(f"k has shape {tuple(k.shape)}, which does not match q {tuple(q.shape)} (B, H, *, D)")
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"v has shape {tuple(v.shape)}, which does not match k {tuple(k.shape)} (B, H, Tk, *)")
    Tk = k.shape[2]
    if is_causal and Tq != Tk:
        raise ValueError(
            f"is_causal=True needs as many queries as keys (got Tq={Tq}, Tk={Tk}); with a KV cache pass "
            f"attn_mask=causal_mask({Tq}, key_length={Tk}) instead"
        )
    if attn_mask is None:
        return
    if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
        raise TypeError(_MASK_DTYPE_HINT.format(dtype=attn_mask.dtype))
    target = (B, H, Tq, Tk)
    try:
        ok = attn_mask.ndim <= 4 and torch.broadcast_shapes(attn_mask.shape, target) == target
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"attention mask of shape {tuple(attn_mask.shape)} does not broadcast to (B, H, Tq, Tk) = {target}; "
            f"expected e.g. a causal mask ({Tq}, {Tk}) or a padding mask ({B}, 1, 1, {Tk})"
        )


def _merge_causal(attn_mask: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``attn_mask`` combined with the (Tq == Tk) causal mask."""
    return combine_masks(attn_mask, causal_mask(q.shape[2], q.device, key_length=k.shape[2]))


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention written out step by step; returns ``(out, weights)``. Chapter 03 (attention).

    q: (B, H, Tq, D), k: (B, H, Tk, D), v: (B, H, Tk, Dv) -> out (B, H, Tq, Dv), weights (B, H, Tq, Tk).

    ``attn_mask``: bool (True = may attend) or float (added to the scores), any shape that broadcasts to
    (B, H, Tq, Tk). ``is_causal``: also hide the future (needs Tq == Tk, like PyTorch's). ``scale``
    defaults to 1/sqrt(D) (T5 uses 1.0). ``dropout_p`` drops attention weights (pass 0 in eval mode).

    A query that may attend to no key at all (a padding position in a left-padded batch under a causal
    mask) gets all-zero weights and a zero output instead of the NaN that softmax of an all -inf row
    would give. PyTorch's kernels return zeros there too since torch 2.5 (NaN on 2.4);
    ``fast_scaled_dot_product_attention`` returns zeros on every version.
    """
    _check_qkv_and_mask(q, k, v, attn_mask, is_causal)
    if is_causal:
        attn_mask = _merge_causal(attn_mask, q, k)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale

    # 1. similarity of every query with every key: (B, H, Tq, D) @ (B, H, D, Tk) -> (B, H, Tq, Tk)
    scores = (q @ k.transpose(-2, -1)) * scale
    # 2. the mask: forbidden positions get -inf, so softmax gives them exactly 0 weight
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    # 3. each row becomes a probability distribution over the keys
    weights = torch.softmax(scores, dim=-1)
    nothing_to_see = torch.isneginf(scores).all(dim=-1, keepdim=True)  # rows that are all -inf
    weights = weights.masked_fill(nothing_to_see, 0.0)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    # 4. weighted average of the values: (B, H, Tq, Tk) @ (B, H, Tk, Dv) -> (B, H, Tq, Dv)
    out = weights @ v
    return out, weights


def fast_scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> tuple[torch.Tensor, None]:
    """Same as ``scaled_dot_product_attention`` through PyTorch's fused kernel. Chapter 03.

    Returns ``(out, None)``: the fused kernels never materialise the (Tq, Tk) weights, which is where
    their speed and memory savings come from (see benchmarks/bench_attention.py), so there are no
    weights to return. Unlike ``torch.nn.functional.scaled_dot_product_attention`` it accepts a mask
    together with ``is_causal=True`` (they are combined).
    """
    _check_qkv_and_mask(q, k, v, attn_mask, is_causal)
    if is_causal and attn_mask is not None:
        attn_mask, is_causal = _merge_causal(attn_mask, q, k), False
    # Queries that may see no key: PyTorch >= 2.5 returns zeros for them (pytorch/pytorch#133882),
    # torch 2.4 returns NaN, which then spreads through the next layer. Let such a row see every key
    # (so no kernel divides by zero, forward or backward) and zero its output, on every version.
    empty = None
    if attn_mask is not None:
        nothing = ~attn_mask.any(-1, keepdim=True) if attn_mask.dtype == torch.bool else (
            torch.isneginf(attn_mask).all(-1, keepdim=True))
        if bool(nothing.any()):
            empty = nothing
            attn_mask = attn_mask | nothing if attn_mask.dtype == torch.bool else attn_mask.masked_fill(nothing, 0.0)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale
    )
    if empty is not None:
        out = out.masked_fill(empty, 0.0)
    return out, None


# --------------------------------------------------------------------------------------------
# Multi-head attention
# --------------------------------------------------------------------------------------------


def split_heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """(B, T, H*D) -> (B, H, T, D): give each head its own slice of the channels. Chapter 03."""
    B, T, C = x.shape
    if C % n_head != 0:
        raise ValueError(f"cannot split {C} channels into {n_head} heads: {C} is not divisible by {n_head}")
    return x.view(B, T, n_head, C // n_head).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, D) -> (B, T, H*D): concatenate the heads again (inverse of split_heads). Chapter 03."""
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D)


class AttentionOutput(NamedTuple):
    """What ``MultiHeadAttention`` returns. Chapter 03 (attention).

    output: (B, Tq, C). weights: (B, H, Tq, Tk) if ``need_weights`` else None. present_key_value:
    the (keys, values) to pass back as ``past_key_value`` next step if ``use_cache`` else None.
    """

    output: torch.Tensor
    weights: torch.Tensor | None
    present_key_value: KVCache | None


class MultiHeadAttention(nn.Module):
    """Multi-head self- or cross-attention with masks and an optional KV cache. Chapter 03.

    Self-attention (``cross_attention=False``): queries, keys and values all come from ``x``, so one
    matrix multiply ``qkv_proj`` computes all three (as GPT-2's ``c_attn``). Cross-attention: the queries
    come from ``x`` (the decoder), the keys and values from ``context`` (the encoder's output), so there
    are two projections, ``q_proj`` and ``kv_proj``.

    ``head_dim`` defaults to ``n_embd // n_head`` (T5 allows any ``head_dim``; the inner width is then
    ``n_head * head_dim``). ``scale`` defaults to 1/sqrt(head_dim) (T5: 1.0).
    """

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        *,
        head_dim: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        scale: float | None = None,
        cross_attention: bool = False,
    ) -> None:
        super().__init__()
        if head_dim is None:
            if n_embd % n_head != 0:
                raise ValueError(
                    f"n_embd ({n_embd}) must be divisible by n_head ({n_head}): each head gets "
                    f"n_embd // n_head channels; pick n_head among {_divisors(n_embd)}"
                )
            head_dim = n_embd // n_head
        self.n_embd, self.n_head, self.head_dim = n_embd, n_head, head_dim
        self.inner_dim = n_head * head_dim
        self.scale = scale
        self.dropout = dropout
        self.cross_attention = cross_attention
        if cross_attention:
            self.q_proj = nn.Linear(n_embd, self.inner_dim, bias=bias)
            self.kv_proj = nn.Linear(n_embd, 2 * self.inner_dim, bias=bias)
        else:
            self.qkv_proj = nn.Linear(n_embd, 3 * self.inner_dim, bias=bias)
        self.out_proj = nn.Linear(self.inner_dim, n_embd, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        past_key_value: KVCache | None = None,
        use_cache: bool = False,
        need_weights: bool = False,
    ) -> AttentionOutput:
        """x: (B, Tq, C); context: (B, Tk, C) for cross-attention. Returns an ``AttentionOutput``.

        ``attn_mask`` broadcasts to (B, H, Tq, Tk) (see the module docstring). ``is_causal`` hides the
        future; with a KV cache the causal mask is aligned so the new queries are the last positions.
        ``past_key_value``: self-attention appends the new keys/values to it; cross-attention reuses it
        as is (the encoder output does not change while decoding). ``need_weights`` uses the written-out
        attention and returns the weights; otherwise the fused kernel runs.
        """
        if x.ndim != 3 or x.shape[-1] != self.n_embd:
            raise ValueError(f"x must have shape (batch, seq_len, {self.n_embd}), got {tuple(x.shape)}")
        h = self.n_head
        if self.cross_attention:
            if context is None and past_key_value is None:
                raise ValueError("cross-attention needs context= (the encoder's hidden states)")
            q = split_heads(self.q_proj(x), h)
            if past_key_value is not None:  # keys/values of the encoder output, computed on step one
                k, v = past_key_value
            else:
                k, v = (split_heads(t, h) for t in self.kv_proj(context).split(self.inner_dim, dim=-1))
        else:
            if context is not None:
                raise ValueError("this is a self-attention module; build it with cross_attention=True to use context")
            q, k, v = (split_heads(t, h) for t in self.qkv_proj(x).split(self.inner_dim, dim=-1))
            if past_key_value is not None:  # prepend the cached keys/values of the earlier tokens
                k = torch.cat([past_key_value[0], k], dim=2)
                v = torch.cat([past_key_value[1], v], dim=2)
        present = (k, v) if use_cache else None

        # q: (B, H, Tq, D); k, v: (B, H, Tk, D)
        if is_causal and (attn_mask is not None or q.shape[2] != k.shape[2]):
            attn_mask = combine_masks(attn_mask, causal_mask(q.shape[2], x.device, key_length=k.shape[2]))
            is_causal = False
        attend: Callable = scaled_dot_product_attention if need_weights else fast_scaled_dot_product_attention
        out, weights = attend(
            q, k, v, attn_mask=attn_mask, is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0, scale=self.scale,
        )
        return AttentionOutput(self.out_proj(merge_heads(out)), weights, present)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# --------------------------------------------------------------------------------------------
# Position-wise feed-forward network
# --------------------------------------------------------------------------------------------

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,  # exact GELU (BERT)
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's "gelu_new"
    "relu": F.relu,  # the original Transformer and T5
    "silu": F.silu,  # Llama-style gated MLPs
}


class FeedForward(nn.Module):
    """Position-wise feed-forward network: the same small MLP applied to every token. Chapter 03.

    ``down_proj(act(up_proj(x)))``, widening C -> ``n_inner`` (usually 4C) and back. With ``gated=True``
    it is ``down_proj(act(gate_proj(x)) * up_proj(x))`` (T5 v1.1's gated-GELU, Llama's SwiGLU).
    ``dropout`` is applied to the hidden activations (T5 puts it there; GPT-2 and BERT put theirs
    after the block, which their blocks do).
    """

    def __init__(
        self,
        n_embd: int,
        n_inner: int | None = None,
        activation: str = "gelu_tanh",
        bias: bool = True,
        gated: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_choice("activation", activation, sorted(ACTIVATIONS))
        n_inner = 4 * n_embd if n_inner is None else n_inner
        self.activation = activation
        self.act = ACTIVATIONS[activation]
        self.up_proj = nn.Linear(n_embd, n_inner, bias=bias)
        self.gate_proj = nn.Linear(n_embd, n_inner, bias=bias) if gated else None
        self.down_proj = nn.Linear(n_inner, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C); every position independently."""
        if self.gate_proj is None:
            hidden = self.act(self.up_proj(x))  # (B, T, n_inner)
        else:
            hidden = self.act(self.gate_proj(x)) * self.up_proj(x)
        return self.down_proj(self.dropout(hidden))
