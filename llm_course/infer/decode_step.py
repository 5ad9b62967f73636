"""One decoding step: the next token's logits from the course's GPT or a transformers causal LM. Chapter 07.

Every decoding strategy (greedy, sampling, beam search, the sampling explorer's "step one token") asks a
model the same question, "what are the scores of the next token after these ids?", and asks it once per
new token. ``next_token_logits`` answers it with the key/value cache (chapter 03's ``KVCache``): each
step feeds only the newest token and reuses the keys and values of the earlier ones, so a step costs
O(T) instead of recomputing O(T) positions. The same code drives the course's ``GPT`` (with a
preallocated cache, ``llm_course.infer.static_cache``) and transformers models (``GPT2LMHeadModel`` and
friends): both take ``input_ids, attention_mask, position_ids, past_key_values, use_cache`` and return
``logits`` and ``past_key_values``. ``DecodeState`` carries the cache from one step to the next;
``reorder_cache`` keeps the rows of the beams that beam search keeps.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from llm_course.infer.static_cache import StaticCacheDecoder

__all__ = ["DecodeState", "next_token_logits", "reorder_cache"]


def _is_course_model(model: nn.Module) -> bool:
    """True for the course's own models (they need no mask when nothing is padded)."""
    return type(model).__module__.startswith("llm_course.")


@dataclass
class DecodeState:
    """What one decoding run carries from step to step: the model's key/value cache and its bookkeeping.

    Chapter 07. ``past`` is the course's tuple of (keys, values) per layer or a transformers ``Cache``
    object. A fresh ``DecodeState()`` (the default ``max_length=0``) makes ``next_token_logits`` use the
    model's own cache; ``max_length`` = prompt + new tokens lets the course's GPT decode with a
    preallocated one (``llm_course.infer.static_cache``).
    """

    past: Any = None
    fed: int = 0  # how many tokens of the sequence the cache already holds
    padded: bool | None = None  # does any prompt have padding? (generated tokens never do)
    max_length: int = 0  # prompt + new tokens: the course's GPT then decodes with a preallocated cache
    decoder: StaticCacheDecoder | None = None


def next_token_logits(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, state: DecodeState,
                      use_cache: bool = True) -> torch.Tensor:
    """Float logits (B, V) for the token after ``ids`` (B, T): one decoding step. Chapter 07.

    ``model``: the course's ``GPT`` or a transformers causal LM. ``mask`` (B, T): 1 for tokens, 0 for
    left padding. With ``use_cache`` only the tokens that ``state``'s cache lacks are fed (the whole
    prompt on the first call, one token after that) and the cache is updated in place; without it the
    whole text is recomputed (the same logits, slower). ``state`` belongs to one sequence of calls whose
    ``ids`` grow by one token each (start a new ``DecodeState()`` for a new text).
    """
    if use_cache and state.decoder is not None:  # the lean loop (static_cache.py), after its first step
        assert ids.shape[1] == state.decoder.length + 1, "the lean decoder takes exactly one new token per step"
        return state.decoder.step(ids[:, -1])
    if use_cache and state.max_length and state.fed == 0 and StaticCacheDecoder.supports(model):  # checked once
        state.decoder = StaticCacheDecoder(model, ids.shape[0], state.max_length)
        return state.decoder.prefill(ids, mask)
    if state.padded is None:
        state.padded = not bool(mask.all())
    inputs: dict[str, Any] = {"attention_mask": mask}
    if state.padded:  # left padding: count positions from each row's first real token
        inputs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    elif _is_course_model(model):  # no padding: the course's GPT needs no mask (one step is cheaper)
        inputs = {}
    if use_cache:
        new = slice(state.fed, ids.shape[1])
        if "position_ids" in inputs:
            inputs["position_ids"] = inputs["position_ids"][:, new]
        name = _cache_argument(model)
        out = model(input_ids=ids[:, new], use_cache=True, **{name: state.past}, **inputs)
        state.past, state.fed = getattr(out, name), ids.shape[1]
    else:
        out = model(input_ids=ids, use_cache=False, **inputs)
    return out.logits[:, -1, :].float()


def _cache_argument(model: nn.Module) -> str:
    """The name of the cache argument (and output): ``past_key_values`` for the course's models and older
    transformers, ``cache`` for transformers models since 5.2x (which deprecate the old name)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params and "past_key_values" not in params else "past_key_values"


def reorder_cache(state: DecodeState, index: torch.Tensor) -> None:
    """Keep the cache rows of the beams that survived (``index``: which old row each new row copies). Chapter 07.

    Beam search's bookkeeping: after each step row i of the new cache is row ``index[i]`` of the old one.
    """
    if state.decoder is not None:
        state.decoder.reorder(index)
    if state.past is None:
        return
    if hasattr(state.past, "reorder_cache"):  # a transformers Cache
        state.past.reorder_cache(index)
    else:  # the course's tuple of (keys, values) per layer
        state.past = tuple((k.index_select(0, index), v.index_select(0, index)) for k, v in state.past)
