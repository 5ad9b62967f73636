"""Decoding: turning next-token scores into text. Chapter 07 (generation strategies and inference).

A causal LM gives, at every step, one score (logit) per vocabulary token for the *next* token. A decoding
strategy decides what to do with them:

* **greedy**: take the highest-scoring token (``do_sample=False``, the default);
* **sampling** (``do_sample=True``): draw the token at random from the softmax, after reshaping it:
  ``temperature`` divides the logits (< 1 sharper, > 1 flatter), ``top_k`` keeps the k best tokens,
  ``top_p`` keeps the smallest set whose probability reaches p (the "nucleus");
* **repetition penalty**: make every token already in the text less likely (CTRL's rule, as transformers);
* **beam search** (``num_beams > 1``): keep the ``num_beams`` best partial texts by total log-probability
  and return the best finished ones, with a ``length_penalty``, ``early_stopping`` and n-best lists.

This module holds the entry points: ``generate`` (ids in, ids out, as transformers' ``generate``),
``stream`` (text pieces as they are made), and two ways to judge a continuation (``sequence_logprob``,
``distinct_n``). The parts they are built from have a module each: the settings and the filters
(``llm_course.infer.logits_processors``), one step of the model with the key/value cache
(``llm_course.infer.decode_step``) and beam search (``llm_course.infer.beam_search``). The same code drives
the course's ``GPT`` and transformers causal LMs; greedy and beam search give the same token ids as
``model.generate`` (the tests check both).

Where the manual goes wrong (ERRATA sections 7 and 8): section 7's ``generate_text`` and
``beam_search_generation`` pass ``max_length=100``, which in transformers counts the prompt's tokens too:
a prompt of 95 tokens gets 5 new ones, and one of 100 or more gets none (current transformers raises a
``ValueError``). Here the only length setting is ``max_new_tokens``, and ``max_length=`` is an error that
says why. Section 8's chat bot (0.7), classifier (0.1) and summarizer (0.7, with ``top_p=0.9``) pass a
``temperature`` without ``do_sample=True``: transformers then decodes greedily and the temperature does
nothing (a warning at most). Here that combination is an error that says so.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_course.core.checks import check_int, check_str
from llm_course.core.runtime import eval_mode
from llm_course.infer.beam_search import beam_search
from llm_course.infer.decode_step import DecodeState, next_token_logits
from llm_course.infer.logits_processors import GenerationConfig, process_logits
from llm_course.models.modeling import context_length
from llm_course.text.encoding import encode_plain

__all__ = ["generate", "stream", "sequence_logprob", "distinct_n"]


# --------------------------------------------------------------------------------------------
# Checking the inputs, stopping
# --------------------------------------------------------------------------------------------


def _check_inputs(model: nn.Module, input_ids: Any, attention_mask: Any, config: GenerationConfig
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` as (B, T) tensors on the model's device, or a clear error."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a causal LM (a torch nn.Module), got {type(model).__name__}")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype != torch.long:
        raise TypeError("input_ids must be a LongTensor of token ids, e.g. torch.tensor([tokenizer.encode(prompt)])")
    if input_ids.ndim == 1:
        input_ids = input_ids[None]
    if input_ids.ndim != 2:
        raise ValueError(
            f"input_ids must have shape (batch, seq_len) or (seq_len,), got a {input_ids.ndim}-D tensor of shape "
            f"{tuple(input_ids.shape)}. A batch of one prompt is torch.tensor([tokenizer.encode(prompt)]); "
            "an extra dimension usually comes from wrapping ids that already have a batch dimension "
            "(index or squeeze it away, e.g. input_ids[0] or input_ids.squeeze(0))"
        )
    if input_ids.shape[1] == 0:
        raise ValueError(f"the prompt is empty (input_ids shape {tuple(input_ids.shape)}): give at least one token "
                         "(e.g. a beginning-of-text or end-of-text token to generate from nothing)")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    elif attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids {tuple(input_ids.shape)}")
    if bool((attention_mask[:, -1] == 0).any()):
        raise ValueError("the prompts must be left-padded (padding first, attention_mask 0 there): a decoder "
                         "continues from the last position, which must be a real token")
    limit = context_length(model)
    needed = input_ids.shape[1] + config.max_new_tokens
    if limit is not None and needed > limit and not config.slide_context:
        raise ValueError(
            f"the prompt ({input_ids.shape[1]} tokens) plus max_new_tokens ({config.max_new_tokens}) is {needed} "
            f"tokens, longer than the model's context window of {limit}: shorten the prompt (keep its last "
            f"{max(limit - config.max_new_tokens, 0)} tokens), ask for fewer new tokens, or pass slide_context=True "
            "to keep reading only the last tokens that fit"
        )
    device = next(model.parameters()).device
    return input_ids.to(device), attention_mask.to(device)


class _StopStrings:
    """Finds stop strings in the decoded new text of each row."""

    def __init__(self, stop_strings: Sequence[str] | None, tokenizer: Any, prompt_length: int) -> None:
        if stop_strings and tokenizer is None:
            raise ValueError("stop_strings need the tokenizer to decode the text: pass tokenizer=...")
        self.strings, self.tokenizer, self.start = list(stop_strings or []), tokenizer, prompt_length

    def hit(self, ids: torch.Tensor) -> torch.Tensor:
        """(B,) bool: which rows' new text contains a stop string."""
        if not self.strings:
            return torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        texts = [self.tokenizer.decode(row[self.start:].tolist()) for row in ids]
        return torch.tensor([any(s in t for s in self.strings) for t in texts], device=ids.device)


