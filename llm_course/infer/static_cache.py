"""A lean decode loop for the course's GPT: a preallocated key/value cache. Chapter 07 (inference).

``generate`` with ``use_cache=True`` feeds one new token per step. For a small model most of a step's
time is not arithmetic but bookkeeping around it: each ``torch.cat`` of the cache copies every cached
key and value again, each forward call re-checks its inputs and rebuilds masks, and each small op costs
a few microseconds of dispatch whatever its size. Inference engines (vLLM, TensorRT-LLM, transformers'
``StaticCache``) therefore

1. **preallocate** the cache once, ``(layers, batch, heads, max_length, head_dim)``, and write each new
   key/value into its slot, so nothing is copied as the text grows;
2. run a **single-token step** that does only what one new token needs: its embedding, and per block
   LayerNorm, one fused q/k/v projection, attention of one query over the filled part of the cache,
   the output projection and the MLP. No causal mask is needed: the newest token may see everything
   before it.

The step calls the model's own modules (``block.ln_1``, ``block.attn.qkv_proj``, ``block.mlp``...), so
a Linear layer replaced by a LoRA wrapper (chapter 06) or an int8/NF4 layer (this chapter) is still
used. A plain ``nn.Linear`` or ``nn.LayerNorm`` without hooks is called through its function
(``F.linear(x, weight, bias)``), which skips ``nn.Module.__call__``'s bookkeeping: a few microseconds
per call, 31 calls per token for course-gpt. Only the standard ``GPTBlock`` layout is supported
(``StaticCacheDecoder.supports``); ``generate`` falls back to the ordinary cached forward for anything
else. The tests check that every step's logits equal the full forward's.

benchmarks/bench_generation.py measures what this buys: see the README's generation figures.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_course.core.checks import check_int, check_positive_int
from llm_course.models.gpt import GPT, GPTBlock
from llm_course.nn.attention import FeedForward, MultiHeadAttention

__all__ = ["StaticCacheDecoder", "direct_call"]


def direct_call(module: nn.Module) -> nn.Module | Callable[[torch.Tensor], torch.Tensor]:
    """``module``'s computation as a plain function where that is the same thing. Chapter 07.

    A plain ``nn.Linear`` / ``nn.LayerNorm`` with no hooks becomes ``F.linear`` / ``torch.layer_norm`` on its
    own parameters (the same tensors, so in-place weight updates are seen); anything else (a LoRA
    wrapper, a quantized layer, a module with hooks) is returned unchanged and called as a module.
    """
    if module._forward_hooks or module._forward_pre_hooks:  # someone is watching: keep the module call
        return module
    if type(module) is nn.Linear:
        weight, bias = module.weight, module.bias
        return lambda x: F.linear(x, weight, bias)
    if type(module) is nn.LayerNorm:
        shape, weight, bias, eps = module.normalized_shape, module.weight, module.bias, module.eps
        return lambda x: torch.layer_norm(x, shape, weight, bias, eps)  # F.layer_norm's own checks cost ~20%
    return module


class StaticCacheDecoder:
    """Greedy/sampling decode state for a course ``GPT`` with a preallocated KV cache. Chapter 07.

    ``decoder = StaticCacheDecoder(model, batch_size, max_length)``; ``decoder.prefill(input_ids,
    attention_mask)`` runs the prompt (B, T) through the model and returns the next-token logits (B, V);
    then ``decoder.step(next_ids)`` with the chosen tokens (B,) returns the logits after them, one token
    at a time, until ``max_length`` tokens are held. ``decoder.reorder(index)`` keeps the cache rows of
    surviving beams (beam search).
    """

    def __init__(self, model: GPT, batch_size: int, max_length: int) -> None:
        if not self.supports(model):
            raise TypeError(
                "StaticCacheDecoder needs a course GPT whose blocks are the standard GPTBlock (self-attention "
                "with MultiHeadAttention, MLP with FeedForward); use the model's forward with past_key_values "
                "for other models"
            )
        if model.training and model.config.dropout > 0:
            raise ValueError("call model.eval() before decoding: the lean step does not apply dropout")
        c = model.config
        check_positive_int("batch_size", batch_size)
        check_int("max_length", max_length, 1, c.n_positions, hint=f"at most the model's n_positions={c.n_positions}")
        self.model = model
        self.n_head, self.head_dim = c.n_head, c.n_embd // c.n_head
        # each block's modules, looked up once (attribute lookups on nn.Module are slow, and add up)
        self.blocks = [tuple(direct_call(x) if isinstance(x, nn.Module) else x for x in (
            b.ln_1, b.attn.qkv_proj, b.attn.scale, b.attn.out_proj, b.ln_2, b.mlp.up_proj, b.mlp.act, b.mlp.down_proj))
            for b in model.h]
        self.ln_f, self.lm_head = direct_call(model.ln_f), direct_call(model.lm_head)
        self.wte, self.wpe = model.wte, model.wpe
        weight = model.lm_head.weight
        shape = (c.n_layer, batch_size, self.n_head, max_length, self.head_dim)
        with torch.inference_mode():  # buffers written in place under inference mode must be made there
            self.keys = torch.zeros(shape, dtype=weight.dtype, device=weight.device)  # filled slot by slot
            self.values = torch.zeros_like(self.keys)
        self.length = 0  # how many positions of the cache are filled
        self.key_mask: torch.Tensor | None = None  # (B, 1, 1, max_length) bool, only for left-padded prompts
        self.positions = torch.zeros(batch_size, dtype=torch.long, device=weight.device)  # next position per row

    @staticmethod
    def supports(model: nn.Module) -> bool:
        """True for a course ``GPT`` built from standard blocks (sub-layers may be wrapped or quantized)."""
        return isinstance(model, GPT) and all(
            type(b) is GPTBlock and type(b.attn) is MultiHeadAttention and not b.attn.cross_attention
            and type(b.mlp) is FeedForward and b.mlp.gate_proj is None for b in model.h
        )

    @property
    def max_length(self) -> int:
        return self.keys.shape[3]

    @torch.inference_mode()  # no autograd bookkeeping at all (faster than no_grad for many small ops)
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Run the prompt (B, T) through the model's ordinary forward, keep its keys and values; (B, V) logits."""
        B, T = input_ids.shape
        if B != self.keys.shape[1] or T > self.max_length:
            raise ValueError(f"prompt of shape {(B, T)} does not fit a cache for batch {self.keys.shape[1]} and "
                             f"{self.max_length} positions")
        inputs = {}
        if attention_mask is not None and not bool(attention_mask.all()):  # left padding
            inputs = {"attention_mask": attention_mask, "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0)}
            self.key_mask = torch.ones(B, 1, 1, self.max_length, dtype=torch.bool, device=input_ids.device)
            self.key_mask[:, 0, 0, :T] = attention_mask.bool()  # padding stays hidden; new tokens are real
            self.positions = attention_mask.sum(-1).long()  # each row continues from its own length
        else:
            self.positions = torch.full((B,), T, dtype=torch.long, device=input_ids.device)
        out = self.model(input_ids, use_cache=True, **inputs)
        for i, (k, v) in enumerate(out.past_key_values):  # (B, H, T, D) each
            self.keys[i, :, :, :T] = k
            self.values[i, :, :, :T] = v
        self.length = T
        return out.logits[:, -1, :].float()

    @torch.inference_mode()
    def step(self, next_ids: torch.Tensor) -> torch.Tensor:
        """Feed one token per row, (B,); return the next-token logits (B, V)."""
        t = self.length
        if t >= self.max_length:
            raise ValueError(f"the cache is full ({self.max_length} positions); make a decoder with a larger "
                             "max_length")
        H, D = self.n_head, self.head_dim
        B = next_ids.shape[0]
        x = self.wte(next_ids) + self.wpe(self.positions)  # (B, C): token + its position
        mask = self.key_mask[..., : t + 1] if self.key_mask is not None else None  # padding only, no causal mask
        for i, (ln_1, qkv_proj, scale, out_proj, ln_2, up_proj, act, down_proj) in enumerate(self.blocks):
            # one projection gives q, k, v side by side: (B, 3C) -> 3 x (B, H, 1, D)
            q, k, v = qkv_proj(ln_1(x)).view(B, 3, H, 1, D).unbind(1)
            keys, values = self.keys[i], self.values[i]  # (B, H, max_length, D)
            keys.narrow(2, t, 1).copy_(k)  # write into slot t: nothing else is copied
            values.narrow(2, t, 1).copy_(v)
            a = F.scaled_dot_product_attention(  # one query over the t + 1 filled slots: (B, H, 1, D)
                q, keys.narrow(2, 0, t + 1), values.narrow(2, 0, t + 1), attn_mask=mask, scale=scale
            )
            x = x + out_proj(a.reshape(B, H * D))  # residual around attention
            x = x + down_proj(act(up_proj(ln_2(x))))  # residual around the MLP (FeedForward, eval mode)
        self.length = t + 1
        self.positions = self.positions + 1
        return self.lm_head(self.ln_f(x)).float()  # (B, V)

    @torch.inference_mode()
    def reorder(self, index: torch.Tensor) -> None:
        """Row i of the cache becomes old row ``index[i]`` (beam search keeps its surviving beams)."""
        self.keys = self.keys.index_select(1, index)
        self.values = self.values.index_select(1, index)
        self.positions = self.positions.index_select(0, index)
        if self.key_mask is not None:
            self.key_mask = self.key_mask.index_select(0, index)
