"""The zoo's registry: how each shipped checkpoint is made, and the task plug-ins. Chapters 04 and 08.

``ZOO`` maps every checkpoint name to its recipe. A pretrained one ("course-gpt", "course-bert") is a
``llm_course.train.recipe.PretrainRecipe``: the notebook's recipe type, with a fixed number of steps.
A fine-tuned one ("course-gpt-chat", "course-t5-sum") is a ``TunedRecipe``: an application trained
from a base checkpoint. The application's code lives in ``llm_course.apps``, a layer above the zoo, so
the zoo never imports it: whoever makes or re-scores a tuned checkpoint passes a ``ZooTask`` in
(``llm_course.apps.chat_tuning.CHAT_TASK``, ``llm_course.apps.summarization_tuning.SUMMARIZATION_TASK``;
the CLI does it for ``llm-course zoo train``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch.nn as nn

from llm_course.core.checks import check_choice, check_positive, check_positive_int
from llm_course.train.recipe import PRETRAIN_KINDS, SAVE_DTYPES, PretrainRecipe

__all__ = ["KINDS", "TASK_NAMES", "PICKLE_SUFFIXES", "GREEDY_PROMPT", "MLM_MASK_SEED", "TunedRecipe", "ZooTask",
           "TaskFunctions", "ZOO"]

KINDS = PRETRAIN_KINDS + ("seq2seq-lm",)  # what the zoo can hold (a TunedRecipe may make a T5)
TASK_NAMES = ("chat", "summarization", "translation")  # the applications a TunedRecipe can train (see ZooTask)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
GREEDY_PROMPT = "The function returns"  # the prompt of the greedy sample recorded in metrics.json
MLM_MASK_SEED = 1234  # the masks of the masked-LM validation batches (fixed: the same every time)


@dataclass(frozen=True)
class TunedRecipe:
    """How a fine-tuned zoo checkpoint is made: one application, trained from a base. Chapter 08 (applications).

    ``task``: "chat" (``base`` tuned on the chatterbot dialogs in the chat format), "summarization"
    (a T5 trained on docs entries -> summary lines, with ``base``'s tokenizer) or "translation" (``base``
    instruction-tuned on English->Russian message pairs); the code is a
    ``ZooTask`` of the same ``name``. ``steps`` AdamW updates of ``batch_size`` examples at peak ``lr``;
    ``options``: the task's own settings (see its ``tune``). ``eval_examples``: how many held-out
    examples metrics.json scores (``zoo eval`` re-scores them). ``threads``: torch CPU threads.
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
        check_choice("TunedRecipe.kind", self.kind, KINDS)
        check_choice("TunedRecipe.task", self.task, TASK_NAMES)
        check_choice("TunedRecipe.save_dtype", self.save_dtype, SAVE_DTYPES)
        for name in ("steps", "batch_size", "eval_examples"):
            check_positive_int(f"TunedRecipe.{name}", getattr(self, name))
        check_positive("TunedRecipe.lr", self.lr)

    def replace(self, **changes: Any) -> TunedRecipe:
        """A copy with some fields changed (``options`` entries too: ``replace(max_history=1)``)."""
        fields = {f.name for f in dataclasses.fields(self)}
        options = dict(self.options, **{k: v for k, v in changes.items() if k not in fields})
        return dataclasses.replace(self, options=options, **{k: v for k, v in changes.items() if k in fields})


class ZooTask(Protocol):
    """An application that can make a tuned zoo checkpoint: what ``train_checkpoint`` calls. Chapter 08.

    ``name``: the ``TunedRecipe.task`` it serves ("chat", "summarization"). ``tune`` trains the model
    (``callbacks`` are ``train``'s, e.g. a time budget) and returns ``(model, tokenizer, info)``, where
    ``info`` holds ``result`` (the ``TrainResult``), ``train_seconds``, ``data`` (recipe.json's data
    description) and optionally ``metrics``. ``measure`` returns metrics.json's scores, with
    ``held_out["loss"]``; ``held_out_loss`` re-computes that loss (``zoo eval``).
    """

    name: str

    def tune(self, recipe: TunedRecipe, progress: bool = True,
             callbacks: Sequence[Any] | None = None) -> tuple[nn.Module, Any, dict[str, Any]]: ...

    def measure(self, model: nn.Module, tokenizer: Any, recipe: TunedRecipe) -> dict[str, Any]: ...

    def held_out_loss(self, model: nn.Module, tokenizer: Any, recipe: TunedRecipe) -> float: ...


@dataclass(frozen=True)
class TaskFunctions:
    """A ``ZooTask`` made of an application's three functions, e.g. chat's. Chapter 08 (applications).

    ``llm_course.apps.chat_tuning.CHAT_TASK = TaskFunctions("chat", tune, measure, held_out_loss)``: the
    zoo calls them as the protocol says, without importing the module they live in.
    """

    name: str
    tune: Callable[..., tuple[nn.Module, Any, dict[str, Any]]]
    measure: Callable[[nn.Module, Any, TunedRecipe], dict[str, Any]]
    held_out_loss: Callable[[nn.Module, Any, TunedRecipe], float]


# The shipped checkpoints: the chapter's recipes, run for ~30 minutes on two CPU cores each.
ZOO: dict[str, PretrainRecipe | TunedRecipe] = {
    "course-gpt": PretrainRecipe(
        name="course-gpt", kind="causal-lm",
        description="small GPT-2-style causal LM, bilingual: English technical prose (Python docs), Russian "
                    "technical prose (Debian's Russian manual pages) and dialogs in both languages",
        vocab_size=4096, n_layer=5, n_head=5, n_embd=160, block_size=384,
        batch_size=6, max_steps=2600, time_budget_s=None, lr=3e-3, min_lr=1e-4, warmup_steps=100,
        eval_interval=200, threads=2, corpus="bilingual",
    ),
    "course-bert": PretrainRecipe(
        name="course-bert", kind="masked-lm",
        description="small BERT masked LM for the encoder chapters (same data, its own tokenizer with "
                    "[PAD] [CLS] [SEP] [MASK])",
        vocab_size=4096, n_layer=4, n_head=4, n_embd=128, block_size=64,
        batch_size=32, max_steps=2500, time_budget_s=None, lr=1e-3, min_lr=1e-4, warmup_steps=250,
        eval_interval=250, threads=2,
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
    "course-gpt-translate": TunedRecipe(
        name="course-gpt-translate", kind="causal-lm", task="translation",
        description="course-gpt instruction-tuned to translate English messages into Russian: Django's and "
                    "Sphinx's English->Russian catalogue pairs in chapter 05's prompt format",
        base="course-gpt", steps=600, batch_size=16, lr=3e-3, eval_examples=145,
    ),
}
