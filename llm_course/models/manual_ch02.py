"""THE MANUAL'S BROKEN MODELS, reproduced for demonstration only. Chapter 02 (architectures).

Do not use these classes for anything but seeing what goes wrong. They copy the code of the manual's
section "Архитектуры LLM" (llm-manual-ru.md) as written, with only the sizes made small enough for a
laptop, so that the course can show each defect with an experiment (ERRATA.md, section 2):

``ManualCustomGPT`` (the manual's ``CustomGPT``)
    Built from ``nn.TransformerDecoderLayer`` called as ``layer(x, x, tgt_mask=...)``. A decoder layer
    has two attentions: the masked self-attention over ``tgt`` and a cross-attention over ``memory``.
    Passing ``memory=x`` with no ``memory_mask`` lets every position read the whole sequence, future
    included, through the cross-attention: the causal mask is bypassed and the model "predicts" tokens
    it can already see. Also: post-LayerNorm (GPT-2 is pre-LN), the mask is built on the CPU (fails
    when the model is on a GPU), positions past 1024 give an opaque IndexError, the LM head is not
    tied to the embedding.
``ManualBERTModel`` (the manual's ``BERTModel``)
    Turns ``attention_mask`` into an additive float mask of shape (B, 1, 1, T) and passes it as
    ``src_key_padding_mask``, which expects a (B, T) boolean "is padding" mask: PyTorch rejects it. The
    only way to run the model is without a mask, and then the real tokens attend to the padding.

``ManualMultiHeadAttention`` (the manual's section-3 ``MultiHeadAttention``, chapter 03)
    ``masked_fill(mask == 0, -1e9)``: 1 = may attend, the opposite of section 2's causal mask (True =
    forbidden), so combining the two gives anti-causal attention; -1e9 overflows float16; a row with
    nothing allowed gets uniform weights (ERRATA.md, section 3).

The manual's T5 cannot be reproduced at all: ``T5EncoderLayer`` and ``T5DecoderLayer`` are never
defined (and it has no relative position bias, no causal mask in the decoder, and it reuses the
encoder's padding mask in the decoder).

The fixes are ``llm_course.models.gpt.GPT``, ``llm_course.models.bert.BERT`` and ``llm_course.models.t5.T5``. The two
experiments below (``future_token_influence``, ``padding_influence``) measure the defects on any model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from llm_course.core.checks import check_int

__all__ = [
    "ManualCustomGPT", "ManualBERTModel", "ManualMultiHeadAttention", "future_token_influence", "padding_influence",
]


class ManualCustomGPT(nn.Module):
    """BROKEN (for demonstration): the manual's ``CustomGPT``, verbatim but for the sizes. Chapter 02.

    Future tokens leak through the cross-attention on ``memory=x``; see the module docstring.
    """

    def __init__(self, vocab_size: int, d_model: int = 768, n_heads: int = 12, n_layers: int = 12) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding = nn.Embedding(1024, d_model)
        self.layers = nn.ModuleList([
            nn.TransformerDecoderLayer(
                d_model=d_model,
                nhead=n_heads,
                dim_feedforward=d_model * 4,
                batch_first=True,
            ) for _ in range(n_layers)
        ])
        self.lm_head = nn.Linear(d_model, vocab_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """As in the manual: ``attention_mask`` is accepted and ignored; returns logits (B, T, V)."""
        seq_len = input_ids.size(1)
        positions = torch.arange(seq_len, device=input_ids.device).unsqueeze(0)

        x = self.token_embedding(input_ids) + self.position_embedding(positions)

        for layer in self.layers:
            x = layer(x, x, tgt_mask=self.generate_causal_mask(seq_len))  # BUG: memory=x, unmasked

        return self.lm_head(x)

    def generate_causal_mask(self, size: int) -> torch.Tensor:
        """The manual's mask: True above the diagonal = forbidden. Built on the CPU (BUG on a GPU)."""
        mask = torch.triu(torch.ones(size, size), diagonal=1).bool()
        return mask


