"""Fine-tuning a pretrained model, and measuring what it costs. Chapters 05 (fine-tuning) and 06 (PEFT).

Three parts:

1. **Full fine-tuning with Hugging Face's ``Trainer``** (``trainer_finetune``; its ``TrainingArguments``
   from ``training_arguments``), valid on every transformers the course allows (4.50 to 5.x): evaluation every ``eval_steps`` on a held-out set, a checkpoint at each
   evaluation, the best one (lowest ``eval_loss``) loaded back at the end, early stopping when the
   held-out loss stops improving, and a data collator that makes the labels. ``lm_examples`` turns
   plain text into equal-length blocks for it; instruction data (chapter 05's prompt/answer
   examples, labels -100 on the prompt) comes with its own padding collator.

2. **The manual's Trainer code, run for real** (``demonstrate_manual_errors``): each of its argument
   spellings against the installed transformers, the exception transformers raises, and the fix.

3. **Notebook 06's comparison** (``measure_finetuning``, ``comparison_table``, ``plot_comparison``):
   the same short training loop for full fine-tuning, LoRA, QLoRA and adapters (the caller prepares
   the model), with the memory of training counted from the tensors themselves::

       weights      every parameter and buffer as stored (a 4-bit weight kept in uint8 buffers
                    counts half a byte per weight; a tied tensor counts once)
       gradients    one tensor per *trainable* parameter, same dtype: 4 bytes per fp32 parameter
       optimizer    AdamW's state: exp_avg and exp_avg_sq per trainable parameter (8 bytes per fp32
                    parameter) + a 4-byte step counter per trainable tensor
       activations  what autograd saves during the forward for the backward (seen with
                    ``torch.autograd.graph.saved_tensors_hooks``): grows with batch x length, and
                    does not shrink much with PEFT, which freezes weights, not the forward pass

   Full fine-tuning of a model with N fp32 parameters therefore needs 4N (weights) + 4N (gradients)
   + 8N (AdamW) = 16N bytes before a single activation: LoRA keeps the 4N of weights and shrinks
   the other 12N to the adapter's size; QLoRA shrinks the weights as well.

Where the manual goes wrong (ERRATA section 5): ``TrainingArguments(evaluation_strategy=...)`` is
gone since transformers 4.51 (``eval_strategy``); ``Trainer(tokenizer=...)`` became ``processing_class=``
(a FutureWarning on 4.46-4.57, an error on 5); ``logging_dir`` is gone in 5; evaluation is requested
with no eval dataset; ``padding=True`` on GPT-2's pad-less tokenizer; an undefined ``dataset``; no data
collator, so the batches have no labels and the model no loss. ``demonstrate_manual_errors`` runs each
piece on the installed transformers and records what happens, next to the versions it fails on
(``fails_since``; ``manual_error_expected`` compares the two).

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

import contextlib
import copy
import dataclasses
import difflib
import math
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from llm_course.nn.objectives import pack_documents
from llm_course.nn.quantization import _plain_bytes, model_size_bytes
from llm_course.train.loop import (
    BatchSource,
    _batch_source,
    _model_device,
    _model_loss,
    _to_device,
    configure_optimizer,
    estimate_loss,
)
from llm_course.train.lora import count_parameters
from llm_course.train.precision import autocast_context, resolve_precision

# How measure_finetuning gets a held-out loss: evaluate_fn(model) -> loss (or {"loss": ...}), or eval batches.
EvalSource = Callable[[nn.Module], "float | Mapping[str, float]"] | Sequence[Mapping[str, torch.Tensor]]

if TYPE_CHECKING:  # transformers is imported when a function needs it: importing this module stays fast
    from transformers import Trainer
    from transformers.trainer_utils import TrainOutput

__all__ = [
    # Trainer fine-tuning
    "ExampleDataset",
    "lm_examples",
    "training_arguments",
    "trainer_finetune",
    "trainer_history",
    # the manual's code
    "demonstrate_manual_errors",
    "manual_error_expected",
    "OLDEST_TRANSFORMERS",
    # the comparison harness
    "saved_activation_bytes",
    "measure_finetuning",
    "comparison_table",
    "plot_comparison",
]


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


def _check_positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


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
        _check_positive(name, value)
    if eval_steps > max_steps:
        raise ValueError(f"eval_steps ({eval_steps}) > max_steps ({max_steps}): the model would never be evaluated, so "
                         "there would be no best checkpoint; lower eval_steps")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be > 0, got {lr!r}")
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
    with _benign_notices_hidden():
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
        _check_positive("patience", patience)
    args = training_arguments(output_dir, max_steps=max_steps, lr=lr, batch_size=batch_size, eval_steps=eval_steps,
                              seed=seed, save_total_limit=save_total_limit, disable_tqdm=disable_tqdm,
                              precision=precision, **training_args)
    train_ds, eval_ds = _as_dataset(train_dataset, "train_dataset"), _as_dataset(eval_dataset, "eval_dataset")
    if data_collator is None:
        data_collator = _default_collator(tokenizer, train_ds[0])
    callbacks = [EarlyStoppingCallback(early_stopping_patience=patience)] if patience is not None else []
    with _benign_notices_hidden():
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
    with _benign_notices_hidden():
        result = trainer.train()
    return trainer, result


@contextlib.contextmanager
def _benign_notices_hidden() -> Iterator[None]:
    """Hide transformers' informational warnings while the Trainer runs (errors still show).

    On a GPT-2-style model they are all benign: the pad token set on the tokenizer is copied into the
    config ("new PAD/BOS/EOS tokens"), ``loss_type=None`` means the default causal-LM loss, and the tied
    ``lm_head`` is stored once, so reloading the best checkpoint reports it "missing".
    """
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def trainer_history(trainer: Trainer) -> dict[str, list[tuple[int, float]]]:
    """The losses a ``Trainer`` logged: ``{"train": [(step, loss)], "eval": [(step, eval_loss)]}``. Chapter 05."""
    history: dict[str, list[tuple[int, float]]] = {"train": [], "eval": []}
    for entry in trainer.state.log_history:
        if "loss" in entry:
            history["train"].append((entry["step"], float(entry["loss"])))
        if "eval_loss" in entry:
            history["eval"].append((entry["step"], float(entry["eval_loss"])))
    return history


# --------------------------------------------------------------------------------------------
# The manual's Trainer code against the installed transformers
# --------------------------------------------------------------------------------------------


# The oldest transformers that pyproject.toml allows. A manual error with ``fails_since`` equal to it fails on
# every version the course supports; a later one (e.g. "5.0") only runs (perhaps with a FutureWarning) before it.
OLDEST_TRANSFORMERS = "4.50"


def _release(version: str) -> tuple[int, ...]:
    """(major, minor, patch) of a version string: "5.0.0.dev0" -> (5, 0, 0), so a pre-release counts as its release."""
    from packaging.version import Version

    return Version(version).release


def manual_error_expected(row: Mapping[str, Any], version: str | None = None) -> bool:
    """Whether ``row`` (from ``demonstrate_manual_errors``) must fail on transformers ``version``. Chapter 05.

    ``version``: a version string, default the installed transformers. True when ``version`` is at or after
    the row's ``fails_since``; a notebook asserts ``(row["error"] is not None) == manual_error_expected(row)``,
    so a transformers release that behaves differently from the recorded history fails the run.
    """
    if version is None:
        import transformers

        version = transformers.__version__
    if "fails_since" not in row:
        raise KeyError("row has no 'fails_since': pass a row returned by demonstrate_manual_errors()")
    return _release(version) >= _release(row["fails_since"])


def _attempt(manual: str, action: Callable[[], Any], why: str, fix: str,
             fails_since: str = OLDEST_TRANSFORMERS) -> dict[str, str | None]:
    """Run ``action``; record the exception it raises (None: it ran) and any deprecation warning it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            action()
            error = None
        except Exception as e:  # noqa: BLE001 - whatever transformers raises is the lesson
            error = f"{type(e).__name__}: {e}".strip()
    deprecations = [w for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))]
    warning = f"{deprecations[0].category.__name__}: {deprecations[0].message}" if deprecations else None
    return {"manual": manual, "error": error, "warning": warning, "fails_since": fails_since, "why": why, "fix": fix}


