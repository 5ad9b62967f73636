"""The numbers that fix a transformer's size: one ``ModelShape`` for every recipe and config. Chapters 01 and 04.

A GPT or a BERT is sized by five numbers: ``vocab_size`` tokens, ``n_layer`` blocks of width ``n_embd``
with ``n_head`` attention heads, and contexts of at most ``block_size`` tokens. Chapter 01 counts the
parameters they give (``llm_course.models.intro.GPT_SHAPES``); chapter 04's pretraining recipe
(``llm_course.train.recipe.PretrainRecipe``) and chapter 09's data-parallel run
(``llm_course.train.distributed.DataParallelConfig``) extend this class with their data and optimisation
settings, so the five fields are defined, named and checked once.

The models themselves keep the names of their Hugging Face configs (``GPTConfig.n_positions``,
``BERTConfig.hidden_size``, ...): ``gpt_config`` and ``bert_config`` translate.
"""

from __future__ import annotations

from dataclasses import dataclass

from llm_course.core.checks import check_int
from llm_course.models.bert import BERTConfig
from llm_course.models.gpt import GPTConfig

__all__ = ["ModelShape"]


@dataclass(frozen=True, kw_only=True)
class ModelShape:
    """A transformer's size: vocabulary, depth, width, heads and context. Chapters 01 and 04.

    ``vocab_size``: tokens the model knows. ``n_layer``: transformer blocks. ``n_embd``: the width C of
    every token's vector. ``n_head``: attention heads (each gets ``n_embd // n_head`` channels, so it
    must divide ``n_embd``). ``block_size``: the longest context in tokens (GPT-2's ``n_positions``).
    Keyword-only, e.g. ``ModelShape(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=4096)``.
    """

    vocab_size: int = 4096
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64

    def __post_init__(self) -> None:
        name = type(self).__name__
        for field, minimum in (("vocab_size", 2), ("n_layer", 1), ("n_head", 1), ("n_embd", 1), ("block_size", 2)):
            check_int(f"{name}.{field}", getattr(self, field), minimum=minimum)
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"{name}: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): "
                             "each head gets n_embd // n_head channels")

    def gpt_config(self, vocab_size: int | None = None, dropout: float = 0.0) -> GPTConfig:
        """This shape as a ``GPTConfig`` (``vocab_size``: the tokenizer's, if it differs from the field)."""
        return GPTConfig(vocab_size=vocab_size or self.vocab_size, n_positions=self.block_size,
                         n_embd=self.n_embd, n_layer=self.n_layer, n_head=self.n_head, dropout=dropout)

    def bert_config(self, vocab_size: int | None = None, dropout: float = 0.0) -> BERTConfig:
        """This shape as a ``BERTConfig``: MLP width 4C, ``[PAD]`` is token 0 (``vocab_size`` as in ``gpt_config``)."""
        return BERTConfig(vocab_size=vocab_size or self.vocab_size, hidden_size=self.n_embd,
                          num_hidden_layers=self.n_layer, num_attention_heads=self.n_head,
                          intermediate_size=4 * self.n_embd, max_position_embeddings=self.block_size,
                          hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, pad_token_id=0)
