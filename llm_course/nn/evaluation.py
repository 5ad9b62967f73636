"""Measuring a language model: its loss on one batch and its mean loss on held-out data. Chapter 04.

Every part of the course that scores a model on text it was not trained on (the training loop's
evaluations, the pretraining notebook's bits per character, the model zoo's recorded metrics,
fine-tuning's before/after loss, the long-context chapter's chunked perplexity) calls one function,
``estimate_loss``. It weights each batch's mean loss by the number of tokens the batch scores, so a short
last batch counts for less; ``count_tokens`` says how to count them (causal LM by default: the shifted
targets that are not ``IGNORE_INDEX``; ``count_labels`` for masked LM, whose labels are not shifted).

``model_loss(model, batch)`` is ``model(**batch).loss`` with a clear error when the batch has no labels.
The models are any ``nn.Module`` returning an object with ``.loss`` (the course's and transformers').
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn as nn

from llm_course.core.runtime import eval_mode, module_device, to_device
from llm_course.nn.objectives import IGNORE_INDEX, bits_per_char, count_targets, perplexity

__all__ = ["model_loss", "count_labels", "estimate_loss"]

Batch = Mapping[str, torch.Tensor]  # e.g. {"input_ids": (B, T), "labels": (B, T)}: the model's kwargs


def model_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``model(**batch).loss`` (a 0-dim tensor), with a clear error when the model computed none. Chapter 04."""
    loss = getattr(model(**batch), "loss", None)
    if loss is None:
        raise ValueError("the model returned no loss: the batches need 'labels' (for causal LM: labels = "
                         "input_ids, unshifted)")
    return loss


def count_labels(labels: torch.Tensor) -> int:
    """How many positions a masked-LM batch scores: labels that are not ``IGNORE_INDEX``. Chapter 04.

    Masked-LM labels are not shifted (position t predicts its own token), unlike ``count_targets``'s
    causal-LM labels. Pass it as ``estimate_loss(..., count_tokens=count_labels)``.
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    return int((labels != IGNORE_INDEX).sum())


@torch.no_grad()
def estimate_loss(
    model: nn.Module,
    get_batch: Callable[[int], Batch] | Iterable[Batch],
    num_batches: int | None = None,
    chars_per_token: float | None = None,
    n_chars: int | None = None,
    count_tokens: Callable[[torch.Tensor], int] = count_targets,
) -> dict[str, float]:
    """Mean loss on held-out batches, its perplexity and bits per character. Chapter 04 (pretraining).

    ``get_batch``: ``get_batch(i) -> dict`` for i = 0..num_batches-1, or a re-iterable of batches (its
    first ``num_batches``, or all of them when None, e.g. ``list(sequential_blocks(val_ids, 8, 128))``).
    The mean is weighted by the tokens each batch scores, ``count_tokens(batch["labels"])``: by default
    ``count_targets`` (causal LM: the shifted targets that are not -100); ``count_labels`` for masked LM.
    Bits per character: ``chars_per_token`` (characters per token of this text) gives
    ``loss / (chars_per_token * ln 2)``; ``n_chars`` (the characters the batches cover, when they cover a
    whole text once) gives ``total nats / (n_chars * ln 2)``. Runs under ``eval_mode`` (dropout off; every
    submodule's mode restored afterwards). Returns ``{"loss", "perplexity", "tokens"[, "bits_per_char"]}``.
    """
    if num_batches is None and callable(get_batch):
        raise ValueError("num_batches is needed with a callable get_batch(i) (it has no end)")
    if not callable(get_batch) and iter(get_batch) is get_batch:
        raise TypeError("evaluation batches must be a callable get_batch(i) or a re-iterable (e.g. a list), "
                        "not a one-shot iterator: it would be used up by the first evaluation")
    if not callable(count_tokens):
        raise TypeError(f"count_tokens must be a function labels -> int (e.g. count_targets), got "
                        f"{type(count_tokens).__name__}")
    source = get_batch if callable(get_batch) else iter(get_batch)
    device = module_device(model)
    total_nats, total_tokens, i = 0.0, 0, 0
    with eval_mode(model):
        while num_batches is None or i < num_batches:
            if callable(source):
                raw = source(i)
            else:
                raw = next(source, None)
                if raw is None:  # the end of the list: fewer than num_batches is fine
                    break
            batch = to_device(raw, device, f"evaluation batch {i}")
            n = count_tokens(batch["labels"]) if "labels" in batch else 0
            total_nats += float(model_loss(model, batch)) * n  # the model's loss is a mean over n tokens
            total_tokens += n
            i += 1
    if total_tokens == 0:
        raise ValueError("the evaluation batches contain no scored tokens (all labels are -100?)")
    loss = total_nats / total_tokens
    metrics = {"loss": loss, "perplexity": perplexity(loss), "tokens": total_tokens}
    if chars_per_token is not None:
        metrics["bits_per_char"] = loss / (chars_per_token * math.log(2))
    if n_chars is not None:
        metrics["bits_per_char"] = bits_per_char(total_nats, n_chars)
    return metrics
