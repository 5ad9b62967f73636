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

Everything runs with the key/value cache (``use_cache=True``): each step feeds only the newest token and
reuses the keys and values of the earlier ones (chapter 03's ``KVCache``), so a step costs O(T) instead of
recomputing O(T) positions. The same code drives the course's ``GPT`` and transformers causal LMs
(``GPT2LMHeadModel`` and friends): both take ``input_ids, attention_mask, position_ids, past_key_values,
use_cache`` and return ``logits`` and ``past_key_values``.

The filters give exactly what transformers' ``TemperatureLogitsWarper``, ``TopKLogitsWarper``,
``TopPLogitsWarper`` and ``RepetitionPenaltyLogitsProcessor`` give, applied in the same order; greedy and
beam search give the same token ids as ``model.generate`` (the tests check both).

Where the manual goes wrong (ERRATA sections 7 and 8): section 7's ``generate_text`` and
``beam_search_generation`` pass ``max_length=100``, which in transformers counts the prompt's tokens too:
a prompt of 95 tokens gets 5 new ones, and one of 100 or more gets none (current transformers raises a
``ValueError``). Here the only length setting is ``max_new_tokens``, and ``max_length=`` is an error that
says why. Section 8's chat bot (0.7), classifier (0.1) and summarizer (0.7, with ``top_p=0.9``) pass a
``temperature`` without ``do_sample=True``: transformers then decodes greedily and the temperature does
nothing (a warning at most). Here that combination is an error that says so.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_course.infer.static_cache import StaticCacheDecoder
from llm_course.text.tokenizer import ByteLevelBPETokenizer

__all__ = [
    "GenerationConfig",
    "apply_repetition_penalty",
    "apply_temperature",
    "top_k_filter",
    "top_p_filter",
    "process_logits",
    "next_token_distributions",
    "generate",
    "stream",
    "context_length",
    "sequence_logprob",
    "distinct_n",
]


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


@dataclass
class GenerationConfig:
    """How to decode. Chapter 07. Field names and defaults as in ``transformers.GenerationConfig``.

    max_new_tokens: tokens to add (0 returns the prompt). do_sample: sample (True) or pick the best (False).
    temperature (> 0), top_k (None or 0: off), top_p (in (0, 1]; 1: off): only used when sampling.
    repetition_penalty (> 0; 1: off; > 1 discourages repeats). num_beams: 1 = greedy/sampling, > 1 = beam
    search, with length_penalty (the score is log-probability / length ** length_penalty),
    early_stopping (True, False or "never", as transformers) and num_return_sequences (the n best).
    eos_token_id: a token id or a list of them that ends a sequence; pad_token_id fills finished rows
    (default: the first eos id, else 0). stop_strings: strings that end generation once they appear in
    the new text (needs a tokenizer to decode). seed: seeds the sampler (None: torch's global RNG).
    use_cache: reuse keys/values (True) or recompute the whole text every step (False; same result).
    """

    max_new_tokens: int = 20
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    num_return_sequences: int = 1
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    stop_strings: str | list[str] | None = None
    seed: int | None = None
    use_cache: bool = True

    def __post_init__(self) -> None:
        def integer(name: str, value: Any, low: int) -> None:
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")

        integer("max_new_tokens", self.max_new_tokens, 0)
        integer("num_beams", self.num_beams, 1)
        integer("num_return_sequences", self.num_return_sequences, 1)
        if self.top_k is not None:
            integer("top_k", self.top_k, 0)
        if not isinstance(self.temperature, (int, float)) or not math.isfinite(self.temperature) or self.temperature <= 0:
            raise ValueError(
                f"temperature must be a number > 0, got {self.temperature!r}: it divides the logits, so 0 would "
                "divide by zero. For the most likely token every time use do_sample=False (greedy decoding)"
            )
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 keeps every token), got {self.top_p!r}")
        if not isinstance(self.repetition_penalty, (int, float)) or not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0 (1 = no penalty, > 1 discourages repeats), "
                             f"got {self.repetition_penalty!r}")
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        if not self.do_sample:
            ignored = [f"{k}={v!r}" for k, v, off in (("temperature", self.temperature, 1.0),
                                                       ("top_k", self.top_k, None), ("top_p", self.top_p, 1.0))
                       if v != off and not (k == "top_k" and v == 0)]
            if ignored:
                raise ValueError(
                    f"{', '.join(ignored)} only affect sampling, but do_sample=False decodes greedily, so "
                    "they would be silently ignored (the manual's section-8 trap, ERRATA 8). Pass do_sample=True to "
                    "sample, or drop them for greedy decoding"
                )
        if self.num_beams > 1 and self.do_sample:
            raise ValueError("beam search with sampling (num_beams > 1 and do_sample=True) is not implemented "
                             "here; use num_beams=1 to sample or do_sample=False for beam search")
        if self.num_return_sequences > self.num_beams and not self.do_sample:
            raise ValueError(
                f"num_return_sequences={self.num_return_sequences} needs at least as many beams "
                f"(num_beams={self.num_beams}): beam search returns its n best; or sample with do_sample=True"
            )
        if isinstance(self.stop_strings, str):
            self.stop_strings = [self.stop_strings]
        if self.stop_strings is not None and not all(isinstance(s, str) and s for s in self.stop_strings):
            raise ValueError(f"stop_strings must be non-empty strings, got {self.stop_strings!r}")

    @property
    def eos_ids(self) -> list[int]:
        """The end-of-sequence ids as a list (empty if none)."""
        if self.eos_token_id is None:
            return []
        return [self.eos_token_id] if isinstance(self.eos_token_id, int) else list(self.eos_token_id)

    @property
    def pad_id(self) -> int:
        """What fills the rows that have finished."""
        if self.pad_token_id is not None:
            return self.pad_token_id
        return self.eos_ids[0] if self.eos_ids else 0