# --------------------------------------------------------------------------------------------
# Greedy decoding and sampling
# --------------------------------------------------------------------------------------------


def _as_config(config: GenerationConfig | None, kwargs: dict[str, Any]) -> GenerationConfig:
    """``config`` with ``kwargs`` applied (a new ``GenerationConfig`` when there is none)."""
    if "max_length" in kwargs:
        raise ValueError(
            f"max_length={kwargs['max_length']!r} is not a setting here: in transformers it counts the prompt's "
            "tokens too, so a long prompt leaves few or no new tokens (the manual's section-7 trap, ERRATA 7). "
            "Pass max_new_tokens, the number of tokens to add (transformers' max_length=L is "
            "max_new_tokens = L - prompt length)"
        )
    if config is None:
        return GenerationConfig(**kwargs)
    if not isinstance(config, GenerationConfig):
        raise TypeError("config must be a llm_course.infer.logits_processors.GenerationConfig, "
                        f"got {type(config).__name__}")
    return replace(config, **kwargs) if kwargs else config


def _token_steps(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, config: GenerationConfig,
                 tokenizer: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The greedy/sampling loop: yields (ids, attention_mask, finished) after each new token."""
    generator = None
    if config.seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(config.seed)
    eos = torch.tensor(config.eos_ids, device=input_ids.device)
    stops = _StopStrings(config.stop_strings, tokenizer, input_ids.shape[1])
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    has_eos, has_stops = bool(eos.numel()), bool(stops.strings)
    can_stop = has_eos or has_stops  # can a row finish before max_new_tokens?
    max_length = input_ids.shape[1] + config.max_new_tokens
    window = context_length(model) if config.slide_context else None  # None: the whole text always fits
    if window is not None:
        max_length = min(max_length, window)
    state = DecodeState(max_length=max_length)
    # The ids and the mask of the whole text, allocated once: each step writes one column and the loop hands
    # out views of the filled part (a torch.cat per step would copy the whole text every time).
    B, T = input_ids.shape
    all_ids = torch.empty(B, T + config.max_new_tokens, dtype=input_ids.dtype, device=input_ids.device)
    all_mask = torch.ones(B, T + config.max_new_tokens, dtype=attention_mask.dtype, device=attention_mask.device)
    all_ids[:, :T], all_mask[:, :T] = input_ids, attention_mask
    ids, mask = input_ids, attention_mask
    penalize = config.repetition_penalty != 1.0 or config.do_sample  # anything for process_logits to do?
    for step in range(config.max_new_tokens):
        if window is not None and ids.shape[1] > window:
            # the text has outgrown the context: read its last `window` tokens, recomputed (no cache)
            logits = next_token_logits(model, ids[:, -window:], mask[:, -window:], DecodeState(), use_cache=False)
        else:
            logits = next_token_logits(model, ids, mask, state, config.use_cache)
        if penalize:
            logits = process_logits(logits, ids, config)
        if config.do_sample:
            probs = F.softmax(logits, dim=-1)
            next_id = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            next_id = logits.argmax(dim=-1)
        if can_stop:
            next_id = torch.where(finished, torch.full_like(next_id, config.pad_id), next_id)  # finished rows: pad
        all_ids[:, T + step] = next_id
        ids, mask = all_ids[:, : T + step + 1], all_mask[:, : T + step + 1]
        if has_eos:
            finished |= torch.isin(next_id, eos)
        if has_stops:
            finished |= stops.hit(ids)
        yield ids, mask, finished
        if can_stop and bool(finished.all()):  # (without eos or stop strings nothing finishes early: no check)
            return


# --------------------------------------------------------------------------------------------
# The entry points
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def generate(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    config: GenerationConfig | None = None,
    *,
    tokenizer: Any = None,
    streamer: Any = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Continue ``input_ids`` with ``model`` and return the ids, prompt included. Chapter 07.

    ``model``: the course's ``GPT`` or a transformers causal LM. ``input_ids``: (B, T) or (T,), left-padded
    with ``attention_mask`` (0 = padding) when the prompts differ in length. Settings: a
    ``GenerationConfig`` and/or its fields as keyword arguments (``max_new_tokens=40, do_sample=True,
    top_p=0.9, seed=0``; ``slide_context=True`` to go past the context window). ``tokenizer``: needed for
    ``stop_strings``. ``streamer``: an object with
    ``put(ids)`` and ``end()`` (transformers' ``TextStreamer`` works), given each new token as it is made.

    Returns (B * num_return_sequences, T + generated) ids like transformers' ``generate``: rows that stop
    early are filled with ``pad_token_id``; beam search returns the ``num_return_sequences`` best per
    prompt, best first. Raises ``ValueError`` for invalid settings and for a prompt that does not fit the
    context window with ``max_new_tokens`` more tokens (shorten it or ask for fewer tokens).
    """
    config = _as_config(config, kwargs)
    input_ids, attention_mask = _check_inputs(model, input_ids, attention_mask, config)
    with eval_mode(model):
        if config.num_beams > 1:
            return _generate_beams(model, input_ids, attention_mask, config)
        if config.num_return_sequences > 1:  # sampling n sequences per prompt: repeat each prompt n times
            input_ids = input_ids.repeat_interleave(config.num_return_sequences, dim=0)
            attention_mask = attention_mask.repeat_interleave(config.num_return_sequences, dim=0)
        ids = input_ids
        if streamer is not None:
            streamer.put(input_ids.cpu())
        for ids, _, _ in _token_steps(model, input_ids, attention_mask, config, tokenizer):
            if streamer is not None:
                streamer.put(ids[:, -1].cpu())
        if streamer is not None:
            streamer.end()
        return ids.contiguous()  # a view of _token_steps' buffer: its own memory when rows stopped early


def _generate_beams(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    config: GenerationConfig) -> torch.Tensor:
    """Beam search prompt by prompt; the results padded to one tensor (right-padded with pad_id)."""
    rows = []
    for prompt, mask in zip(input_ids, attention_mask):
        prompt = prompt[mask.bool()][None]  # this prompt without its padding
        best = beam_search(model, prompt, config)
        rows += [ids for _, ids in best]
    width = max(r.shape[0] for r in rows)
    out = torch.full((len(rows), width), config.pad_id, dtype=torch.long, device=input_ids.device)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
    return out


@torch.no_grad()
def stream(
    model: nn.Module,
    tokenizer: Any,
    prompt: str,
    config: GenerationConfig | None = None,
    **kwargs: Any,
) -> Iterator[str]:
    """Yield the continuation of ``prompt`` piece by piece, as it is generated. Chapter 07.

    One prompt, greedy or sampling (not beam search: its best text is only known at the end). Each
    piece is the newly decoded text; a token that ends inside a multi-byte character (Cyrillic, emoji)
    is held back until the character is complete, so the pieces joined equal the decoded continuation.
    The prompt's text is encoded as plain text (special-token strings in it are not control tokens).
    """
    config = _as_config(config, kwargs)
    if config.num_beams > 1:
        raise ValueError("stream() decodes one token at a time; beam search (num_beams > 1) only knows its best "
                         "text at the end: use generate()")
    check_str("prompt", prompt, non_empty=True)
    ids = torch.tensor([encode_plain(tokenizer, prompt)])
    input_ids, attention_mask = _check_inputs(model, ids, None, config)
    start, shown = input_ids.shape[1], ""
    with eval_mode(model):
        for ids, _, _ in _token_steps(model, input_ids, attention_mask, config, tokenizer):
            text = tokenizer.decode(ids[0, start:].tolist())
            if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for the next token
                continue
            if len(text) > len(shown):
                yield text[len(shown):]
                shown = text
        text = tokenizer.decode(ids[0, start:].tolist())
        if len(text) > len(shown):
            yield text[len(shown):]


# --------------------------------------------------------------------------------------------
# Judging continuations
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def sequence_logprob(model: nn.Module, ids: torch.Tensor, prompt_length: int) -> float:
    """Total log-probability (nats) that ``model`` gives the tokens of ``ids`` (T,) after the prompt. Chapter 07.

    What beam search maximises (before its length penalty); greedy and sampling only ever look one token
    ahead, so they usually end lower.
    """
    ids = ids.reshape(1, -1).to(next(model.parameters()).device)
    check_int("prompt_length", prompt_length, 1, ids.shape[1] - 1, hint="some tokens must follow the prompt")
    with eval_mode(model):
        log_probs = F.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)  # position t predicts t + 1
    targets = ids[0, prompt_length:]
    return float(log_probs[prompt_length - 1:].gather(1, targets[:, None]).sum())


def distinct_n(texts: Sequence[str] | str, n: int = 2) -> float:
    """Distinct word n-grams / all word n-grams over ``texts``: 1.0 = no repetition. Chapter 07.

    A cheap measure of how repetitive a decoding strategy is (Li et al., 2016): greedy and beam search on
    a small model loop ("the function object is a function object ..."), sampling does not.
    """
    if isinstance(texts, str):
        texts = [texts]
    grams = [tuple(words[i:i + n]) for t in texts for words in [t.split()] for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0
