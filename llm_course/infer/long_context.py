"""Long inputs: texts longer than the model's context. Chapter 09 (best practices).

A model with a context of W tokens cannot read a 15 000-token document at once. Two honest ways to
deal with that when the model is a language model, each measured in the notebook:

**1. Perplexity of a long text: the strided sliding window** (``strided_perplexity``), as in the
transformers guide "Perplexity of fixed-length models". The naive way cuts the text into chunks of W
tokens (``naive_chunk_perplexity``, which is ``objectives.sequential_blocks``): the first token of each
chunk is predicted from almost nothing, the 2nd from one token, ... so on average a token sees only
~W/2 tokens of context. The strided way slides a window of W tokens forward by ``stride`` tokens at a
time and scores only the ``stride`` *new* tokens at the end of each window (labels -100 elsewhere)::

    tokens   0 1 2 3 4 5 6 7 8 9 ...          window W = 6, stride S = 2
    window 0 [0 1 2 3 4 5]                    scores 1..5 (token 0 has nothing to be predicted from)
    window 1     [2 3 4 5 6 7]                scores 6 7  (from 4 and 5 tokens of context)
    window 2         [4 5 6 7 8 9]            scores 8 9

The overlap is *context*, never scored twice: every token but the first is predicted exactly once,
with between W - S and W - 1 tokens before it (except the first W - 1 tokens, which see all of their
past). Smaller S means more context and more compute (about W / S forward tokens per scored token).
S = W - 1 reads the naive chunks (windows that share one token, as ``sequential_blocks``; only the last
window differs: it is moved back to full length); S >= W would leave tokens that nothing predicts, so
it is an error. How much the extra context buys depends on how far back the model actually looks: the
notebook measures it on course-gpt.

**2. Local (sliding-window) attention** (``sliding_window_mask``, ``SlidingWindowGPT``): inside one
forward pass, query i may attend only to the last ``window`` keys, i-window+1..i (Longformer, Mistral).
It is a band of the causal mask. One layer sees ``window`` tokens; L stacked layers see back
L * (window - 1) tokens, as stacked convolutions do. ``local_attention_maps`` shows it in the attention
explorer.

An embedding of a long document (split into chunks that fit an encoder) is ``llm_course.infer.long_documents``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_course.core.checks import check_int, check_positive_int
from llm_course.core.runtime import eval_mode, module_device
from llm_course.models.gpt import GPT, CausalLMOutput
from llm_course.models.modeling import context_length
from llm_course.nn.attention import KVCache, causal_mask, combine_masks
from llm_course.nn.evaluation import estimate_loss
from llm_course.nn.objectives import IGNORE_INDEX, perplexity, sequential_blocks

__all__ = [
    "token_ids",
    "strided_windows",
    "strided_perplexity",
    "naive_chunk_perplexity",
    "sliding_window_mask",
    "SlidingWindowGPT",
    "local_attention_maps",
]


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _as_stream(input_ids: Any, vocab_size: int | None) -> torch.Tensor:
    """A 1-D LongTensor of token ids from a list, a (N,) tensor or a (1, N) tensor."""
    if isinstance(input_ids, str):
        raise TypeError("input_ids is a str: tokenize it first, e.g. token_ids(tokenizer, text)")
    ids = torch.as_tensor(input_ids)
    if ids.ndim == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.ndim != 1:
        raise ValueError(f"input_ids must be one text: shape (num_tokens,) or (1, num_tokens), got {tuple(ids.shape)}")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise TypeError(f"input_ids must hold integer token ids, got dtype {ids.dtype}")
    if ids.numel() < 2:
        raise ValueError(f"input_ids holds {ids.numel()} token(s): perplexity needs at least 2 "
                         "(one to read, one to predict)")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or (vocab_size is not None and hi >= vocab_size):
        raise ValueError(f"input_ids contains token id {lo if lo < 0 else hi}, outside the model's vocabulary "
                         f"[0, {vocab_size}): use the model's own tokenizer")
    return ids.long()


def _check_window(model: nn.Module, window: int | None) -> int:
    """The window (default: the model's context), checked against the model's context."""
    context = context_length(model)
    if window is None:
        if context is None:
            raise ValueError("the model's config has no n_positions / max_position_embeddings: pass window=")
        return context
    check_int("window", window, minimum=2, hint="a window needs one token to read and one to predict")
    if context is not None and window > context:
        raise ValueError(f"window={window} is larger than the model's context ({context} tokens): the model "
                         f"has no position embeddings past {context}; use window <= {context}")
    return window


def token_ids(tokenizer: Any, text: str) -> torch.Tensor:
    """``text`` as a 1-D LongTensor of token ids, no special tokens added. Chapter 09 (long inputs).

    Works with the course's ``ByteLevelBPETokenizer`` (through its fast Rust twin, the same ids ~10x
    faster on a long text) and with a transformers tokenizer (no "sequence longer than the maximum"
    warning: a long text is the point here).
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if hasattr(tokenizer, "to_hf_tokenizer"):  # the course tokenizer
        ids = tokenizer.to_hf_tokenizer().encode(text).ids
    elif callable(tokenizer):  # a transformers tokenizer
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    else:
        raise TypeError(f"tokenizer must be a course ByteLevelBPETokenizer or a transformers tokenizer, "
                        f"got {type(tokenizer).__name__}")
    return torch.tensor(ids, dtype=torch.long)


