"""One pretraining recipe for the notebook and the model zoo: shape, data, optimisation. Chapter 04.

A ``PretrainRecipe`` says everything that decides how good a pretrained model gets: its shape (the
fields of ``llm_course.models.shape.ModelShape``, which it extends), the tokenizer's special tokens,
and the optimisation, with ``TrainConfig``'s names (``warmup_steps``, ``eval_interval``, ``eval_steps``).
Notebook 04 trains ``quick_gpt_recipe()`` under a wall-clock budget (``llm_course.train.pretraining``);
the zoo's shipped checkpoints (``llm_course.zoo.recipes.ZOO``) are recipes with a fixed number of
steps, and their ``recipe.json`` is ``dataclasses.asdict`` of one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from llm_course.core.checks import check_choice, check_int, check_positive, check_positive_int, check_probability
from llm_course.models.bert import BERTConfig
from llm_course.models.gpt import GPTConfig
from llm_course.models.shape import ModelShape
from llm_course.train.loop import TrainConfig

__all__ = ["EOT", "BERT_SPECIALS", "PRETRAIN_KINDS", "SAVE_DTYPES", "CORPORA", "PretrainRecipe", "quick_gpt_recipe"]

EOT = "<|endoftext|>"  # GPT-2's end-of-text token
BERT_SPECIALS = ("[PAD]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..3 in a tokenizer trained with them
PRETRAIN_KINDS = ("causal-lm", "masked-lm")  # a GPT (next token) or a BERT (masked tokens)
SAVE_DTYPES = ("float16", "float32")  # how a zoo checkpoint stores its weights
# The zoo's training text: "docs" (the Python docs + the chatterbot dialogs) or "bilingual" (the same plus
# Russian manual pages: llm_course.text.bilingual), see llm_course.zoo.build.prepare_zoo_data
CORPORA = ("docs", "bilingual")


@dataclass(frozen=True, kw_only=True)
class PretrainRecipe(ModelShape):
    """Everything that decides how good a pretraining run gets. Chapter 04 (pretraining).

    Shape (from ``ModelShape``): ``vocab_size`` BPE tokens learned from the training text, ``n_layer``
    blocks of width ``n_embd`` with ``n_head`` heads, contexts of ``block_size`` tokens. What: ``name``,
    ``kind`` ("causal-lm": a GPT; "masked-lm": a BERT that hides ``mlm_probability`` of the tokens),
    ``description``, and ``dropout`` (0 for these short runs).

    Optimisation (``TrainConfig``'s names): ``batch_size`` windows per step, peak ``lr`` after
    ``warmup_steps``, cosine decay to ``min_lr``, AdamW's ``weight_decay``, ``grad_clip``, ``precision``
    ("fp32", "bf16", "fp16" or "auto"; chapter 09). Length: ``max_steps`` updates, or (None) as many as
    fit in ``time_budget_s`` seconds of this machine (``pretrain_gpt`` measures them); with both, the run
    also stops when the budget is spent. Every ``eval_interval`` steps: a held-out loss on
    ``eval_steps`` validation batches. ``seed``: weights and batches. ``threads``: torch CPU threads
    (None: ``fastest_threads`` picks them).

    The zoo's checkpoints (``llm-course zoo train``) also read: ``max_train_chars`` / ``max_val_chars``
    (None: all of the text; tiny test recipes cut it), ``val_slice_chars`` (characters of validation
    text whose loss metrics.json records exactly), ``save_dtype`` ("float16" or "float32") and
    ``corpus`` (``CORPORA``: "docs", the Python docs and the dialogs; "bilingual", those plus Russian
    manual pages, scored on each language's held-out text).
    """

    name: str = "quick-gpt"
    kind: str = "causal-lm"
    description: str = ""
    dropout: float = 0.0
    batch_size: int = 16
    max_steps: int | None = None
    time_budget_s: float | None = 150.0
    lr: float = 6e-3
    min_lr: float = 1e-4
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    mlm_probability: float = 0.15
    precision: str = "fp32"
    eval_interval: int = 50
    eval_steps: int = 4
    seed: int = 0
    threads: int | None = None
    max_train_chars: int | None = None
    max_val_chars: int | None = None
    val_slice_chars: int = 4000
    save_dtype: str = "float16"
    corpus: str = "docs"

    def __post_init__(self) -> None:
        super().__post_init__()  # the shape: positive integers, n_embd divisible by n_head
        check_choice("PretrainRecipe.kind", self.kind, PRETRAIN_KINDS)
        for name in ("batch_size", "eval_interval", "eval_steps"):
            check_positive_int(f"PretrainRecipe.{name}", getattr(self, name))
        check_positive_int("PretrainRecipe.max_steps", self.max_steps, allow_none=True)
        check_positive("PretrainRecipe.time_budget_s", self.time_budget_s, allow_none=True, hint="seconds")
        if self.max_steps is None and self.time_budget_s is None:
            raise ValueError("PretrainRecipe needs max_steps or time_budget_s (or both) to know when to stop")
        check_positive_int("PretrainRecipe.threads", self.threads, allow_none=True)
        check_probability("PretrainRecipe.mlm_probability", self.mlm_probability, low_open=True, high_open=True)
        check_choice("PretrainRecipe.save_dtype", self.save_dtype, SAVE_DTYPES)
        check_choice("PretrainRecipe.corpus", self.corpus, CORPORA)
        for name in ("max_train_chars", "max_val_chars"):
            check_int(f"PretrainRecipe.{name}", getattr(self, name), minimum=1000, allow_none=True)
        check_int("PretrainRecipe.val_slice_chars", self.val_slice_chars, minimum=100)
        self.model_config()  # checks dropout
        self.train_config(self.max_steps or 1)  # checks lr, min_lr, warmup_steps >= 0, precision, ...

    @property
    def special_tokens(self) -> tuple[str, ...]:
        """The tokenizer's special tokens (ids 0, 1, ...): ``<|endoftext|>``, or BERT's four."""
        return (EOT,) if self.kind == "causal-lm" else BERT_SPECIALS

    def gpt_config(self, vocab_size: int | None = None, dropout: float | None = None) -> GPTConfig:
        """The GPT of this recipe: ``ModelShape.gpt_config`` with the recipe's ``dropout``."""
        return super().gpt_config(vocab_size, self.dropout if dropout is None else dropout)

    def model_config(self, vocab_size: int | None = None) -> GPTConfig | BERTConfig:
        """The model: a ``GPTConfig`` (causal LM) or a ``BERTConfig`` (masked LM), with ``dropout``."""
        if self.kind == "causal-lm":
            return self.gpt_config(vocab_size)
        return self.bert_config(vocab_size, self.dropout)

    def train_config(self, max_steps: int | None = None, **overrides: Any) -> TrainConfig:
        """The optimisation as a ``TrainConfig`` (``overrides`` win, e.g. ``progress=False``).

        ``max_steps``: the run's length (None: the recipe's own ``max_steps``). A run shorter than
        ``warmup_steps`` warms up over all of it.
        """
        steps = self.max_steps if max_steps is None else max_steps
        if steps is None:
            raise ValueError("this recipe has no max_steps: pass train_config(steps) (pretrain_gpt fits the steps "
                             "to time_budget_s)")
        settings: dict[str, Any] = dict(
            max_steps=steps, lr=self.lr, min_lr=self.min_lr, warmup_steps=min(self.warmup_steps, steps),
            weight_decay=self.weight_decay, grad_clip=self.grad_clip, eval_interval=self.eval_interval,
            eval_steps=self.eval_steps, seed=self.seed, precision=self.precision,
        )
        settings.update(overrides)
        return TrainConfig(**settings)

    def replace(self, **changes: Any) -> PretrainRecipe:
        """A copy with some fields changed, e.g. ``ZOO["course-gpt"].replace(max_steps=3)``."""
        return dataclasses.replace(self, **changes)


def quick_gpt_recipe(**changes: Any) -> PretrainRecipe:
    """The course's quick GPT recipe (notebook 04 and ``benchmarks/bench_pretraining.py``). Chapter 04.

    4096 BPE tokens; 4 layers, 4 heads, width 128, 64-token contexts (1.3 M parameters, 40% of them the
    token embedding); 16 windows per step; AdamW at 6e-3 after 50 warmup steps, cosine decay to 1e-4;
    150 seconds of training, the number of steps fitted to the machine. On two quiet AMD EPYC cores a
    step takes about 0.15 s: about 1,000 steps (two passes over the docs corpus' 480 k training tokens),
    which reach about 2.27 bits per character on the validation text. ``changes`` override fields,
    e.g. ``quick_gpt_recipe(time_budget_s=60)``.
    """
    return PretrainRecipe(**changes)
