"""Beam search: keep the ``num_beams`` most probable partial texts, not just the best token. Chapter 07.

Greedy decoding commits to the best next token at every step and can miss a text that is more probable
as a whole. Beam search keeps ``num_beams`` candidate texts ("beams"), extends each by every token,
and keeps the best by total log-probability; a beam that ends (an end-of-text token, the length limit)
becomes a finished hypothesis, scored as log-probability / length ** ``length_penalty``. It stops by
transformers' ``early_stopping`` rules and returns the ``num_return_sequences`` best, so its ids equal
``model.generate(num_beams=...)``'s. Settings come from ``llm_course.infer.logits_processors.GenerationConfig``;
the model is asked through ``llm_course.infer.decode_step``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_course.infer.decode_step import DecodeState, next_token_logits, reorder_cache
from llm_course.infer.logits_processors import GenerationConfig, apply_repetition_penalty

__all__ = ["beam_search"]


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


def beam_search(model: nn.Module, prompt: torch.Tensor, config: GenerationConfig) -> list[tuple[float, torch.Tensor]]:
    """Beam search for one prompt (1, T): the ``num_return_sequences`` best (score, ids), best first. Chapter 07.

    Each step every beam proposes every token; the candidates are ranked by total log-probability and
    the best 2 x num_beams kept (so that enough remain when some end). A candidate among the top
    num_beams that ends (an eos token, or the length limit) becomes a finished hypothesis, scored as its
    log-probability / generated_length ** length_penalty; the best num_beams unfinished candidates carry
    on. Stopping: early_stopping=True once num_beams hypotheses are finished; False once the best running
    beam, scored at its current length, cannot beat the worst finished one; "never" as False but with
    the most favourable length when length_penalty > 0. These are transformers' rules, so the results
    match ``model.generate(num_beams=...)`` token for token. ``llm_course.infer.generation.generate`` calls
    it once per prompt when ``num_beams > 1``.
    """
    K, T0 = config.num_beams, prompt.shape[1]
    max_len = T0 + config.max_new_tokens
    eos = torch.tensor(config.eos_ids, device=prompt.device)
    keep = max(2, 1 + len(config.eos_ids)) * K  # candidates kept each step
    finished = _Hypotheses(K, config.length_penalty)
    beams = prompt.repeat(K, 1)  # (K, T): every beam starts as the prompt ...
    scores = torch.full((K,), -1e9, device=prompt.device)
    scores[0] = 0.0  # ... but only the first one is live, so the first step does not pick K copies
    state = DecodeState(max_length=max_len)
    improvable = True
    for cur_len in range(T0, max_len):
        mask = torch.ones_like(beams)
        log_probs = F.log_softmax(next_token_logits(model, beams, mask, state, config.use_cache), dim=-1)  # (K, V)
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
        reorder_cache(state, from_beam[survivors])
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