# --------------------------------------------------------------------------------------------
# 1. Perplexity of a long text
# --------------------------------------------------------------------------------------------


def strided_windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """The windows of the strided evaluation: ``(begin, end, first_target)`` each. Chapter 09.

    The model reads ``ids[begin:end]`` (``end - begin == min(window, n_tokens)``) and is scored on the
    tokens ``first_target..end-1`` (absolute positions). Consecutive windows end ``stride`` tokens apart;
    the first scores tokens 1..window-1, the last ends at ``n_tokens``. Unlike the transformers guide,
    the last window is moved back to full length (its tokens get full context and every window has the
    same length, so they batch without padding). Every token 1..n_tokens-1 is a target exactly once.
    """
    n_tokens = check_int("n_tokens", n_tokens, minimum=2, hint="one token to read, one to predict")
    window = check_int("window", window, minimum=2, hint="a window needs one token to read and one to predict")
    stride = check_positive_int("stride", stride)
    if stride >= window:
        raise ValueError(
            f"stride={stride} must be smaller than window={window}: each window's first token has no context "
            f"inside the window, so it scores at most window - 1 = {window - 1} new tokens; stride >= window "
            f"would leave tokens that nothing predicts. stride={window - 1} is the naive chunking, smaller "
            "strides give every token more context"
        )
    windows = []
    first_target = 1  # token 0 has nothing before it: it is never predicted
    end = min(window, n_tokens)
    while True:
        windows.append((max(0, end - window), end, first_target))
        if end == n_tokens:
            return windows
        first_target, end = end, min(end + stride, n_tokens)


