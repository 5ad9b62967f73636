"""BERT's masked-LM objective, the data side: inputs, masked batches, what masking did, guesses. Chapter 04.

A masked LM sees ``[CLS] text [SEP]`` with about 15% of the real tokens hidden (80% become ``[MASK]``,
10% a random token, 10% stay) and is scored only where something was hidden. ``bert_inputs`` makes
the padded rows, ``mlm_batch`` draws and masks a batch of them (with ``llm_course.nn.objectives.mask_tokens``),
``masking_stats`` measures what a masking function did (the 15% / 80-10-10 check of notebook 04),
and ``fill_mask`` / ``mlm_accuracy`` show what a trained masked LM guesses. The tokenizer must know
BERT's special tokens (``llm_course.train.recipe.BERT_SPECIALS``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_course.core.checks import check_int
from llm_course.core.runtime import eval_mode
from llm_course.nn.objectives import IGNORE_INDEX, mask_tokens
from llm_course.text.tokenizer import ByteLevelBPETokenizer
from llm_course.train.recipe import BERT_SPECIALS

__all__ = ["bert_inputs", "mlm_batch", "masking_stats", "fill_mask", "mlm_accuracy"]


def _special_id(tokenizer: ByteLevelBPETokenizer, token: str) -> int:
    if token not in tokenizer.special_tokens:
        raise ValueError(f"the tokenizer has no {token} token; train it with special_tokens={list(BERT_SPECIALS)}")
    return tokenizer.special_tokens[token]


def bert_inputs(
    tokenizer: ByteLevelBPETokenizer, texts: Sequence[str], max_length: int = 64
) -> dict[str, torch.Tensor]:
    """``[CLS] text [SEP] [PAD] ...`` for every text: ``{input_ids, attention_mask}``, (N, L). Chapter 04.

    Texts longer than ``max_length - 2`` tokens are cut; rows are padded on the right to the longest
    one (L <= max_length) with attention_mask 0. The tokenizer needs BERT's special tokens
    (``BERT_SPECIALS``).
    """
    cls_id, sep_id, pad_id = (_special_id(tokenizer, t) for t in ("[CLS]", "[SEP]", "[PAD]"))
    if isinstance(texts, str) or not texts:
        raise TypeError("texts must be a non-empty list of strings")
    check_int("max_length", max_length, minimum=3, hint="[CLS], a token, [SEP]")
    rows = [[cls_id, *tokenizer.encode(t, allowed_special="none")[: max_length - 2], sep_id] for t in texts]
    L = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), L), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(r)
        attention_mask[i, : len(r)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def mlm_batch(inputs: dict[str, torch.Tensor], tokenizer: ByteLevelBPETokenizer, batch_size: int,
              generator: torch.Generator, mlm_probability: float = 0.15) -> dict[str, torch.Tensor]:
    """A random masked-LM batch from ``bert_inputs``' rows: ``{input_ids, attention_mask, labels}``. Chapter 04.

    Picks ``batch_size`` rows, cuts the padding columns no row in the batch needs, and masks them with
    ``mask_tokens`` (15% of the real, non-special tokens; 80% [MASK] / 10% random / 10% unchanged).
    """
    rows = torch.randint(inputs["input_ids"].shape[0], (batch_size,), generator=generator)
    attention_mask = inputs["attention_mask"][rows]
    L = int(attention_mask.sum(dim=1).max())
    input_ids, attention_mask = inputs["input_ids"][rows, :L], attention_mask[:, :L]
    specials = [tokenizer.special_tokens[t] for t in BERT_SPECIALS if t in tokenizer.special_tokens]
    masked, labels = mask_tokens(input_ids, _special_id(tokenizer, "[MASK]"), tokenizer.vocab_size, specials,
                                 mlm_probability=mlm_probability, generator=generator, attention_mask=attention_mask)
    return {"input_ids": masked, "attention_mask": attention_mask, "labels": labels}


def masking_stats(input_ids: torch.Tensor, masked_ids: torch.Tensor, labels: torch.Tensor,
                  special_ids: Sequence[int], mask_token_id: int,
                  attention_mask: torch.Tensor | None = None) -> dict[str, float]:
    """What a masking function did, as fractions (for the 15% / 80-10-10 check). Chapter 04.

    ``selected``: share of ordinary (real, non-special) tokens that got a label; ``specials_selected``:
    share of special tokens ([CLS], [SEP], [PAD], ...) that got one (should be 0); ``padding_selected``:
    share of padding positions (attention_mask 0) that got one (should be 0). Of the selected tokens:
    ``to_mask`` became [MASK], ``to_random`` became another token, ``unchanged`` kept their id (a random
    replacement that drew the original id counts here: 1 in the vocabulary size).
    """
    selected = labels != IGNORE_INDEX
    special = torch.isin(input_ids, torch.tensor(list(special_ids), dtype=input_ids.dtype))
    real = attention_mask.bool() if attention_mask is not None else torch.ones_like(selected)
    ordinary = real & ~special
    n_sel = max(int(selected.sum()), 1)

    def share(part: torch.Tensor, whole: torch.Tensor) -> float:
        return float((part & whole).sum()) / max(int(whole.sum()), 1)

    stats = {
        "selected": share(selected, ordinary),
        "specials_selected": share(selected, special & real),
        "to_mask": float((selected & (masked_ids == mask_token_id)).sum()) / n_sel,
        "to_random": float((selected & (masked_ids != mask_token_id) & (masked_ids != input_ids)).sum()) / n_sel,
        "unchanged": float((selected & (masked_ids == input_ids)).sum()) / n_sel,
    }
    if attention_mask is not None:
        stats["padding_selected"] = share(selected, ~real)
    return stats


@torch.no_grad()
def fill_mask(model: nn.Module, tokenizer: ByteLevelBPETokenizer, text: str, word: str,
              k: int = 5) -> list[tuple[str, float]]:
    """Hide ``word`` in ``text`` behind [MASK] and return the model's top ``k`` guesses. Chapter 04.

    ``word`` must be one token of ``text`` as the tokenizer cuts it (with its leading space, e.g.
    ``" the"``); its first occurrence is masked. Returns ``[(token text, probability), ...]``.
    """
    batch = bert_inputs(tokenizer, [text], max_length=10_000)
    ids = batch["input_ids"]
    target = tokenizer.encode(word, allowed_special="none")
    if len(target) != 1:
        raise ValueError(f"{word!r} is {len(target)} tokens for this tokenizer; pick a word that is one token "
                         f"(its pieces: {[tokenizer.decode([i]) for i in target]})")
    where = (ids[0] == target[0]).nonzero()
    if where.numel() == 0:
        raise ValueError(f"{word!r} is not a token of {text!r} (mind the leading space: ' the', not 'the')")
    position = int(where[0])
    ids[0, position] = _special_id(tokenizer, "[MASK]")
    with eval_mode(model):
        logits = model(ids, attention_mask=batch["attention_mask"]).logits[0, position]  # (V,)
    probs = F.softmax(logits.float(), dim=-1)
    top = torch.topk(probs, k)
    return [(tokenizer.decode([int(i)]), float(p)) for p, i in zip(top.values, top.indices)]


def mlm_accuracy(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """How often a masked LM's top guess is the hidden token, on one masked ``batch``. Chapter 04.

    ``batch``: ``input_ids``, ``attention_mask`` and ``labels`` (-100 where nothing is hidden), e.g. from
    ``mlm_batch``. Returns ``accuracy``, the ``baseline`` of always guessing the most frequent hidden
    token, and ``hidden`` (how many positions were scored).
    """
    labels = batch["labels"]
    hidden = labels != IGNORE_INDEX
    if not bool(hidden.any()):
        raise ValueError("the batch hides no tokens (all labels are -100); mask some with mask_tokens/mlm_batch")
    with eval_mode(model):
        device = next(model.parameters()).device
        with torch.no_grad():
            logits = model(batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
    guess = logits.argmax(-1).cpu()
    return {
        "accuracy": (guess[hidden] == labels[hidden]).float().mean().item(),
        "baseline": torch.bincount(labels[hidden]).max().item() / int(hidden.sum()),
        "hidden": int(hidden.sum()),
    }