@_benign_notices_hidden()  # the lesson is in the exceptions; transformers' informational notices are noise here
def demonstrate_manual_errors(tokenizer: Any = None) -> list[dict[str, str | None]]:
    """Run the manual's chapter-5 ``Trainer`` code against the installed transformers. Chapter 05.

    Each entry: ``manual`` (the manual's line), ``error`` ("ExceptionType: message" exactly as
    transformers/Python raise it, or None if it ran), ``warning`` (the FutureWarning/DeprecationWarning
    it gave, if any), ``fails_since`` (the first transformers version on which it fails; equal to
    ``OLDEST_TRANSFORMERS`` when it fails on every version the course allows), ``why`` and ``fix``.
    Recorded history, checked by running transformers 4.50.0, 4.57.1 and 5.x: ``evaluation_strategy``
    runs with a FutureWarning on 4.50 and is gone from 4.51; ``logging_dir`` is valid on 4.x and gone in 5;
    ``tokenizer=`` warns on 4.46-4.57 and fails on 5; the other four fail everywhere.
    ``manual_error_expected(row)`` says whether a row must fail on the installed version.
    Uses a 1-layer random GPT-2 and ``tokenizer`` (default: the shipped course-gpt tokenizer, which,
    like GPT-2's, has no pad token); the last check runs one training step. Takes a few seconds.
    """
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        PrinterCallback,
        Trainer,
        TrainingArguments,
    )

    if tokenizer is None:
        from transformers import AutoTokenizer

        from llm_course.zoo.loading import checkpoint_dir

        tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir("course-gpt"))
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=64, vocab_size=len(tokenizer),
                                       bos_token_id=eos, eos_token_id=eos))
    texts = ["Fine-tuning adapts a pretrained model.", "The loss must go down on held-out text too."]
    results = []
    with tempfile.TemporaryDirectory() as out:
        quiet = dict(output_dir=out, report_to="none", use_cpu=True, disable_tqdm=True)
        results.append(_attempt(
            'TrainingArguments(..., evaluation_strategy="steps", eval_steps=1000)',
            lambda: TrainingArguments(evaluation_strategy="steps", eval_steps=1000, **quiet),
            "renamed to eval_strategy in transformers 4.41; 4.50 still accepts the old name with a FutureWarning, "
            "4.51 removed it",
            'TrainingArguments(..., eval_strategy="steps", eval_steps=...)', fails_since="4.51"))
        results.append(_attempt(
            "TrainingArguments(..., logging_dir='./logs')",
            lambda: TrainingArguments(logging_dir=str(Path(out) / "logs"), **quiet),
            "valid on transformers 4.x; removed in 5 (TensorBoard reads TENSORBOARD_LOGGING_DIR from the environment)",
            "leave it out; report_to='none' and read trainer.state.log_history", fails_since="5.0"))
        args = TrainingArguments(eval_strategy="steps", eval_steps=1, max_steps=1, **quiet)
        no_eval = TrainingArguments(max_steps=1, per_device_train_batch_size=2, **quiet)
        examples = ExampleDataset([{"input_ids": tokenizer.encode(t)} for t in texts])
        results.append(_attempt(
            "Trainer(model=model, args=training_args, train_dataset=train_dataset, tokenizer=tokenizer)",
            lambda: Trainer(model=model, args=no_eval, train_dataset=examples, tokenizer=tokenizer),
            "Trainer's tokenizer= was renamed processing_class= in 4.46: a FutureWarning up to 4.57, removed in 5",
            "Trainer(..., processing_class=tokenizer)", fails_since="5.0"))
        results.append(_attempt(
            'evaluation_strategy="steps" but Trainer(...) gets no eval_dataset',
            lambda: Trainer(model=model, args=args, train_dataset=examples, processing_class=tokenizer),
            "evaluation is requested, but there is nothing held out to evaluate on",
            "Trainer(..., eval_dataset=held_out_examples)"))
        results.append(_attempt(
            "prepare_dataset: tokenizer(texts, truncation=True, padding=True, max_length=512)",
            lambda: tokenizer(texts, truncation=True, padding=True, max_length=512),
            "GPT-2's tokenizer has no pad token, so padding=True cannot pad",
            "cut the text into equal blocks (lm_examples) or set tokenizer.pad_token"))
        results.append(_attempt(
            "train_dataset = dataset.map(prepare_dataset, batched=True)",
            lambda: exec("dataset.map(prepare_dataset, batched=True)", {"prepare_dataset": None}),
            "`dataset` is never defined (and .map needs the `datasets` package)",
            "build the examples as a list of dicts: lm_examples(tokenizer, texts, block_size)"))

        # No data collator: Trainer falls back to DataCollatorWithPadding, which pads but makes no labels.
        padded_tok = copy.deepcopy(tokenizer)
        if padded_tok.pad_token is None:
            padded_tok.pad_token = padded_tok.eos_token  # get past the padding error above

        def train_without_collator() -> None:
            trainer = Trainer(model=model, args=no_eval, train_dataset=examples, processing_class=padded_tok)
            trainer.remove_callback(PrinterCallback)
            trainer.train()

        results.append(_attempt(
            "Trainer(...) with no data_collator, examples without labels",
            train_without_collator,
            "the default collator (DataCollatorWithPadding) pads but makes no labels, so the model computes no loss",
            "data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False): labels = input_ids, padding -100"))
    return results


