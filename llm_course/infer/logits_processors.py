"""How to decode: the settings (``GenerationConfig``) and the logits processors they switch on. Chapter 07.

At every step a causal LM gives one score (logit) per vocabulary token for the next token. Before a
token is picked, the scores are reshaped, one function per idea, each (B, V) -> (B, V):

* ``apply_repetition_penalty``: tokens already in the text lose probability (CTRL's rule);
* ``apply_temperature``: divide the logits (< 1 sharper, > 1 flatter);
* ``top_k_filter``: keep the k most likely tokens;
* ``top_p_filter``: keep the smallest set of top tokens whose probability reaches p (the "nucleus").

``process_logits`` applies them in transformers' order (the penalty always, the other three only when
sampling); ``next_token_distributions`` returns the distribution after each stage, for the sampling
explorer's figure. The filters give exactly what transformers' ``RepetitionPenaltyLogitsProcessor``,
``TemperatureLogitsWarper``, ``TopKLogitsWarper`` and ``TopPLogitsWarper`` give (the tests check it).
The decoding loops that use them are in ``llm_course.infer.generation`` and ``llm_course.infer.beam_search``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llm_course.core.checks import check_choice, check_int, check_positive, check_positive_int, check_probability

__all__ = [
    "GenerationConfig",
    "apply_repetition_penalty",
    "apply_temperature",
    "top_k_filter",
    "top_p_filter",
    "process_logits",
    "next_token_distributions",
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
    slide_context: what to do when the prompt plus max_new_tokens is longer than the model's context
    window. False (default, as transformers): a ValueError. True: keep going, each step reading only the
    last ``context_length(model)`` tokens (recomputed without the cache once the text outgrows the
    window), the way chapter 04 samples from its small GPT and the ONNX model of chapter 07 decodes.
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
    slide_context: bool = False

    def __post_init__(self) -> None:
        check_int("max_new_tokens", self.max_new_tokens, minimum=0)
        check_positive_int("num_beams", self.num_beams)
        check_positive_int("num_return_sequences", self.num_return_sequences)
        check_int("top_k", self.top_k, minimum=0, allow_none=True, hint="0 or None turns top-k off")
        check_positive("temperature", self.temperature, hint="it divides the logits, so 0 would divide by zero. "
                       "For the most likely token every time use do_sample=False (greedy decoding)")
        check_probability("top_p", self.top_p, low_open=True, hint="1 keeps every token")
        check_positive("repetition_penalty", self.repetition_penalty,
                       hint="1 = no penalty, > 1 discourages repeats")
        check_choice("early_stopping", self.early_stopping, (True, False, "never"))
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
        if self.slide_context and self.num_beams > 1:
            raise ValueError("slide_context=True is for greedy decoding and sampling; beam search keeps whole "
                             "texts (num_beams > 1): ask for fewer tokens so that they fit the context window")
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
    check_positive("temperature", temperature, hint="use greedy decoding for 'temperature 0'")
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep the ``k`` highest logits of each row, set the rest to -inf. Chapter 07.

    Tokens tied with the k-th best are kept too (as transformers). ``k`` None or 0: no filtering;
    k larger than the vocabulary keeps everything.
    """
    if k is None or k == 0:
        return logits
    check_int("top_k", k, minimum=0, hint="0 or None: off")
    kth_best = torch.topk(logits, min(k, logits.shape[-1])).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth_best, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the most likely tokens until their probability reaches ``p``. Chapter 07.

    Sort ascending, add up the probabilities from the least likely token, and drop every token whose
    running total is still <= 1 - p: what remains is the smallest set of top tokens with probability
    >= p. The most likely token always stays. ``p = 1``: nothing is dropped. (The same steps as
    transformers' ``TopPLogitsWarper``, so ties at the boundary are cut the same way.)
    """
    check_probability("top_p", p, low_open=True, hint="1 keeps every token")
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
    sampling explorer (``llm_course.widgets.sampling_explorer.SamplingExplorer``) draws, in the
    order of ``llm_course.viz.distributions.STAGES``.
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