@torch.no_grad()
def _target_losses(
    model: nn.Module, ids: torch.Tensor, plan: Sequence[tuple[int, int, int]], batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the windows of ``plan``; return the loss (nats) and the context (tokens) of every scored token."""
    device = module_device(model)
    nats, contexts = [], []
    with eval_mode(model):
        for b in range(0, len(plan), batch_size):
            rows = plan[b : b + batch_size]
            inputs = torch.stack([ids[begin:end] for begin, end, _ in rows]).to(device)  # (B, W)
            # labels: the window's tokens, -100 except the new ones (first_target..end-1)
            labels = inputs.clone()
            for r, (begin, _, first_target) in enumerate(rows):
                labels[r, : first_target - begin] = IGNORE_INDEX
            logits = model(input_ids=inputs, use_cache=False).logits  # (B, W, V)
            # the logits at position t predict token t + 1: shift once; one loss per token, (B, W-1)
            targets = labels[:, 1:]
            loss = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), targets,
                                   ignore_index=IGNORE_INDEX, reduction="none")
            scored = targets != IGNORE_INDEX
            # column p scores token p + 1 of the window, predicted from its p + 1 tokens 0..p
            context = torch.arange(1, inputs.shape[1], device=device).expand_as(targets)
            nats.append(loss[scored].double().cpu())
            contexts.append(context[scored].cpu())
    return torch.cat(nats), torch.cat(contexts)


def strided_perplexity(
    model: nn.Module,
    input_ids: Any,
    window: int | None = None,
    stride: int | None = None,
    batch_size: int = 4,
) -> dict[str, float]:
    """Perplexity of a long text with a strided sliding window. Chapter 09 (long inputs).

    ``model``: the course ``GPT`` or a transformers causal LM (anything whose ``model(input_ids=...)``
    returns ``.logits``). ``input_ids``: the whole text's ids, (N,) or (1, N) (``token_ids(tok, text)``).
    ``window``: tokens per forward pass (default: the model's context); ``stride``: new tokens scored per
    window (default ``window // 2``), 1 <= stride < window. See ``strided_windows`` for which token is
    scored where: every token but the first exactly once; the tokens after the first window with
    >= window - stride tokens of context, the first window's token t with the t tokens before it.

    Returns ``{"loss", "perplexity", "tokens", "windows", "tokens_processed", "mean_context"}``: the mean
    loss in nats over the ``tokens`` scored, its perplexity, the number of forward windows, the tokens
    pushed through the model (the compute: about ``tokens * window / stride``) and the average number of
    tokens each scored token was predicted from.
    """
    window = _check_window(model, window)
    stride = window // 2 if stride is None else stride
    batch_size = check_positive_int("batch_size", batch_size)
    ids = _as_stream(input_ids, getattr(getattr(model, "config", None), "vocab_size", None))
    plan = strided_windows(ids.numel(), window, stride)  # checks stride < window
    nats, contexts = _target_losses(model, ids, plan, batch_size)
    loss = float(nats.mean())
    return {"loss": loss, "perplexity": perplexity(loss), "tokens": nats.numel(), "windows": len(plan),
            "tokens_processed": sum(end - begin for begin, end, _ in plan),
            "mean_context": float(contexts.double().mean())}


def naive_chunk_perplexity(
    model: nn.Module, input_ids: Any, window: int | None = None, batch_size: int = 4
) -> dict[str, float]:
    """Perplexity with the text cut into chunks of ``window`` tokens, no extra context. Chapter 09.

    The evaluation the zoo records (``objectives.sequential_blocks`` + ``evaluation.estimate_loss``):
    chunks share one token, so every token but the first is predicted once, but a token at offset k of
    its chunk sees only k tokens of context. The same numbers as ``strided_perplexity(..., stride=window - 1)``
    when the text is a whole number of chunks (N - 1 divisible by window - 1); otherwise only the last,
    padded chunk differs (the strided one is moved back to full length).
    Returns ``{"loss", "perplexity", "tokens", "windows", "tokens_processed"}``.
    """
    window = _check_window(model, window)
    batch_size = check_positive_int("batch_size", batch_size)
    ids = _as_stream(input_ids, getattr(getattr(model, "config", None), "vocab_size", None))
    batches = list(sequential_blocks(ids, batch_size, window))
    metrics = estimate_loss(model, batches)
    n_windows = sum(b["input_ids"].shape[0] for b in batches)
    return {**metrics, "windows": n_windows, "tokens_processed": sum(int(b["attention_mask"].sum()) for b in batches)}


# --------------------------------------------------------------------------------------------
# 2. Local (sliding-window) attention
# --------------------------------------------------------------------------------------------


def sliding_window_mask(
    query_length: int, window: int, device: torch.device | str | None = None, key_length: int | None = None
) -> torch.Tensor:
    """Boolean (Tq, Tk) mask of local causal attention: query i sees keys i-window+1..i. Chapter 09.

    True = may attend (the convention of ``llm_course.nn.attention``). It is the causal mask with
    everything older than ``window`` tokens cut off: a band of width ``window`` below the diagonal.
    As in ``causal_mask``, with a KV cache (Tk > Tq) the queries are the last Tq positions. ``window >= Tk``
    gives the plain causal mask::

        sliding_window_mask(5, 2) = [[1, 0, 0, 0, 0],
                                     [1, 1, 0, 0, 0],
                                     [0, 1, 1, 0, 0],
                                     [0, 0, 1, 1, 0],
                                     [0, 0, 0, 1, 1]]
    """
    window = check_positive_int("window", window, hint="a query must at least see itself")
    causal = causal_mask(query_length, device, key_length=key_length)  # checks the lengths
    offset = causal.shape[1] - causal.shape[0]  # query i sits at position offset + i
    too_old = torch.ones_like(causal).tril(diagonal=offset - window)  # keys j <= position - window
    return causal & ~too_old


class SlidingWindowGPT(nn.Module):
    """The course ``GPT`` with local attention: every layer sees only the last ``window`` tokens. Chapter 09.

    Call it exactly like the GPT it wraps (same arguments, same ``CausalLMOutput``; it holds the same
    weights, nothing is copied), so it fits everything that takes a GPT: ``strided_perplexity``, the
    attention explorer (``collect_attentions``, ``AttentionExplorer``), ``output_attentions=True``.

    How: each attention layer of the GPT receives an ``attn_mask`` (the padding mask, or None) and
    adds the causal mask itself. For the duration of a call, a forward pre-hook on every
    ``block.attn`` ANDs that mask with ``sliding_window_mask`` (aligned like the causal mask when a
    KV cache holds earlier tokens). gpt.py itself is unchanged.

    The GPT was trained with full attention, so a small window costs it quality (the notebook measures
    how much); models built for local attention (Mistral, Longformer) are trained with it.
    """

    def __init__(self, model: GPT, window: int) -> None:
        super().__init__()
        if not isinstance(model, GPT):
            raise TypeError(f"SlidingWindowGPT wraps the course's llm_course.models.gpt.GPT, got "
                            f"{type(model).__name__}; for a transformers GPT2LMHeadModel use GPT.from_hf(model)")
        self.window = check_positive_int("window", window, hint="a query must at least see itself")
        self.model = model
        self.config = model.config  # so context_length(...) and the attention explorer see the context

    def _add_window(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Forward pre-hook of one attention layer: AND its attn_mask with the sliding-window band."""
        x = args[0]  # (B, Tq, C): the new tokens
        past = kwargs.get("past_key_value")
        q_len = x.shape[1]
        k_len = q_len + (past[0].shape[2] if past is not None else 0)
        band = sliding_window_mask(q_len, self.window, x.device, key_length=k_len)  # (Tq, Tk)
        kwargs["attn_mask"] = combine_masks(kwargs.get("attn_mask"), band)
        return args, kwargs

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        past_key_values: tuple[KVCache, ...] | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
        position_ids: torch.Tensor | None = None,
    ) -> CausalLMOutput:
        """Same as ``GPT.forward``, with every query limited to the last ``window`` keys."""
        if getattr(self.model, "gradient_checkpointing", False) and self.model.training and torch.is_grad_enabled():
            raise ValueError(
                "SlidingWindowGPT adds its mask during the forward call only, but with gradient checkpointing "
                "the backward pass re-runs each block later, without the mask: call "
                "model.gradient_checkpointing_disable() (or evaluate under torch.no_grad())"
            )
        hooks = [block.attn.register_forward_pre_hook(self._add_window, with_kwargs=True) for block in self.model.h]
        try:
            return self.model(input_ids, attention_mask=attention_mask, labels=labels, past_key_values=past_key_values,
                              use_cache=use_cache, output_attentions=output_attentions, position_ids=position_ids)
        finally:
            for hook in hooks:
                hook.remove()


def local_attention_maps(model: GPT, tokenizer: Any, text: str, window: int) -> tuple[Any, Any]:
    """Attention weights of ``model`` on ``text`` with full and with local attention. Chapter 09.

    Returns two ``widgets.AttentionData`` (full, local): ``.weights("self", layer, head)`` is a (T, T)
    array for ``plt.imshow``; ``.tokens`` label its rows and columns. In the local one every weight
    more than ``window - 1`` tokens below the diagonal is exactly 0 and each row still sums to 1. For the
    interactive explorer: ``AttentionExplorer(models={"full": (model, tok), "local":
    (SlidingWindowGPT(model, window), tok)})``.
    """
    from llm_course.viz.attention_data import collect_attentions

    local = SlidingWindowGPT(model, window)
    full_data = collect_attentions(model, tokenizer, text, model_name="full attention")
    local_data = collect_attentions(local, tokenizer, text, model_name=f"sliding window {window}")
    return full_data, local_data
