"""Full fine-tuning with Hugging Face's ``Trainer``, on every transformers the course allows (4.50-5.x). Chapter 05.

``trainer_finetune`` (its ``TrainingArguments`` from ``training_arguments``): evaluation every ``eval_steps``
on a held-out set, a checkpoint at each evaluation, the best one (lowest ``eval_loss``) loaded back at the
end, early stopping when the held-out loss stops improving, and a data collator that makes the labels.
``lm_examples`` turns plain text into equal-length blocks for it (``ExampleDataset``: a list of examples is
all the Trainer needs); instruction data (chapter 05's prompt/answer examples, labels -100 on the prompt)
comes with its own padding collator. ``trainer_history`` reads the training and held-out losses back from
``trainer.state.log_history``.

The manual's own Trainer code, run against the installed transformers, is in
``llm_course.train.manual_trainer``; what fine-tuning costs (notebook 06) in ``llm_course.train.finetuning_costs``.

Notebook use::

    from llm_course.zoo.loading import load_pretrained
    from llm_course.train.finetuning import lm_examples, trainer_finetune

    model, tok = load_pretrained("course-gpt", as_course_model=False)   # GPT2LMHeadModel + tokenizer
    tok.add_special_tokens({"pad_token": "<|pad|>"})   # GPT-2 has none; eos as pad would hide eos from the loss
    model.resize_token_embeddings(len(tok))
    train = lm_examples(tok, train_texts, block_size=128)
    val = lm_examples(tok, val_texts, block_size=128)
    trainer, result = trainer_finetune(model, tok, train, val, "runs/ch05", max_steps=200, lr=3e-4)
    trainer.state.best_metric, trainer.state.best_model_checkpoint
"""

from __future__ import annotations

import dataclasses
import difflib
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from llm_course.core.checks import check_positive, check_positive_int
from llm_course.core.runtime import quiet_transformers
from llm_course.nn.objectives import pack_documents
from llm_course.train.precision import resolve_precision

if TYPE_CHECKING:  # transformers is imported when a function needs it: importing this module stays fast
    from transformers import Trainer
    from transformers.trainer_utils import TrainOutput

__all__ = ["ExampleDataset", "lm_examples", "training_arguments", "trainer_finetune", "trainer_history"]


# --------------------------------------------------------------------------------------------
# Data for the Trainer: a list of examples is all it needs
# --------------------------------------------------------------------------------------------


class ExampleDataset(torch.utils.data.Dataset):
    """A list of examples (dicts of token-id lists) as the ``torch`` Dataset ``Trainer`` reads. Chapter 05.

    Each example is ``{"input_ids": [...]}`` and may carry ``attention_mask`` and ``labels`` (instruction
    data: -100 on the prompt). Tensors are turned into lists, which every collator accepts. No dependency on
    the ``datasets`` package: ``Trainer`` only needs ``len(ds)`` and ``ds[i]``.
    """

    def __init__(self, examples: Sequence[Mapping[str, Any]], name: str = "dataset") -> None:
        if isinstance(examples, (str, bytes, Mapping)) or not isinstance(examples, Sequence):
            raise TypeError(f"{name} must be a list of examples like {{'input_ids': [...]}} (see lm_examples), "
                            f"got {type(examples).__name__}")
        if len(examples) == 0:
            raise ValueError(f"{name} is empty: it needs at least one example")
        for i, ex in enumerate(examples):
            if not isinstance(ex, Mapping) or "input_ids" not in ex:
                got = f"a dict with keys {sorted(ex)}" if isinstance(ex, Mapping) else type(ex).__name__
                raise TypeError(f"{name}[{i}] must be a dict with 'input_ids' (a list of token ids), got {got}")
            if len(ex["input_ids"]) == 0:
                raise ValueError(f"{name}[{i}] has no tokens (empty input_ids)")
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in self.examples[i].items()}


def lm_examples(tokenizer: Any, texts: str | Sequence[str], block_size: int,
                eos_id: int | None = None) -> list[dict[str, list[int]]]:
    """Plain text -> equal-length causal-LM examples ``[{"input_ids": [...]}, ...]``. Chapter 05.

    The texts are encoded, joined with an end-of-text token after each (``eos_id``, default the
    tokenizer's ``eos_token_id``) and cut into blocks of ``block_size`` tokens (``pack_documents``:
    the remainder is dropped). Every block is full, so no padding is ever needed; the collator makes
    ``labels`` (= input_ids; the model shifts them once). Works with a transformers tokenizer and
    with the course's ``ByteLevelBPETokenizer`` (both have ``encode``).
    """
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, Sequence) or not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be a string or a list of strings")
    if eos_id is None:
        eos_id = getattr(tokenizer, "eos_token_id", None)  # a transformers tokenizer
        if eos_id is None and hasattr(tokenizer, "token_to_id"):  # the course's: GPT-2's end-of-text token
            eos_id = tokenizer.token_to_id("<|endoftext|>")
        if eos_id is None:
            raise ValueError("the tokenizer has no end-of-text token: pass eos_id= (the token that ends a text)")
    blocks = pack_documents([tokenizer.encode(t) for t in texts], block_size, eos_id)
    return [{"input_ids": row.tolist()} for row in blocks]


