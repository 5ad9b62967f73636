"""The course's model zoo: small pretrained checkpoints shipped with the package. Chapter 04 (pretraining).

Split from the former ``llm_course.zoo``; see the package docstring."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from llm_course.models.bert import BERTConfig
from llm_course.models.gpt import GPTConfig
from llm_course.train.loop import TrainConfig
from llm_course.train.pretraining import (
    BERT_SPECIALS,
    EOT,
)

__all__ = ['ZooRecipe', 'TunedRecipe', 'TASKS', 'ZOO', 'KINDS']

PRETRAIN_KINDS = ("causal-lm", "masked-lm")  # what ZooRecipe pretrains
KINDS = PRETRAIN_KINDS + ("seq2seq-lm",)  # what the zoo can hold (a TunedRecipe may make a T5)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
GREEDY_PROMPT = "The function returns"  # the prompt of the greedy sample recorded in metrics.json
MLM_MASK_SEED = 1234  # the masks of the masked-LM validation batches (fixed: the same every time)


# --------------------------------------------------------------------------------------------
# Recipes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZooRecipe:
    """How one zoo checkpoint is made: data, tokenizer, model and optimisation. Chapter 04 (pretraining).

    Data: the training split of ``docs_corpus()`` (Python's documentation, English prose) plus the
    English and Russian dialogs (``dialogs_text``), cut to ``max_train_chars`` characters if set (tiny
    test recipes); validation is the docs corpus' validation split (its first ``max_val_chars`` if set). Tokenizer: byte-level BPE with
    ``vocab_size`` tokens learned from the training text (special tokens: ``<|endoftext|>`` for a
    causal LM, ``[PAD] [CLS] [SEP] [MASK]`` for a masked LM). Model: ``kind`` "causal-lm" (``GPT``) or
    "masked-lm" (``BERT``), ``n_layer`` blocks of width ``n_embd`` with ``n_head`` heads and contexts of
    ``block_size`` tokens. Optimisation: ``max_steps`` AdamW updates on ``batch_size`` random windows,
    peak ``lr`` after ``warmup_steps``, cosine decay to ``min_lr``; masked LM masks ``mlm_probability``
    of the tokens. ``threads``: torch CPU threads. ``val_slice_chars``: characters of validation text
    whose loss metrics.json records exactly (the test re-scores them).
    """

    name: str
    kind: str
    description: str
    vocab_size: int = 4096
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128
    batch_size: int = 16
    max_steps: int = 1000
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    mlm_probability: float = 0.15
    eval_interval: int = 100
    eval_steps: int = 4
    seed: int = 0
    threads: int | None = 2
    max_train_chars: int | None = None
    max_val_chars: int | None = None
    val_slice_chars: int = 4000
    save_dtype: str = "float16"

    def __post_init__(self) -> None:
        if self.kind not in PRETRAIN_KINDS:
            raise ValueError(f"ZooRecipe.kind must be one of {PRETRAIN_KINDS}, got {self.kind!r}")
        if self.save_dtype not in ("float16", "float32"):
            raise ValueError(f"ZooRecipe.save_dtype must be 'float16' or 'float32', got {self.save_dtype!r}")
        for name in ("max_train_chars", "max_val_chars"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1000):
                raise ValueError(f"ZooRecipe.{name} must be None or an integer >= 1000, got {value!r}")
        if not isinstance(self.val_slice_chars, int) or self.val_slice_chars < 100:
            raise ValueError(f"ZooRecipe.val_slice_chars must be an integer >= 100, got {self.val_slice_chars!r}")
        self.model_config(self.vocab_size)  # checks the model's shape (n_embd % n_head, ...)
        self.train_config()  # checks the optimisation settings (lr, warmup_steps <= max_steps, ...)

    @property
    def special_tokens(self) -> tuple[str, ...]:
        """The tokenizer's special tokens (ids 0, 1, ...)."""
        return (EOT,) if self.kind == "causal-lm" else BERT_SPECIALS

    def model_config(self, vocab_size: int) -> GPTConfig | BERTConfig:
        """The model's config: a ``GPTConfig`` (causal LM) or a ``BERTConfig`` (masked LM), no dropout."""
        if self.kind == "causal-lm":
            return GPTConfig(vocab_size=vocab_size, n_positions=self.block_size, n_embd=self.n_embd,
                             n_layer=self.n_layer, n_head=self.n_head, dropout=0.0)
        return BERTConfig(vocab_size=vocab_size, hidden_size=self.n_embd, num_hidden_layers=self.n_layer,
                          num_attention_heads=self.n_head, intermediate_size=4 * self.n_embd,
                          max_position_embeddings=self.block_size, hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0, pad_token_id=0)  # [PAD] is id 0

    def train_config(self, **overrides: Any) -> TrainConfig:
        """The optimisation as a ``TrainConfig`` (``overrides`` win, e.g. ``progress=False``)."""
        settings: dict[str, Any] = dict(
            max_steps=self.max_steps, lr=self.lr, min_lr=self.min_lr, warmup_steps=self.warmup_steps,
            weight_decay=self.weight_decay, grad_clip=self.grad_clip, eval_interval=self.eval_interval,
            eval_steps=self.eval_steps, seed=self.seed, device="cpu", live_plot=False,
        )
        settings.update(overrides)
        return TrainConfig(**settings)

    def replace(self, **changes: Any) -> ZooRecipe:
        """A copy with some fields changed, e.g. ``ZOO["course-gpt"].replace(max_steps=3)``."""
        return dataclasses.replace(self, **changes)


# The modules that make a TunedRecipe's checkpoint: each has ``tune(recipe, progress)`` and ``measure(...)``.
TASKS = {"chat": "llm_course.apps.chat", "summarization": "llm_course.apps.summarization"}


@dataclass(frozen=True)
class TunedRecipe:
    """How a fine-tuned zoo checkpoint is made: one application, trained from a base. Chapter 08 (applications).

    ``task``: "chat" (``llm_course.apps.chat``: ``base`` tuned on the chatterbot dialogs in the chat format)
    or "summarization" (``llm_course.apps.summarization``: a T5 trained on docs entries -> summary lines,
    with ``base``'s tokenizer). ``steps`` AdamW updates of ``batch_size`` examples at peak ``lr``;
    ``options``: the task's own settings (see the task module's ``tune``). ``eval_examples``: how many
    held-out examples metrics.json scores (``zoo eval`` re-scores them). ``threads``: torch CPU threads.
    """

    name: str
    kind: str
    task: str
    description: str
    base: str = "course-gpt"
    steps: int = 800
    batch_size: int = 16
    lr: float = 3e-3
    seed: int = 0
    threads: int | None = 2
    eval_examples: int = 64
    save_dtype: str = "float16"
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"TunedRecipe.kind must be one of {KINDS}, got {self.kind!r}")
        if self.task not in TASKS:
            raise ValueError(f"TunedRecipe.task must be one of {tuple(TASKS)}, got {self.task!r}")
        if self.save_dtype not in ("float16", "float32"):
            raise ValueError(f"TunedRecipe.save_dtype must be 'float16' or 'float32', got {self.save_dtype!r}")
        for name in ("steps", "batch_size", "eval_examples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TunedRecipe.{name} must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"TunedRecipe.lr must be positive, got {self.lr!r}")

    def replace(self, **changes: Any) -> TunedRecipe:
        """A copy with some fields changed (``options`` entries too: ``replace(max_history=1)``)."""
        fields = {f.name for f in dataclasses.fields(self)}
        options = dict(self.options, **{k: v for k, v in changes.items() if k not in fields})
        return dataclasses.replace(self, options=options, **{k: v for k, v in changes.items() if k in fields})


# The shipped checkpoints: the chapter's recipes, run for ~30 minutes on two CPU cores each.
ZOO: dict[str, ZooRecipe | TunedRecipe] = {
    "course-gpt": ZooRecipe(
        name="course-gpt", kind="causal-lm",
        description="small GPT-2-style causal LM: English technical prose (Python docs) and dialogs, "
                    "English and Russian",
        vocab_size=4096, n_layer=5, n_head=5, n_embd=160, block_size=384,
        batch_size=6, max_steps=2600, lr=3e-3, min_lr=1e-4, warmup_steps=100, eval_interval=200,
    ),
    "course-bert": ZooRecipe(
        name="course-bert", kind="masked-lm",
        description="small BERT masked LM for the encoder chapters (same data, its own tokenizer with "
                    "[PAD] [CLS] [SEP] [MASK])",
        vocab_size=4096, n_layer=4, n_head=4, n_embd=128, block_size=64,
        batch_size=32, max_steps=2500, lr=1e-3, min_lr=1e-4, warmup_steps=250, eval_interval=250, threads=2,
    ),
    "course-gpt-chat": TunedRecipe(
        name="course-gpt-chat", kind="causal-lm", task="chat",
        description="course-gpt tuned to chat: the chatterbot dialogs (English and Russian) in chapter 05's chat "
                    "format, reply and end-of-text learned",
        base="course-gpt", steps=150, batch_size=16, lr=1e-3, eval_examples=120,
        options={"max_history": 2, "russian_repeats": 10, "max_tokens": 128},
    ),
    "course-t5-sum": TunedRecipe(
        name="course-t5-sum", kind="seq2seq-lm", task="summarization",
        description="T5 (chapter 02) trained to summarize: a docs entry's title and body -> its summary line; "
                    "course-gpt's tokenizer and token embeddings",
        base="course-gpt", steps=600, batch_size=32, lr=3e-3, eval_examples=128,
    ),
}
