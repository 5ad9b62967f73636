"""An embedding of a document longer than the encoder's context. Chapter 09 (best practices).

``long_document_embedding``: split the token ids into chunks that fit the encoder (``document_chunks``),
embed each chunk the way the encoder was trained ([CLS] chunk [SEP], masked mean over real tokens,
padding masked out), then average the chunks weighted by their token counts.

Where the manual goes wrong (ERRATA section 9), reproduced in ``manual_sliding_window_embeddings``: its
"sliding window attention" is not attention at all but chunked embedding, and it

* pads the last chunks with token id 0 and passes **no attention mask**, so the padding is attended to
  (id 0 is "[PAD]" for BERT tokenizers but a real token, "!", for GPT-2's);
* takes the vector of position 0 as a "[CLS] token": only the first chunk starts with [CLS] (the others
  start mid-text), and all-MiniLM-L6-v2 was trained with mean pooling, not [CLS] (a GPT has no [CLS]);
* starts a chunk every ``stride`` tokens up to the very end, so the last chunks are mostly padding, and
  averages the chunks with equal weights, ignoring the overlap and how many real tokens each holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_course.core.checks import check_int, check_positive_int
from llm_course.models.intro import SentenceEncoder, mean_pool

__all__ = ["document_chunks", "long_document_embedding", "manual_sliding_window_embeddings", "manual_defects"]


def document_chunks(n_tokens: int, chunk_length: int, stride: int) -> list[tuple[int, int]]:
    """``(start, end)`` token spans that cover ``n_tokens`` tokens: chunks start every ``stride``. Chapter 09.

    Each span holds at most ``chunk_length`` tokens; the last one ends at ``n_tokens`` (and may be
    shorter). ``stride == chunk_length``: the chunks tile the text; ``stride < chunk_length``:
    neighbours share ``chunk_length - stride`` tokens. ``stride > chunk_length`` would skip tokens: an error.
    """
    n_tokens = check_positive_int("n_tokens", n_tokens)
    chunk_length = check_positive_int("chunk_length", chunk_length)
    stride = check_positive_int("stride", stride)
    if stride > chunk_length:
        raise ValueError(f"stride={stride} is larger than the chunk ({chunk_length} tokens): the "
                         f"{stride - chunk_length} tokens between two chunks would never be read; "
                         f"use stride <= {chunk_length}")
    spans, start = [], 0
    while True:
        spans.append((start, min(start + chunk_length, n_tokens)))
        if start + chunk_length >= n_tokens:
            return spans
        start += stride


@torch.no_grad()
def long_document_embedding(
    encoder: SentenceEncoder,
    text: str,
    chunk_tokens: int = 256,
    stride: int | None = None,
    batch_size: int = 16,
) -> np.ndarray:
    """An L2-normalised embedding of a text of any length. Chapter 09 (long inputs).

    1. The text's token ids (no special tokens) are cut into spans of ``chunk_tokens - 2`` tokens
       starting every ``stride`` tokens (default: no overlap), see ``document_chunks``.
    2. Each span becomes ``[CLS] span [SEP]`` (what the encoder saw in training), right-padded in the
       batch with a real ``attention_mask``, so padding is neither attended to nor averaged.
    3. Each chunk's embedding is the masked mean of its last hidden states (``intro.mean_pool``).
    4. The chunks are averaged weighted by their real token counts, so this is the mean of all token
       vectors: a short last chunk counts for its few tokens, not as much as a full one. With overlap
       (``stride < chunk_tokens - 2``) the shared tokens are counted once per chunk that holds them
       (each time with different context): overlap gives tokens near a border context on both sides,
       at the price of counting them twice and of more compute.

    A text that fits one chunk gets exactly ``encoder.encode([text])[0]``. ``chunk_tokens`` defaults
    to 256, the length all-MiniLM-L6-v2 was trained on (its position table has 512).
    """
    if not isinstance(encoder, SentenceEncoder):
        raise TypeError(f"encoder must be an llm_course.models.intro.SentenceEncoder, got {type(encoder).__name__}")
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    context = encoder.model.config.max_position_embeddings
    chunk_tokens = check_int("chunk_tokens", chunk_tokens, minimum=3, hint="[CLS], at least one token, [SEP]")
    if chunk_tokens > context:
        raise ValueError(f"chunk_tokens={chunk_tokens} is larger than the encoder's context ({context} tokens); "
                         f"use chunk_tokens <= {context} (256 is what all-MiniLM-L6-v2 was trained on)")
    batch_size = check_positive_int("batch_size", batch_size)
    tok = encoder.tokenizer
    ids = tok(text, add_special_tokens=False, verbose=False)["input_ids"]
    if not ids:
        raise ValueError("the text has no tokens: pass a non-empty text")
    span = chunk_tokens - 2  # room for [CLS] and [SEP]
    spans = document_chunks(len(ids), span, span if stride is None else stride)

    total, count = 0.0, 0
    for b in range(0, len(spans), batch_size):
        rows = [[tok.cls_token_id, *ids[start:end], tok.sep_token_id] for start, end in spans[b : b + batch_size]]
        longest = max(len(r) for r in rows)
        input_ids = torch.tensor([r + [tok.pad_token_id] * (longest - len(r)) for r in rows])  # (B, T)
        attention_mask = torch.tensor([[1] * len(r) + [0] * (longest - len(r)) for r in rows])  # 0 = padding
        hidden = encoder.model(input_ids=input_ids.to(encoder.device),
                               attention_mask=attention_mask.to(encoder.device)).last_hidden_state  # (B, T, d)
        chunk_emb = mean_pool(hidden, attention_mask.to(encoder.device))  # (B, d), one vector per chunk
        n_real = attention_mask.sum(1, keepdim=True).to(chunk_emb)  # (B, 1) real tokens per chunk
        total = total + (chunk_emb * n_real).sum(0)  # weighted by token count
        count += int(n_real.sum())
    return F.normalize(total / count, dim=-1).cpu().numpy()


def manual_sliding_window_embeddings(
    model: nn.Module, tokenizer: Any, long_text: str, window_size: int = 512, stride: int = 256
) -> torch.Tensor:
    """The manual's "Sliding window attention", reproduced as printed (ERRATA section 9). Chapter 09.

    Do not use: it zero-pads chunks with no attention mask, takes position 0 as a [CLS] vector, and
    averages overlapping, mostly-padding chunks with equal weights (see the module docstring). Returns
    a (1, hidden) tensor, not normalised. ``model``/``tokenizer``: a transformers encoder and its
    tokenizer, e.g. ``encoder.model, encoder.tokenizer`` of a ``SentenceEncoder``.
    """
    tokens = tokenizer.encode(long_text, return_tensors='pt')[0]
    chunks = []

    for i in range(0, len(tokens), stride):
        chunk = tokens[i:i + window_size]
        if len(chunk) < window_size:
            chunk = torch.cat([chunk, torch.zeros(window_size - len(chunk), dtype=torch.long)])
        chunks.append(chunk)

    # Обработка каждого чанка
    embeddings = []
    for chunk in chunks:
        with torch.no_grad():
            output = model(chunk.unsqueeze(0), output_hidden_states=True)
            embedding = output.hidden_states[-1][:, 0, :]  # [CLS] токен
            embeddings.append(embedding)

    # Объединение эмбеддингов
    final_embedding = torch.mean(torch.stack(embeddings), dim=0)
    return final_embedding


def _cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@torch.no_grad()
def manual_defects(encoder: SentenceEncoder, text: str, window_size: int = 512, stride: int = 256) -> dict[str, float]:
    """Measure each defect of the manual's chunked embedding on ``text``, as cosines. Chapter 09.

    * ``manual_vs_fixed``: the manual's embedding vs ``long_document_embedding(encoder, text)``;
    * ``padding_unmasked_vs_masked``: the manual's last chunk (zero-padded) mean-pooled over its real
      tokens, run without vs with an attention mask: only the attended padding differs;
    * ``cls_vs_mean``: the first chunk's position-0 vector (the manual's pooling) vs its masked mean
      (how the encoder was trained to pool);
    * ``padding_fraction``: share of the manual's chunk positions that are padding; ``chunks``: how many;
    * ``tokens_counted_twice``: share of the real tokens that sit in more than one chunk.
    """
    tok, model = encoder.tokenizer, encoder.model
    manual = manual_sliding_window_embeddings(model, tok, text, window_size, stride)
    fixed = long_document_embedding(encoder, text)
    tokens = tok.encode(text, return_tensors="pt", verbose=False)[0]  # as the manual encodes it
    n, starts = len(tokens), list(range(0, len(tokens), stride))
    last = tokens[starts[-1] : starts[-1] + window_size]
    padded = torch.cat([last, torch.zeros(window_size - len(last), dtype=torch.long)])[None]  # (1, window)
    real = (torch.arange(window_size) < len(last)).long()[None]  # (1, window): 1 on the chunk's tokens
    unmasked = mean_pool(model(padded).last_hidden_state, real)  # padding attended, then left out of the mean
    masked = mean_pool(model(padded, attention_mask=real).last_hidden_state, real)
    first = tokens[:window_size][None]
    hidden = model(first).last_hidden_state
    in_chunks = sum(min(window_size, n - s) for s in starts)
    return {
        "manual_vs_fixed": _cosine(manual, fixed),
        "padding_unmasked_vs_masked": _cosine(unmasked, masked),
        "cls_vs_mean": _cosine(hidden[0, 0], hidden[0].mean(0)),
        "padding_fraction": 1 - in_chunks / (len(starts) * window_size),
        "chunks": len(starts),
        "tokens_counted_twice": float(np.mean(_times_covered(n, starts, window_size) > 1)),
    }


def _times_covered(n: int, starts: Sequence[int], length: int) -> np.ndarray:
    """How many chunks ``[s, s + length)`` contain each of the n token positions."""
    counts = np.zeros(n, dtype=np.int64)
    for s in starts:
        counts[s : s + length] += 1
    return counts