def _as_dataset(data: Any, name: str) -> Any:
    """A list of examples -> ``ExampleDataset``; a torch Dataset (anything with len and [i]) as it is."""
    if isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__"):
        if len(data) == 0:
            raise ValueError(f"{name} is empty: it needs at least one example")
        return data
    return ExampleDataset(data, name)


# --------------------------------------------------------------------------------------------
# Full fine-tuning with transformers' Trainer (spellings valid from 4.50 to 5.x)
# --------------------------------------------------------------------------------------------

# The manual's (transformers 4.x) names and their replacements: raised early with the fix.
_RENAMED_ARGS = {
    "evaluation_strategy": "eval_strategy (renamed in transformers 4.41; 4.41-4.50 still accept the old name with "
                           "a FutureWarning, 4.51 removed it)",
    "logging_dir": "nothing: valid on transformers 4.x but removed in 5, so code that passes it breaks there; "
                   "TensorBoard reads the TENSORBOARD_LOGGING_DIR environment variable, and the logs are in "
                   "trainer.state.log_history anyway",
    "tokenizer": "trainer_finetune's tokenizer argument (Trainer's processing_class=)",
}
# TrainingArguments fields that trainer_finetune sets from its own parameters.
_OWN_ARGS = {"output_dir": "output_dir", "max_steps": "max_steps", "learning_rate": "lr",
             "per_device_train_batch_size": "batch_size", "eval_steps": "eval_steps", "seed": "seed",
             "disable_tqdm": "disable_tqdm", "save_total_limit": "save_total_limit"}


def _check_training_args(training_args: dict[str, Any]) -> None:
    """Unknown, renamed or duplicated TrainingArguments names -> TypeError with the fix, before any work."""
    from transformers import TrainingArguments

    known = {f.name for f in dataclasses.fields(TrainingArguments)}
    for name in training_args:
        if name in _RENAMED_ARGS:
            raise TypeError(f"{name}= is the manual's transformers-4 spelling; use {_RENAMED_ARGS[name]}")
        if name in _OWN_ARGS:
            raise TypeError(f"pass {name} as trainer_finetune's {_OWN_ARGS[name]}= argument")
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            import transformers

            raise TypeError(f"{name!r} is not a TrainingArguments field in transformers "
                            f"{transformers.__version__}.{hint}")


def _default_collator(tokenizer: Any, first_example: Mapping[str, Any]) -> Any:
    """``DataCollatorForLanguageModeling(tokenizer, mlm=False)``: labels = input_ids, padding -> -100."""
    from transformers import DataCollatorForLanguageModeling

    if "labels" in first_example:
        raise ValueError(
            "the examples carry their own labels (instruction data: -100 on the prompt), which the default "
            "DataCollatorForLanguageModeling would overwrite with input_ids; pass data_collator= a collator that "
            "pads and keeps the labels (chapter 05's instruction collator)")
    if getattr(tokenizer, "pad_token", None) is None:
        raise ValueError(
            "the tokenizer has no pad token, and DataCollatorForLanguageModeling needs one to batch examples (GPT-2's "
            "tokenizer has none). Either tokenizer.pad_token = tokenizer.eos_token (then the collator also hides every "
            "real end-of-text token from the loss: fine for plain text in blocks, wrong for examples that must learn "
            "to stop), or add a new one: tokenizer.add_special_tokens({'pad_token': '<|pad|>'}) and "
            "model.resize_token_embeddings(len(tokenizer)); or pass data_collator=")
    if tokenizer.pad_token_id == getattr(tokenizer, "eos_token_id", None):
        warnings.warn("pad token = eos token: DataCollatorForLanguageModeling sets the labels of every end-of-text "
                      "token to -100, so the model is never trained to end a text", stacklevel=3)
    return DataCollatorForLanguageModeling(tokenizer, mlm=False)