# --------------------------------------------------------------------------------------------
# The comparison harness (notebook 06): parameters, memory from the tensors, time, loss
# --------------------------------------------------------------------------------------------


def _storage_key(t: torch.Tensor) -> tuple[Any, int]:
    """(identity of the memory behind ``t``, its size in bytes): views of one storage share the key."""
    try:
        storage = t.untyped_storage()
        return ("storage", t.device, storage.data_ptr()), storage.nbytes()
    except (RuntimeError, NotImplementedError, TypeError):  # wrapper subclasses (torchao) have no plain storage
        return ("tensor", id(t)), _plain_bytes(t)


def _unique_bytes(tensors: Sequence[torch.Tensor]) -> int:
    """Bytes of the memory behind ``tensors``, each storage counted once."""
    seen: dict[Any, int] = {}
    for t in tensors:
        key, nbytes = _storage_key(t)
        seen[key] = nbytes
    return sum(seen.values())


def saved_activation_bytes(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[int, torch.Tensor]:
    """Bytes autograd keeps from one forward for the backward, and the loss. Chapter 06 (PEFT).

    Runs ``model(**batch).loss`` inside ``torch.autograd.graph.saved_tensors_hooks``: every tensor an
    operation saves for its backward passes through the ``pack`` hook. Each storage is counted once
    (many saved tensors are views of one buffer, e.g. q, k, v cut from one projection), and the model's
    own parameters and buffers are left out (they are weights, counted once already). Returns
    ``(bytes, loss)``; call ``loss.backward()`` to use (and free) what was saved.
    """
    own = {_storage_key(t)[0] for t in [*model.parameters(), *model.buffers()]}
    saved: dict[Any, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key, nbytes = _storage_key(t)
        if key not in own:
            saved[key] = nbytes
        return t  # keep the tensor itself: memory is what it would be without the hook

    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        loss = _model_loss(model, dict(batch))
    return sum(saved.values()), loss


def _rss_bytes() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process().memory_info().rss


def _eval_loss(model: nn.Module, evaluate_fn: EvalSource | None) -> float | None:
    """Held-out loss: ``evaluate_fn(model)`` (a float or a dict with "loss") or a list of eval batches."""
    if evaluate_fn is None:
        return None
    if callable(evaluate_fn):
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                value = evaluate_fn(model)
        finally:
            model.train(was_training)
        value = value["loss"] if isinstance(value, Mapping) else value
        return float(value)
    return estimate_loss(model, evaluate_fn)["loss"]


def measure_finetuning(
    name: str,
    model: nn.Module,
    get_batch: BatchSource,
    steps: int,
    lr: float,
    evaluate_fn: EvalSource | None = None,
    warmup: int = 1,
    weight_decay: float = 0.0,
    seed: int | None = 0,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Train ``model`` for ``steps`` AdamW updates and measure what it costs. Chapter 06 (PEFT).

    The same function measures full fine-tuning, LoRA, QLoRA and adapters: prepare the model first
    (freeze, wrap, quantize), then pass it in; only parameters with ``requires_grad`` are trained
    (``configure_optimizer``: AdamW, ``weight_decay`` on matrices). ``get_batch(i)`` returns the model's
    keyword arguments with labels (or pass a re-iterable of batches). ``evaluate_fn``: a callable
    ``evaluate_fn(model) -> float`` (or a dict with "loss"), run under ``no_grad`` in eval mode, or a
    list of held-out batches (``estimate_loss``); measured before and after training.

    Memory is counted from the tensors (bytes; a storage shared by several tensors counts once):
    ``weights_bytes`` (``model_size_bytes``: parameters and buffers as stored), ``gradient_bytes``
    (every ``.grad`` after the first backward), ``optimizer_bytes`` (the optimizer's state tensors after
    its first step), ``activation_bytes`` (saved for backward in one step: ``saved_activation_bytes``)
    and ``total_bytes``, their sum: the memory these tensors need if all are alive at once (a slight
    over-estimate: during the backward, saved activations are freed while the gradients appear).
    Not counted: temporaries inside an operation, the allocator's slack, the interpreter.
    ``rss_delta_bytes`` is the growth of the process's resident memory (highest sample after forward and
    after each step, minus before the first): the operating system's view, noisy (allocator caching,
    other objects), None without psutil.

    Time: ``time_per_step_s`` is the median over the steps after the first ``warmup`` (>= 1: the first
    step carries the measuring hooks and one-time set-up), each forward + backward + update.
    Losses: ``train_loss_first``/``train_loss_final`` (the first and the last step's training loss),
    ``eval_loss_before``/``eval_loss`` (None without ``evaluate_fn``). Also the parameter counts
    (``count_parameters``). The model is left trained, in the mode it came in.

    ``precision``: "fp32", "bf16", "fp16" (CUDA, with a GradScaler) or "auto" (bf16/fp16 on a GPU, fp32 on
    a CPU; ``training.resolve_precision``): the forward runs under ``torch.autocast``, so the saved
    activations are half the size in bf16/fp16; weights, gradients and AdamW's state keep their dtypes.
    The result's ``precision`` says which one ran.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_positive("steps", steps)
    if not isinstance(warmup, int) or warmup < 1 or warmup >= steps:
        raise ValueError(f"warmup must be an integer in [1, steps): the steps after it are timed, so steps >= 2; got "
                         f"warmup={warmup!r} with steps={steps}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("the model has no trainable parameters: unfreeze some, or add LoRA / adapters first")
    if seed is not None:
        torch.manual_seed(seed)
    source = _batch_source(get_batch)
    device, was_training = _model_device(model), model.training
    trainable, total = count_parameters(model)  # as peft counts: tied once, 4-bit weights as their values
    counts = {"trainable_params": trainable, "total_params": total, "trainable_pct": 100.0 * trainable / total}
    precision = resolve_precision(precision, device)
    eval_before = _eval_loss(model, evaluate_fn)
    optimizer = configure_optimizer(model, weight_decay=weight_decay, lr=lr, betas=(0.9, 0.999))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")  # a pass-through unless fp16
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    memory: dict[str, int] = {"weights_bytes": model_size_bytes(model)}
    rss_start, rss_peak = _rss_bytes(), None
    losses, times = [], []
    model.train()
    try:
        for i in range(steps):
            batch = _to_device(source(i), device, i, "get_batch")
            sync()
            t0 = time.perf_counter()
            with autocast_context(precision, device):
                if i == 0:  # measure on the first step (it is not timed)
                    memory["activation_bytes"], loss = saved_activation_bytes(model, batch)
                else:
                    loss = _model_loss(model, batch)
            rss = _rss_bytes()  # after the forward: activations are alive
            scaler.scale(loss).backward()
            if i == 0:
                memory["gradient_bytes"] = _unique_bytes([p.grad for p in model.parameters() if p.grad is not None])
            scaler.step(optimizer)  # optimizer.step(), unless fp16 gradients overflowed
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            sync()
            times.append(time.perf_counter() - t0)
            if i == 0:
                memory["optimizer_bytes"] = _unique_bytes(
                    [t for state in optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor)])
            value = float(loss.detach())
            if not math.isfinite(value):
                raise ValueError(f"{name}: the training loss is {value} at step {i}; lower lr")
            losses.append(value)
            if rss is not None:
                rss_peak = max(rss, _rss_bytes() or 0, rss_peak or 0)
    finally:
        model.train(was_training)
    eval_after = _eval_loss(model, evaluate_fn)
    memory["total_bytes"] = sum(memory[k] for k in ("weights_bytes", "gradient_bytes", "optimizer_bytes",
                                                    "activation_bytes"))
    return {
        "name": name,
        **counts,
        "time_per_step_s": statistics.median(times[warmup:]),
        "train_loss_first": losses[0],
        "train_loss_final": losses[-1],
        "eval_loss_before": eval_before,
        "eval_loss": eval_after,
        **memory,
        "rss_delta_bytes": None if rss_start is None or rss_peak is None else rss_peak - rss_start,
        "steps": steps,
        "precision": precision,
    }


def _mb(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.2f}"


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def comparison_table(results: Sequence[Mapping[str, Any]]) -> str:
    """``measure_finetuning`` results as a Markdown table (memory in MiB). Chapter 06 (PEFT).

    Display it in a notebook with ``IPython.display.Markdown(comparison_table(results))``.
    """
    if not results:
        raise ValueError("results is empty: pass the dicts measure_finetuning returned")
    header = ["method", "trainable params", "trainable %", "weights MiB", "grads MiB", "optimizer MiB",
              "activations MiB", "total MiB", "RSS delta MiB (noisy)", "ms / step", "train loss", "eval loss"]

    def loss(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    rows = [[str(r["name"]), f"{r['trainable_params']:,}", f"{r['trainable_pct']:.2f}", _mb(r["weights_bytes"]),
             _mb(r["gradient_bytes"]), _mb(r["optimizer_bytes"]), _mb(r["activation_bytes"]), _mb(r["total_bytes"]),
             _mb(r.get("rss_delta_bytes")), f"{1000 * r['time_per_step_s']:.1f}", loss(r["train_loss_final"]),
             loss(r.get("eval_loss"))] for r in results]
    return _markdown(header, rows)


def plot_comparison(results: Sequence[Mapping[str, Any]]) -> Any:
    """Four bar charts of ``measure_finetuning`` results; returns the matplotlib Figure. Chapter 06 (PEFT).

    Trainable parameters (log scale), training memory stacked by kind (weights, gradients, optimizer,
    activations; MiB), time per step (ms) and held-out loss (before -> after when both are known).
    """
    import matplotlib.pyplot as plt

    if not results:
        raise ValueError("results is empty: pass the dicts measure_finetuning returned")
    names = [str(r["name"]) for r in results]
    x = list(range(len(results)))
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    ax = axes[0]
    ax.bar(x, [max(r["trainable_params"], 1) for r in results], color="tab:blue")
    ax.set_yscale("log")
    ax.set_title("trainable parameters (log)")
    ax = axes[1]
    bottom = [0.0] * len(results)
    for key, label in [("weights_bytes", "weights"), ("gradient_bytes", "gradients"),
                       ("optimizer_bytes", "optimizer"), ("activation_bytes", "activations")]:
        heights = [r[key] / 2**20 for r in results]
        ax.bar(x, heights, bottom=bottom, label=label)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_title("training memory (MiB)")
    ax.legend(fontsize=8)
    ax = axes[2]
    ax.bar(x, [1000 * r["time_per_step_s"] for r in results], color="tab:green")
    ax.set_title("time per step (ms)")
    ax = axes[3]
    if all(r.get("eval_loss") is not None for r in results):
        before = [r.get("eval_loss_before") for r in results]
        if all(b is not None for b in before):
            ax.bar([i - 0.2 for i in x], before, width=0.4, color="lightgray", label="before")
            ax.bar([i + 0.2 for i in x], [r["eval_loss"] for r in results], width=0.4, color="tab:red", label="after")
            ax.legend(fontsize=8)
        else:
            ax.bar(x, [r["eval_loss"] for r in results], color="tab:red")
        ax.set_title("held-out loss")
    else:
        ax.bar(x, [r["train_loss_final"] for r in results], color="tab:red")
        ax.set_title("final training loss")
    for ax in axes:
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=20, ha="right")
    fig.tight_layout()
    return fig
