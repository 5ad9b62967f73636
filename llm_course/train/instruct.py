"""Instruction tuning: teach a pretrained LM to follow instructions, and measure it. Chapter 05 (fine-tuning).

A pretrained model only continues text. Instruction tuning shows it (instruction, input, response)
examples written in a fixed *prompt format*, so that it learns "after ``### Response:`` comes the
answer, then the end-of-text token". The data and the prompt formats (``make_instructions``,
``format_prompt``, ``format_chat``) are in ``llm_course.train.instructions``; this module trains on them:

3. **Encoding** (``encode_instruction``): prompt tokens get the label -100 (no loss), the response and
   an appended end-of-text token are learned; ``InstructionCollator`` pads a batch, ``batches`` feeds
   ``llm_course.train.loop.train``.
4. **Evaluation** (``answer``, ``exact_match``) and the training wrapper ``instruction_tune``.

Where the manual goes wrong (ERRATA section 5): its instruction tuning computes the loss on the prompt
as well as the answer (the model spends its capacity learning to reproduce instructions it will always
be given) and appends no end-of-sequence token, so the model never learns to stop: at inference it
answers and then keeps writing. Here the prompt is masked with -100 and every response ends with
the tokenizer's end-of-text id; ``answer`` stops there.

Notebook use::

    from llm_course.zoo.loading import load_pretrained
    from llm_course.train import instruct, instructions

    model, tok = load_pretrained("course-gpt")
    tasks = instructions.QUICK_TASKS                      # what a minute of tuning can teach (see below)
    train_set = instructions.make_instructions(4800, seed=0, split="train", tasks=tasks)
    test_set = instructions.make_instructions(200, seed=0, split="test", tasks=tasks)
    instruct.exact_match(model, tok, test_set)["accuracy"]      # 0.0: it only continues text
    instruct.instruction_tune(model, tok, train_set, steps=300, batch_size=16, lr=6e-3)
    instruct.exact_match(model, tok, test_set)["by_task"]

Measured (course-gpt, 2 CPU threads, seed 0; 200 held-out test instructions, exact match). 300 steps of
batch 16 at lr 6e-3 take about 80 s (160 s of CPU time): on ``QUICK_TASKS`` the accuracy goes from 0.00
to 0.38 (count_words 0.63, translate_ru_en 0.47, translate_en_ru 0.03). On all eight tasks the same
budget gives only 0.04 (1,500 steps: 0.21): the reverse / sort / case / arithmetic test inputs are new,
so they need the *procedure*, and course-gpt cannot even copy a string from its prompt (it never
learned to: it was pretrained for 30 minutes on prose). Tuning teaches the format and when to stop
at once; new skills take far longer.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from llm_course.core.checks import check_int, check_positive_int
from llm_course.infer.generation import generate
from llm_course.nn.objectives import IGNORE_INDEX
from llm_course.text.encoding import encode_plain
from llm_course.text.tasks import Example, check
from llm_course.text.tokenizer import ByteLevelBPETokenizer
from llm_course.train.instructions import Instruction, check_instruction, prompt_text
from llm_course.train.loop import TrainConfig, TrainResult, train

__all__ = [
    "eos_token_id",
    "encode_instruction",
    "InstructionCollator",
    "batches",
    "answer",
    "exact_match",
    "instruction_tune",
    "tune_encoded",
]

# ----------------------------------------------------------------------------------------
# 3. Encoding: learn the response and the end-of-text token, never the prompt
# ----------------------------------------------------------------------------------------


def eos_token_id(tokenizer: Any) -> int:
    """The end-of-text id of the course tokenizer (``<|endoftext|>``) or a transformers one. Chapter 05 (fine-tuning).

    A ValueError if there is none: without it a model cannot learn to stop.
    """
    if isinstance(tokenizer, ByteLevelBPETokenizer):
        eos = tokenizer.token_to_id("<|endoftext|>")
    else:
        eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError("the tokenizer has no end-of-text token (course: '<|endoftext|>'; transformers: "
                         "eos_token); instruction tuning needs one so that the model learns to stop")
    return int(eos)


def encode_instruction(
    tokenizer: Any, example: Instruction, max_length: int, template: str = "alpaca"
) -> dict[str, list[int]]:
    """One example as ``{"input_ids", "attention_mask", "labels"}`` lists. Chapter 05 (fine-tuning).

    ``input_ids`` = prompt tokens + response tokens + end-of-text id. ``labels`` are -100 on the prompt
    (no loss there: the model is always *given* the prompt) and equal to ``input_ids`` on the response
    and the end-of-text id (the model learns to answer, then to stop; the GPT shifts labels itself).
    The manual does neither (ERRATA 5). All text is encoded as plain text (``allowed_special="none"``):
    a user who types "<|endoftext|>" gets those characters, not the control token.

    ``template``: ``"alpaca"`` (``format_prompt``) or ``"chat"`` (``format_chat`` with one user message).
    Works with the course tokenizer and transformers tokenizers (no BOS/EOS added by them). An example
    longer than ``max_length`` tokens raises ValueError: nothing is cut silently (cutting the prompt
    would drop the instruction, cutting the end would drop the end-of-text token).
    """
    example = check_instruction(example)
    check_int("max_length", max_length, minimum=2, hint="tokens per example")
    if not isinstance(example.output, str) or not example.output:
        raise ValueError(f"the output is empty in {example!r}: there is nothing to learn")
    prompt_ids = encode_plain(tokenizer, prompt_text(example, template))
    response_ids = encode_plain(tokenizer, example.output) + [eos_token_id(tokenizer)]
    total = len(prompt_ids) + len(response_ids)
    if total > max_length:
        raise ValueError(
            f"this example has {total} tokens ({len(prompt_ids)} prompt + {len(response_ids)} response with "
            f"end-of-text), more than max_length={max_length}; raise max_length (up to the model's context) or "
            f"drop long examples: {example.instruction[:40]!r} / {example.input[:40]!r}"
        )
    return {
        "input_ids": prompt_ids + response_ids,
        "attention_mask": [1] * total,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids,
    }


class InstructionCollator:
    """Pads encoded examples into one batch of tensors, on the right. Chapter 05 (fine-tuning).

    ``collator(features)`` with ``features`` a list of ``encode_instruction`` dicts returns
    ``{"input_ids", "attention_mask", "labels"}``, each (B, T) with T the longest example. Padding goes
    on the right for training (every sequence starts at position 0, as in pretraining): ``input_ids``
    = ``pad_token_id``, ``attention_mask`` = 0 and ``labels`` = -100 there, so padding is never learned
    (the end-of-text id can double as the pad id: the real one keeps its label).
    """

    def __init__(self, pad_token_id: int) -> None:
        check_int("pad_token_id", pad_token_id, minimum=0, hint="a token id")
        self.pad_token_id = pad_token_id

    def __call__(self, features: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty list of examples")
        for f in features:
            if not isinstance(f, Mapping) or not {"input_ids", "labels"} <= set(f):
                raise TypeError("each example must be a dict from encode_instruction "
                                "(input_ids, attention_mask, labels)")
            if len(f["labels"]) != len(f["input_ids"]):
                raise ValueError("an example's labels and input_ids differ in length")
        width = max(len(f["input_ids"]) for f in features)
        fill = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        batch = {}
        for key, value in fill.items():
            rows = [list(f.get(key, [1] * len(f["input_ids"]))) for f in features]
            batch[key] = torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)
        return batch


def batches(
    encoded: Sequence[Mapping[str, Sequence[int]]],
    batch_size: int,
    seed: int = 0,
    pad_token_id: int = 0,
    collate: Callable[[list], dict[str, torch.Tensor]] | None = None,
) -> Callable[[int], dict[str, torch.Tensor]]:
    """``get_batch(i)`` for ``training.train``: shuffled epochs of padded batches. Chapter 05 (fine-tuning).

    The examples are shuffled once per epoch (``random.Random(f"{seed}:{epoch}")``) and read in order;
    batch i holds the examples at positions ``i * batch_size ... (i + 1) * batch_size - 1`` of that
    endless stream. It is a pure function of i, so a resumed run sees the same batches.

    Each batch is ``collate``'s output, by default ``InstructionCollator(pad_token_id)`` (chapter 08's
    summarizer passes its ``Seq2SeqCollator``). (With padding on the right a causal
    model would not even need the attention mask: a real token only attends to itself and earlier
    tokens, all real, and padding has label -100, so the loss is the same without it.)
    """
    if not encoded:
        raise ValueError("no encoded examples: make_instructions(...) and encode_instruction(...) some first")
    check_positive_int("batch_size", batch_size)
    items = list(encoded)
    collate = collate if collate is not None else InstructionCollator(pad_token_id)
    orders: dict[int, list[int]] = {}

    def order(epoch: int) -> list[int]:
        if epoch not in orders:
            idx = list(range(len(items)))
            random.Random(f"{seed}:{epoch}").shuffle(idx)
            orders.clear()  # keep one epoch in memory
            orders[epoch] = idx
        return orders[epoch]

    def get_batch(i: int) -> dict[str, torch.Tensor]:
        chosen = []
        for k in range(i * batch_size, (i + 1) * batch_size):
            epoch, pos = divmod(k, len(items))
            chosen.append(items[order(epoch)[pos]])
        return collate(chosen)

    return get_batch


# ----------------------------------------------------------------------------------------
# 4. Answering and scoring
# ----------------------------------------------------------------------------------------


def _check_examples(examples: Any) -> list[Instruction]:
    if isinstance(examples, Instruction):
        examples = [examples]
    examples = list(examples)
    if not examples:
        raise ValueError("no examples given: pass a non-empty list of Instruction (make_instructions(...))")
    return [check_instruction(e) for e in examples]


@torch.no_grad()
def _generate_answers(
    model: nn.Module, tokenizer: Any, examples: list[Instruction], max_new_tokens: int, batch_size: int,
    template: str,
) -> list[tuple[str, bool]]:
    """(answer text, whether it ended with the end-of-text id) for each example; see ``answer``."""
    check_positive_int("batch_size", batch_size)
    eos = eos_token_id(tokenizer)
    prompts = [encode_plain(tokenizer, prompt_text(ex, template)) for ex in examples]
    results = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(len(p) for p in chunk)
        # Left padding: every prompt ends at the last column, where generation continues.
        input_ids = torch.tensor([[eos] * (width - len(p)) + p for p in chunk], dtype=torch.long)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], dtype=torch.long)
        out = generate(model, input_ids, attention_mask, max_new_tokens=max_new_tokens, do_sample=False,
                       eos_token_id=eos, pad_token_id=eos)
        for row in out[:, width:].tolist():  # only the new tokens
            stopped = eos in row
            if stopped:
                row = row[: row.index(eos)]
            results.append((tokenizer.decode(row), stopped))
    return results


def answer(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[Instruction],
    max_new_tokens: int = 32,
    batch_size: int = 32,
    template: str = "alpaca",
) -> list[str]:
    """The model's greedy answer to each example, as text. Chapter 05 (fine-tuning).

    Prompts (``format_prompt`` / ``format_chat``) are encoded as plain text and generated in
    left-padded batches (``llm_course.infer.generation.generate``, greedy) until the end-of-text id or
    ``max_new_tokens``. The answer is the decoding of the *new token ids* before the first
    end-of-text id: never "decode everything and cut off ``len(prompt)`` characters", which breaks
    whenever decoding does not give back the prompt's exact text (a normalizing tokenizer, cleaned-up
    spaces, a character split across the boundary).
    """
    examples = _check_examples(examples)
    return [text for text, _ in _generate_answers(model, tokenizer, examples, max_new_tokens, batch_size, template)]


def _accuracy(hits: list[bool]) -> float:
    return sum(hits) / len(hits)


def exact_match(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[Instruction],
    max_new_tokens: int = 32,
    batch_size: int = 32,
    template: str = "alpaca",
) -> dict[str, Any]:
    """Share of exactly right answers, overall and per task / language. Chapter 05 (fine-tuning).

    An answer is right when it equals ``output`` up to surrounding white space (``llm_course.text.tasks.check``).
    Returns ``{"accuracy": float, "n": int, "stopped": float, "by_task": {task: float}, "by_language":
    {lang: float}, "by_task_language": {"reverse/ru": float, ...}, "predictions": [str, ...]}``.
    ``stopped`` is the share of answers that ended with the end-of-text token within ``max_new_tokens``:
    about 0 for a model tuned the manual's way (no end-of-text in its examples, ERRATA 5).
    """
    examples = _check_examples(examples)
    generated = _generate_answers(model, tokenizer, examples, max_new_tokens, batch_size, template)
    predictions = [text for text, _ in generated]
    hits = [check(Example(prompt=ex.instruction, answer=ex.output, task=ex.task), pred)
            for ex, pred in zip(examples, predictions)]
    groups: dict[str, dict[str, list[bool]]] = {"by_task": defaultdict(list), "by_language": defaultdict(list),
                                                 "by_task_language": defaultdict(list)}
    for ex, hit in zip(examples, hits):
        groups["by_task"][ex.task].append(hit)
        groups["by_language"][ex.language].append(hit)
        groups["by_task_language"][f"{ex.task}/{ex.language}"].append(hit)
    result: dict[str, Any] = {"accuracy": _accuracy(hits), "n": len(hits),
                              "stopped": _accuracy([stopped for _, stopped in generated])}
    for name, group in groups.items():
        result[name] = {key: _accuracy(group[key]) for key in sorted(group)}
    result["predictions"] = predictions
    return result


def instruction_tune(
    model: nn.Module,
    tokenizer: Any,
    train_examples: Sequence[Instruction],
    steps: int = 300,
    batch_size: int = 16,
    lr: float = 6e-3,
    *,
    max_length: int | None = None,
    template: str = "alpaca",
    eval_examples: Sequence[Instruction] | None = None,
    callbacks: Sequence[Callable[[dict, TrainResult], bool | None]] | None = None,
    seed: int = 0,
    **train_config: Any,
) -> TrainResult:
    """Fine-tune ``model`` on instruction examples with ``llm_course.train.loop.train``. Chapter 05 (fine-tuning).

    Encodes every example (``encode_instruction``; ``max_length``: the model's context by default),
    then runs ``steps`` AdamW updates on shuffled, right-padded batches of ``batch_size`` with a short
    warmup (10% of the steps) and cosine decay to ``lr / 10``. ``eval_examples``: held-out examples
    whose response loss is measured every ``eval_interval`` steps (default: at the end). ``callbacks``
    are handed to ``train`` (e.g. one that calls ``exact_match`` every 100 steps). Other
    ``TrainConfig`` fields can be given by name (``progress=False``, ``log_interval=0``,
    ``checkpoint_dir=...``). Returns ``train``'s ``TrainResult``; the model is left in eval mode.

    The defaults are the course-gpt recipe measured in this module's docstring (300 steps of 16 at
    lr 6e-3: about 80 s on two CPU cores). A larger pretrained model wants a smaller ``lr`` (1e-4 to 1e-5).
    """
    examples = _check_examples(train_examples)
    if max_length is None:
        max_length = getattr(getattr(model, "config", None), "n_positions", None) or 1024
    encoded = [encode_instruction(tokenizer, ex, max_length, template) for ex in examples]
    held_out = None
    if eval_examples is not None:
        held_out = [encode_instruction(tokenizer, ex, max_length, template) for ex in _check_examples(eval_examples)]
    return tune_encoded(model, encoded, eos_token_id(tokenizer), steps, batch_size, lr, eval_encoded=held_out,
                        callbacks=callbacks, seed=seed, **train_config)


def tune_encoded(
    model: nn.Module,
    encoded: Sequence[Mapping[str, Sequence[int]]],
    pad_token_id: int,
    steps: int,
    batch_size: int,
    lr: float,
    *,
    eval_encoded: Sequence[Mapping[str, Sequence[int]]] | None = None,
    callbacks: Sequence[Callable[[dict, TrainResult], bool | None]] | None = None,
    seed: int = 0,
    collate: Callable[[list], dict[str, torch.Tensor]] | None = None,
    **train_config: Any,
) -> TrainResult:
    """Fine-tune on already encoded examples (``input_ids`` / ``labels`` lists). Chapter 05 (fine-tuning).

    The loop behind ``instruction_tune`` and ``chat.chat_tune``: ``steps`` AdamW updates on shuffled,
    right-padded batches (padding id ``pad_token_id``, label -100), 10% warmup, cosine decay to
    ``lr / 10``, no weight decay. ``eval_encoded``: held-out examples whose response loss is measured
    every ``eval_interval`` steps (default: once, at the end). ``collate``: how a list of examples becomes a
    batch (default ``InstructionCollator(pad_token_id)``).
    """
    check_positive_int("steps", steps, hint="the number of optimizer updates")
    options: dict[str, Any] = {
        "max_steps": steps, "lr": lr, "min_lr": lr / 10, "warmup_steps": max(1, steps // 10),
        "weight_decay": 0.0, "eval_interval": steps, "eval_steps": 1, "seed": seed, "log_interval": 0,
        "live_plot": False,
    }
    options.update(train_config)
    evaluate = None
    if eval_encoded is not None:
        collate = collate if collate is not None else InstructionCollator(pad_token_id)
        eval_batches = [collate(eval_encoded[i : i + batch_size]) for i in range(0, len(eval_encoded), batch_size)]
        if not eval_batches:
            raise ValueError("eval examples are empty; pass None for no evaluation")
        options["eval_steps"] = train_config.get("eval_steps", len(eval_batches))  # all of them by default
        evaluate = lambda i: eval_batches[i % len(eval_batches)]  # noqa: E731
    get_batch = batches(encoded, batch_size, seed=seed, pad_token_id=pad_token_id, collate=collate)
    return train(model, get_batch, TrainConfig(**options), evaluate=evaluate, callbacks=callbacks)