def training_arguments(
    output_dir: str | Path,
    max_steps: int = 200,
    lr: float = 5e-5,
    batch_size: int = 8,
    eval_steps: int = 20,
    seed: int = 0,
    save_total_limit: int = 2,
    disable_tqdm: bool = False,
    precision: str = "fp32",
    **training_args: Any,
) -> Any:
    """The ``TrainingArguments`` that ``trainer_finetune`` trains with. Chapter 05 (fine-tuning).

    The same parameters as ``trainer_finetune`` (which calls this), checked the same way; returns the
    ``transformers.TrainingArguments`` object, so a notebook can show the exact call that will run:

    * ``eval_strategy="steps"`` every ``eval_steps`` updates (the manual's ``evaluation_strategy``
      is gone since 4.51), ``save_strategy`` the same and ``save_steps = eval_steps``, so every evaluated
      model is on disk (``load_best_model_at_end`` needs the saves to line up with the evaluations);
    * ``load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False``;
      ``save_total_limit`` checkpoints are kept (the best one always among them);
    * ``logging_steps = eval_steps``; ``report_to="none"`` (no wandb or TensorBoard account, works
      offline; the manual's ``logging_dir`` is gone in transformers 5); ``use_cpu`` without CUDA;
    * ``precision``: "fp32", "bf16", "fp16" (CUDA) or "auto" (bf16 or fp16 on a GPU, fp32 on a CPU;
      ``training.resolve_precision``) becomes ``bf16=True`` / ``fp16=True`` (the manual hard-codes
      ``fp16=True``, which fails on a machine without CUDA).

    Any other ``TrainingArguments`` field passes through ``**training_args`` (e.g. ``warmup_steps``,
    ``weight_decay``, ``gradient_accumulation_steps``, ``lr_scheduler_type``); the manual's 4.x names
    and the fields set from this function's own parameters raise a TypeError that says what to use.
    """
    from transformers import TrainingArguments

    for name, value in [("max_steps", max_steps), ("batch_size", batch_size), ("eval_steps", eval_steps),
                        ("save_total_limit", save_total_limit)]:
        check_positive_int(name, value)
    if eval_steps > max_steps:
        raise ValueError(f"eval_steps ({eval_steps}) > max_steps ({max_steps}): the model would never be evaluated, so "
                         "there would be no best checkpoint; lower eval_steps")
    check_positive("lr", lr)
    _check_training_args(training_args)
    on_gpu = torch.cuda.is_available()
    precision = resolve_precision(precision, "cuda" if on_gpu else "cpu")
    settings: dict[str, Any] = dict(
        output_dir=str(output_dir),
        max_steps=max_steps,
        learning_rate=lr,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",          # must match eval_strategy for load_best_model_at_end
        save_steps=eval_steps,
        logging_strategy="steps",
        logging_steps=eval_steps,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,        # a loss: lower is better
        save_total_limit=save_total_limit,
        report_to="none",               # no wandb / tensorboard: offline, no account
        use_cpu=not on_gpu,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        seed=seed,
        disable_tqdm=disable_tqdm,
    )
    settings.update(training_args)
    with quiet_transformers():
        return TrainingArguments(**settings)


