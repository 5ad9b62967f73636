"""The manual's chapter-5 ``Trainer`` code, run for real against the installed transformers. Chapter 05.

Where the manual goes wrong (ERRATA section 5): ``TrainingArguments(evaluation_strategy=...)`` is
gone since transformers 4.51 (``eval_strategy``); ``Trainer(tokenizer=...)`` became ``processing_class=``
(a FutureWarning on 4.46-4.57, an error on 5); ``logging_dir`` is gone in 5; evaluation is requested
with no eval dataset; ``padding=True`` on GPT-2's pad-less tokenizer; an undefined ``dataset``; no data
collator, so the batches have no labels and the model no loss. ``demonstrate_manual_errors`` runs each
piece on the installed transformers and records what happens (the exception, or None), next to the
version it first fails on (``fails_since``); ``manual_error_expected`` compares the two, so a
transformers release that behaves differently from the recorded history fails the notebook.
The working code is ``llm_course.train.finetuning``.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from llm_course.core.paths import CHECKPOINTS_DIR
from llm_course.core.runtime import quiet_transformers
from llm_course.train.finetuning import ExampleDataset

__all__ = ["OLDEST_TRANSFORMERS", "manual_error_expected", "demonstrate_manual_errors"]


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


@quiet_transformers()  # the lesson is in the exceptions; transformers' informational notices are noise here
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

        tokenizer = AutoTokenizer.from_pretrained(CHECKPOINTS_DIR / "course-gpt")
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