class ManualBERTModel(nn.Module):
    """BROKEN (for demonstration): the manual's ``BERTModel``, verbatim but for the sizes. Chapter 02.

    Any ``attention_mask`` makes PyTorch raise (wrong shape and meaning for ``src_key_padding_mask``);
    without one, padding is attended to. See the module docstring.
    """

    def __init__(self, vocab_size: int, d_model: int = 768, n_heads: int = 12, n_layers: int = 12) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.segment_embedding = nn.Embedding(2, d_model)
        self.position_embedding = nn.Embedding(512, d_model)

        self.encoder_layers = nn.ModuleList([
            nn.TransformerEncoderLayer(
                d_model=d_model,
                nhead=n_heads,
                dim_feedforward=d_model * 4,
                batch_first=True,
            ) for _ in range(n_layers)
        ])

        self.pooler = nn.Linear(d_model, d_model)
        self.activation = nn.Tanh()

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As in the manual: returns (hidden states (B, T, C), pooled (B, C))."""
        seq_len = input_ids.size(1)
        positions = torch.arange(seq_len, device=input_ids.device).unsqueeze(0)

        embeddings = self.token_embedding(input_ids) + self.position_embedding(positions)

        if token_type_ids is not None:
            embeddings += self.segment_embedding(token_type_ids)

        # BUG: an additive float (B, 1, 1, T) mask where a boolean (B, T) "is padding" mask is expected
        if attention_mask is not None:
            attention_mask = attention_mask.unsqueeze(1).unsqueeze(2)
            attention_mask = (1.0 - attention_mask) * -10000.0

        for layer in self.encoder_layers:
            embeddings = layer(embeddings, src_key_padding_mask=attention_mask)

        pooled_output = self.activation(self.pooler(embeddings[:, 0]))

        return embeddings, pooled_output


class ManualMultiHeadAttention(nn.Module):
    """BROKEN (for demonstration): the manual's section-3 ``MultiHeadAttention``, verbatim. Chapter 03.

    Its mask convention is ``masked_fill(mask == 0, -1e9)``: 1 / True = *may attend*. Section 2's
    ``generate_causal_mask`` (``ManualCustomGPT.generate_causal_mask``) is True = *forbidden* (the
    ``nn.Transformer*`` convention). Passing one to the other inverts it: anti-causal attention, where
    query i sees only the keys after it (query 0 only the future) and the last query may see nothing,
    so it gets **uniform** weights (every score is the same -1e9) instead of none. And -1e9 does
    not fit in float16 (max 65504): in half precision ``masked_fill`` raises a RuntimeError
    (ERRATA.md, section 3). The course's attention (``llm_course.nn.attention``) uses one convention
    (True = may attend), fills with -inf and returns zeros for a row that may see nothing.
    """

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.d_model = d_model
        self.n_heads = n_heads
        self.d_k = d_model // n_heads

        self.q_linear = nn.Linear(d_model, d_model)
        self.k_linear = nn.Linear(d_model, d_model)
        self.v_linear = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As in the manual: returns (output (B, T, C), attention weights (B, H, Tq, Tk))."""
        batch_size = query.size(0)

        Q = self.q_linear(query).view(batch_size, -1, self.n_heads, self.d_k).transpose(1, 2)
        K = self.k_linear(key).view(batch_size, -1, self.n_heads, self.d_k).transpose(1, 2)
        V = self.v_linear(value).view(batch_size, -1, self.n_heads, self.d_k).transpose(1, 2)

        scores = torch.matmul(Q, K.transpose(-2, -1)) / torch.sqrt(torch.tensor(self.d_k, dtype=torch.float32))

        if mask is not None:
            scores = scores.masked_fill(mask == 0, -1e9)  # BUG: 1 = keep (section 2 uses True = forbidden)

        attention = torch.softmax(scores, dim=-1)
        context = torch.matmul(attention, V)

        context = context.transpose(1, 2).contiguous().view(batch_size, -1, self.d_model)
        output = self.out(context)

        return output, attention


# --------------------------------------------------------------------------------------------
# Experiments that expose the defects (they work on any model: the manual's or the course's)
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def future_token_influence(
    forward: Callable[[torch.Tensor], torch.Tensor], input_ids: torch.Tensor, t: int, vocab_size: int, seed: int = 0
) -> float:
    """How much the outputs at positions 0..t change when every token after t is replaced. Chapter 02.

    ``forward`` maps input_ids (B, T) to outputs (B, T, ...). A causal language model must give exactly
    the same outputs up to position t (up to float rounding, ~1e-6): its prediction for token t+1 may
    only use tokens 0..t. Returns the largest absolute change.
    """
    check_int("t", t, 0, input_ids.shape[1] - 2, hint="some tokens must come after position t")
    g = torch.Generator().manual_seed(seed)
    changed = input_ids.clone()
    new_tail = torch.randint(0, vocab_size, changed[:, t + 1:].shape, generator=g).to(changed.device)
    changed[:, t + 1:] = (input_ids[:, t + 1:] + 1 + new_tail % (vocab_size - 1)) % vocab_size  # always differs
    before, after = forward(input_ids)[:, : t + 1], forward(changed)[:, : t + 1]
    return (before - after).abs().max().item()


@torch.no_grad()
def padding_influence(
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    input_ids: torch.Tensor,
    n_pad: int,
    pad_token_id: int = 0,
) -> float:
    """How much the real tokens' outputs change when ``n_pad`` padding tokens are appended. Chapter 02.

    ``forward(input_ids, attention_mask)`` -> (B, T, ...). With a correct padding mask the answer is 0
    (up to float rounding): padding must be invisible. Returns the largest absolute change.
    """
    B, T = input_ids.shape
    mask = torch.ones_like(input_ids)
    padded = torch.cat([input_ids, input_ids.new_full((B, n_pad), pad_token_id)], dim=1)
    padded_mask = torch.cat([mask, mask.new_zeros((B, n_pad))], dim=1)
    before, after = forward(input_ids, mask), forward(padded, padded_mask)[:, :T]
    return (before - after).abs().max().item()