def trainer_finetune(
    model: nn.Module,
    tokenizer: Any,
    train_dataset: Any,
    eval_dataset: Any,
    output_dir: str | Path,
    max_steps: int = 200,
    lr: float = 5e-5,
    batch_size: int = 8,
    eval_steps: int = 20,
    patience: int | None = 3,
    seed: int = 0,
    data_collator: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]] | None = None,
    save_total_limit: int = 2,
    disable_tqdm: bool = False,
    precision: str = "fp32",
    **training_args: Any,
) -> tuple[Trainer, TrainOutput]:
    """Fine-tune a transformers model with ``Trainer``, keeping the best checkpoint. Chapter 05 (fine-tuning).

    ``model``: a transformers model (``GPT2LMHeadModel``, a peft model, or one whose layers chapter 06
    replaced); the course's own ``GPT`` converts with ``model.to_hf()``. ``train_dataset`` /
    ``eval_dataset``: lists of examples (``lm_examples`` for text; instruction examples with labels) or
    torch Datasets. The eval set is required: the best checkpoint and early stopping are chosen on it.

    What is set up, and why (names valid on every transformers the course allows, 4.50 to 5.x):

    * the ``TrainingArguments`` come from ``training_arguments`` (same parameters; see there):
      evaluation and a checkpoint every ``eval_steps``, the best checkpoint (lowest ``eval_loss``)
      loaded back at the end, ``precision`` as bf16/fp16 flags, offline logging;
    * ``EarlyStoppingCallback(patience)``: stop after ``patience`` evaluations without improvement
      (None: never stop early);
    * ``data_collator``: None -> ``DataCollatorForLanguageModeling(tokenizer, mlm=False)``, which pads
      and makes ``labels`` = input_ids with padding at -100 (the tokenizer needs a pad token; examples
      that carry their own labels need a collator that keeps them); without a collator there are no
      labels and no loss;
    * ``processing_class=tokenizer`` (the manual's ``tokenizer=``), saved with each checkpoint;
    * ``disable_tqdm=True`` also drops the printed log lines (they are still in
      ``trainer.state.log_history``, see ``trainer_history``).

    Any other ``TrainingArguments`` field passes through ``**training_args`` (e.g. ``warmup_steps``,
    ``weight_decay``, ``logging_steps``, ``gradient_accumulation_steps``, ``lr_scheduler_type``).

    Files: each ``output_dir/checkpoint-N`` holds ``model.safetensors`` (weights are never pickled),
    the config and the tokenizer, ``trainer_state.json``, and what ``Trainer`` needs to resume:
    ``optimizer.pt``, ``scheduler.pt``, ``rng_state.pth`` and ``training_args.bin``, which it writes
    with ``torch.save`` and reads back with ``torch.load(weights_only=True)`` (pass
    ``save_only_model=True`` to keep only the model). A tied head (GPT-2's ``lm_head`` is the token
    embedding) is stored once, so loading the best checkpoint logs "missing keys ... lm_head.weight":
    harmless, the head is the embedding it was tied to (that notice and transformers' other
    informational warnings are hidden while it runs; errors still show). Returns ``(trainer, train_output)``;
    ``trainer.state.best_metric`` / ``best_model_checkpoint`` name the model that was kept.
    """
    from transformers import (
        EarlyStoppingCallback,
        PreTrainedModel,
        PrinterCallback,
        Trainer,
    )

    from llm_course.models.gpt import GPT

    if isinstance(model, GPT):
        raise TypeError("trainer_finetune needs a transformers model: convert the course's GPT with model.to_hf() "
                        "(or load it with load_pretrained(..., as_course_model=False))")
    if not isinstance(model, PreTrainedModel) and not type(model).__module__.startswith("peft"):
        raise TypeError(f"model must be a transformers PreTrainedModel (or a peft model), got {type(model).__name__}")
    if eval_dataset is None:
        raise ValueError("eval_dataset is required: evaluation every eval_steps, the best checkpoint and early "
                         "stopping all need held-out examples (the manual asks for evaluation without one, which "
                         "Trainer refuses); e.g. lm_examples(tokenizer, val_texts, block_size)")
    if patience is not None:
        check_positive_int("patience", patience)
    if hasattr(model, "get_base_model") and "label_names" not in training_args:
        # Trainer finds the label names in the model class's forward signature. transformers 4.50 reads the
        # PeftModel's (*args, **kwargs): no labels, so evaluation computes no eval_loss and choosing the best
        # checkpoint fails (KeyError 'eval_loss'); 5.x looks inside the peft model. The base model's names,
        # given explicitly, are what 5.x finds itself: the same run on both.
        from transformers.utils import find_labels

        training_args["label_names"] = find_labels(type(model.get_base_model()))
    args = training_arguments(output_dir, max_steps=max_steps, lr=lr, batch_size=batch_size, eval_steps=eval_steps,
                              seed=seed, save_total_limit=save_total_limit, disable_tqdm=disable_tqdm,
                              precision=precision, **training_args)
    train_ds, eval_ds = _as_dataset(train_dataset, "train_dataset"), _as_dataset(eval_dataset, "eval_dataset")
    if data_collator is None:
        data_collator = _default_collator(tokenizer, train_ds[0])
    callbacks = [EarlyStoppingCallback(early_stopping_patience=patience)] if patience is not None else []
    with quiet_transformers():
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train_ds,
            eval_dataset=eval_ds,
            data_collator=data_collator,
            processing_class=tokenizer,
            callbacks=callbacks,
        )
    if disable_tqdm:
        trainer.remove_callback(PrinterCallback)  # no progress bar and no printed dicts either
    with quiet_transformers():
        result = trainer.train()
    return trainer, result


def trainer_history(trainer: Trainer) -> dict[str, list[tuple[int, float]]]:
    """The losses a ``Trainer`` logged: ``{"train": [(step, loss)], "eval": [(step, eval_loss)]}``. Chapter 05."""
    history: dict[str, list[tuple[int, float]]] = {"train": [], "eval": []}
    for entry in trainer.state.log_history:
        if "loss" in entry:
            history["train"].append((entry["step"], float(entry["loss"])))
        if "eval_loss" in entry:
            history["eval"].append((entry["step"], float(entry["eval_loss"])))
    return history