# --------------------------------------------------------------------------------------------
# Logits processors: one function per idea, each (B, V) -> (B, V)
# --------------------------------------------------------------------------------------------


def apply_repetition_penalty(logits: torch.Tensor, input_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make every token that already occurs in ``input_ids`` less likely. Chapter 07.

    CTRL's rule (as transformers'): a positive logit is divided by ``penalty``, a negative one multiplied,
    so with ``penalty > 1`` the token always loses probability. The prompt counts too. logits: (B, V);
    input_ids: (B, T).
    """
    if penalty == 1.0:
        return logits
    seen = torch.gather(logits, 1, input_ids)  # (B, T): the current logit of each token in the text
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return logits.scatter(1, input_ids, seen)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide the logits by ``temperature`` (> 0): < 1 sharpens the distribution, > 1 flattens it. Chapter 07."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r} (use greedy decoding for 'temperature 0')")
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep the ``k`` highest logits of each row, set the rest to -inf. Chapter 07.

    Tokens tied with the k-th best are kept too (as transformers). ``k`` None or 0: no filtering;
    k larger than the vocabulary keeps everything.
    """
    if k is None or k == 0:
        return logits
    if k < 0:
        raise ValueError(f"top_k must be >= 0 (0 or None: off), got {k}")
    kth_best = torch.topk(logits, min(k, logits.shape[-1])).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth_best, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the most likely tokens until their probability reaches ``p``. Chapter 07.

    Sort ascending, add up the probabilities from the least likely token, and drop every token whose
    running total is still <= 1 - p: what remains is the smallest set of top tokens with probability
    >= p. The most likely token always stays. ``p = 1``: nothing is dropped. (The same steps as
    transformers' ``TopPLogitsWarper``, so ties at the boundary are cut the same way.)
    """
    if not 0 < p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {p!r}")
    sorted_logits, order = torch.sort(logits, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative <= (1 - p)
    drop_sorted[..., -1:] = False  # always keep the best token
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def process_logits(logits: torch.Tensor, input_ids: torch.Tensor, config: GenerationConfig) -> torch.Tensor:
    """All of ``config``'s processors, in transformers' order. Chapter 07.

    Repetition penalty first (it changes the scores themselves), then, when sampling, temperature,
    top-k and top-p (they reshape the distribution that is sampled from).
    """
    logits = apply_repetition_penalty(logits, input_ids, config.repetition_penalty)
    if config.do_sample:
        logits = apply_temperature(logits, config.temperature)
        logits = top_k_filter(logits, config.top_k)
        logits = top_p_filter(logits, config.top_p)
    return logits


def next_token_distributions(logits: torch.Tensor, input_ids: torch.Tensor | None = None,
                             config: GenerationConfig | None = None) -> dict[str, torch.Tensor]:
    """The next-token probabilities after each processing stage, for one row of logits (V,). Chapter 07.

    Returns ``{"model": ..., "repetition penalty": ..., "temperature": ..., "top-k": ..., "top-p": ...}``,
    each a (V,) probability vector (stages that are off repeat the previous one). This is what the
    sampling explorer (``llm_course.widgets.SamplingExplorer``) draws.
    """
    config = config or GenerationConfig(do_sample=True)
    x = logits.detach().float().reshape(1, -1)
    ids = input_ids.reshape(1, -1) if input_ids is not None else torch.zeros(1, 0, dtype=torch.long)
    stages = {"model": x}
    x = apply_repetition_penalty(x, ids, config.repetition_penalty) if ids.numel() else x
    stages["repetition penalty"] = x
    x = apply_temperature(x, config.temperature)
    stages["temperature"] = x
    x = top_k_filter(x, config.top_k)
    stages["top-k"] = x
    x = top_p_filter(x, config.top_p)
    stages["top-p"] = x
    return {name: F.softmax(v, dim=-1)[0] for name, v in stages.items()}


# --------------------------------------------------------------------------------------------
# Talking to a model: the course's GPT or a transformers causal LM
# --------------------------------------------------------------------------------------------


def context_length(model: nn.Module) -> int | None:
    """The longest sequence ``model`` can take (its position table), or None if unlimited. Chapter 07."""
    config = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def _is_course_model(model: nn.Module) -> bool:
    return type(model).__module__.startswith("llm_course.")


@dataclass
class _State:
    """The model's cache plus what the next call needs. ``past`` is the course's tuple of (k, v) per layer
    or a transformers ``Cache`` object."""

    past: Any = None
    fed: int = 0  # how many tokens of the sequence the cache already holds
    padded: bool | None = None  # does any prompt have padding? (generated tokens never do)
    max_length: int = 0  # prompt + new tokens: the course's GPT then decodes with a preallocated cache
    decoder: StaticCacheDecoder | None = None


def _forward(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, state: _State, use_cache: bool) -> torch.Tensor:
    """Logits (B, V) for the token after ``ids`` (B, T); feeds only the tokens the cache lacks."""
    if use_cache and state.max_length and StaticCacheDecoder.supports(model):  # the lean loop (static_cache.py)
        if state.decoder is None:
            state.decoder = StaticCacheDecoder(model, ids.shape[0], state.max_length)
            return state.decoder.prefill(ids, mask)
        assert ids.shape[1] == state.decoder.length + 1, "the lean decoder takes exactly one new token per step"
        return state.decoder.step(ids[:, -1])
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


def _reorder_cache(state: _State, index: torch.Tensor) -> None:
    """Keep the cache rows of the beams that survived (``index``: which old row each new row copies)."""
    if state.decoder is not None:
        state.decoder.reorder(index)
    if state.past is None:
        return
    if hasattr(state.past, "reorder_cache"):  # a transformers Cache
        state.past.reorder_cache(index)
    else:  # the course's tuple of (keys, values) per layer
        state.past = tuple((k.index_select(0, index), v.index_select(0, index)) for k, v in state.past)


def _check_inputs(model: nn.Module, input_ids: Any, attention_mask: Any, config: GenerationConfig
                  ) -> tuple[torch.Tensor, torch.Tensor]:
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
    if limit is not None and needed > limit:
        raise ValueError(
            f"the prompt ({input_ids.shape[1]} tokens) plus max_new_tokens ({config.max_new_tokens}) is {needed} "
            f"tokens, longer than the model's context window of {limit}: shorten the prompt (keep its last "
            f"{max(limit - config.max_new_tokens, 0)} tokens) or ask for fewer new tokens"
        )
    device = next(model.parameters()).device
    return input_ids.to(device), attention_mask.to(device)


# --------------------------------------------------------------------------------------------
# Stopping
# --------------------------------------------------------------------------------------------


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
        raise TypeError(f"config must be a llm_course.infer.generation.GenerationConfig, got {type(config).__name__}")
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
    state, ids, mask = _State(max_length=input_ids.shape[1] + config.max_new_tokens), input_ids, attention_mask
    for _ in range(config.max_new_tokens):
        logits = process_logits(_forward(model, ids, mask, state, config.use_cache), ids, config)
        if config.do_sample:
            probs = F.softmax(logits, dim=-1)
            next_id = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            next_id = logits.argmax(dim=-1)
        next_id = torch.where(finished, torch.full_like(next_id, config.pad_id), next_id)  # finished rows: pad
        ids = torch.cat([ids, next_id[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(next_id)[:, None]], dim=1)
        if eos.numel():
            finished |= torch.isin(next_id, eos)
        finished |= stops.hit(ids)
        yield ids, mask, finished
        if bool(finished.all()):
            return


# --------------------------------------------------------------------------------------------
# Beam search
# --------------------------------------------------------------------------------------------


@dataclass
class _Hypotheses:
    """The best finished sequences of one prompt, best first, at most ``n`` (transformers' bookkeeping)."""

    n: int
    length_penalty: float
    items: list[tuple[float, torch.Tensor]] = field(default_factory=list)

    def add(self, score: float, ids: torch.Tensor) -> None:
        self.items.append((score, ids))
        self.items.sort(key=lambda item: -item[0])
        del self.items[self.n:]

    @property
    def full(self) -> bool:
        return len(self.items) >= self.n

    @property
    def worst(self) -> float:
        return self.items[-1][0] if self.full else -1e9


def _beam_search_one(model: nn.Module, prompt: torch.Tensor, config: GenerationConfig) -> list[tuple[float, torch.Tensor]]:
    """Beam search for one prompt (1, T): the ``num_return_sequences`` best (score, ids), best first.

    Each step every beam proposes every token; the candidates are ranked by total log-probability and
    the best 2 x num_beams kept (so that enough remain when some end). A candidate among the top
    num_beams that ends (an eos token, or the length limit) becomes a finished hypothesis, scored as its
    log-probability / generated_length ** length_penalty; the best num_beams unfinished candidates carry
    on. Stopping: early_stopping=True once num_beams hypotheses are finished; False once the best running
    beam, scored at its current length, cannot beat the worst finished one; "never" as False but with
    the most favourable length when length_penalty > 0. These are transformers' rules, so the results
    match ``model.generate(num_beams=...)`` token for token.
    """
    K, T0 = config.num_beams, prompt.shape[1]
    max_len = T0 + config.max_new_tokens
    eos = torch.tensor(config.eos_ids, device=prompt.device)
    keep = max(2, 1 + len(config.eos_ids)) * K  # candidates kept each step
    finished = _Hypotheses(K, config.length_penalty)
    beams = prompt.repeat(K, 1)  # (K, T): every beam starts as the prompt ...
    scores = torch.full((K,), -1e9, device=prompt.device)
    scores[0] = 0.0  # ... but only the first one is live, so the first step does not pick K copies
    state = _State(max_length=max_len)
    improvable = True
    for cur_len in range(T0, max_len):
        mask = torch.ones_like(beams)
        log_probs = F.log_softmax(_forward(model, beams, mask, state, config.use_cache), dim=-1)  # (K, V)
        log_probs = apply_repetition_penalty(log_probs, beams, config.repetition_penalty)
        V = log_probs.shape[-1]
        total = (log_probs + scores[:, None]).reshape(-1)  # (K * V,) every continuation's log-probability
        top_scores, top_index = torch.topk(total, keep)
        from_beam, token = top_index // V, top_index % V
        candidates = torch.cat([beams[from_beam], token[:, None]], dim=1)  # (keep, T + 1)
        ends = torch.isin(token, eos) if eos.numel() else torch.zeros_like(token, dtype=torch.bool)
        ends |= cur_len + 1 >= max_len  # the length limit ends every candidate
        # finished hypotheses: only candidates ranked in the top K count (the rest are spares)
        can_add = improvable and not (finished.full and config.early_stopping is True)
        if can_add:
            for rank in range(K):
                if bool(ends[rank]):
                    finished.add(float(top_scores[rank]) / (cur_len + 1 - T0) ** config.length_penalty,
                                 candidates[rank])
        # the K best candidates that did not end carry on
        running = top_scores + ends.float() * -1e9
        survivors = torch.topk(running, K).indices
        beams, scores = candidates[survivors], running[survivors]
        _reorder_cache(state, from_beam[survivors])
        # can a running beam still beat the worst finished hypothesis?
        if config.early_stopping == "never" and config.length_penalty > 0:
            best_length = max_len - T0
        else:
            best_length = cur_len + 1 - T0
        best_possible = float(scores[0]) / best_length ** config.length_penalty
        improvable = improvable and (not finished.full or best_possible > finished.worst)
        if not improvable or (finished.full and config.early_stopping is True) or bool(ends.all()):
            break
    return finished.items[: config.num_return_sequences]


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
    top_p=0.9, seed=0``). ``tokenizer``: needed for ``stop_strings``. ``streamer``: an object with
    ``put(ids)`` and ``end()`` (transformers' ``TextStreamer`` works), given each new token as it is made.

    Returns (B * num_return_sequences, T + generated) ids like transformers' ``generate``: rows that stop
    early are filled with ``pad_token_id``; beam search returns the ``num_return_sequences`` best per
    prompt, best first. Raises ``ValueError`` for invalid settings and for a prompt that does not fit the
    context window with ``max_new_tokens`` more tokens (shorten it or ask for fewer tokens).
    """
    config = _as_config(config, kwargs)
    input_ids, attention_mask = _check_inputs(model, input_ids, attention_mask, config)
    was_training = model.training
    model.eval()
    try:
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
        return ids
    finally:
        model.train(was_training)


def _generate_beams(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    config: GenerationConfig) -> torch.Tensor:
    """Beam search prompt by prompt; the results padded to one tensor (right-padded with pad_id)."""
    rows = []
    for prompt, mask in zip(input_ids, attention_mask):
        prompt = prompt[mask.bool()][None]  # this prompt without its padding
        best = _beam_search_one(model, prompt, config)
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
    ids = torch.tensor([_encode_plain(tokenizer, prompt)])
    input_ids, attention_mask = _check_inputs(model, ids, None, config)
    start, shown = input_ids.shape[1], ""
    was_training = model.training
    model.eval()
    try:
        for ids, _, finished in _token_steps(model, input_ids, attention_mask, config, tokenizer):
            text = tokenizer.decode(ids[0, start:].tolist())
            if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for the next token
                continue
            if len(text) > len(shown):
                yield text[len(shown):]
                shown = text
        text = tokenizer.decode(ids[0, start:].tolist())
        if len(text) > len(shown):
            yield text[len(shown):]
    finally:
        model.train(was_training)


def _encode_plain(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` with special-token strings kept as text (course or transformers tokenizer)."""
    if not isinstance(text, str) or not text:
        raise ValueError("the prompt must be a non-empty string")
    if isinstance(tokenizer, ByteLevelBPETokenizer):  # the course's tokenizer
        return tokenizer.encode(text, allowed_special="none")
    # a transformers tokenizer: its encode() would silently ignore allowed_special (and turn a typed
    # "<|endoftext|>" into the control token); split_special_tokens keeps such strings as text
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]



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
    if not 0 < prompt_length < ids.shape[1]:
        raise ValueError(f"prompt_length must be between 1 and {ids.shape[1] - 1}, got {prompt_length}")
    was_training = model.training
    model.eval()
    log_probs = F.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)  # position t predicts t + 1
    model.train(was_training)
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
