"""Teaching a model to chat, and the zoo's chat task (course-gpt-chat). Chapter 08 (applications).

The ``chatterbot-corpus`` dialogs become chat examples (``chat_conversations``): each reply with the
turns it answers, half of them behind a system prompt. ``encode_chat`` writes one exactly as
``llm_course.apps.chat.ChatBot`` prompts (``render_chat``) and learns only the reply and its
end-of-text; ``chat_tune`` trains on them with chapter 05's loop. ``CHAT_TASK`` is the
``llm_course.zoo.recipes.ZooTask`` that makes and re-scores the shipped ``course-gpt-chat``
(``llm-course zoo train course-gpt-chat``): ``tune``, ``measure`` and ``held_out_loss``.
"""

from __future__ import annotations

import hashlib
import random
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_course.apps.chat import ChatBot, render_chat
from llm_course.core.checks import check_choice, check_int, check_positive_int
from llm_course.models.modeling import context_length
from llm_course.nn.objectives import IGNORE_INDEX
from llm_course.text.dialogs import Dialog, load_dialogs
from llm_course.text.encoding import encode_plain
from llm_course.train.instruct import InstructionCollator, eos_token_id, tune_encoded
from llm_course.train.instructions import check_messages
from llm_course.train.loop import TrainResult
from llm_course.zoo.loading import load_pretrained
from llm_course.zoo.recipes import TaskFunctions, TunedRecipe

__all__ = [
    "SYSTEM_PROMPTS",
    "CHAT_TEST_SHARE",
    "chat_conversations",
    "encode_chat",
    "chat_tune",
    "SAMPLE_MESSAGES",
    "held_out_loss",
    "tune",
    "measure",
    "CHAT_TASK",
]

# ----------------------------------------------------------------------------------------
# The chatterbot dialogs in the chat format
# ----------------------------------------------------------------------------------------
# System prompts mixed into the training conversations (half of them have none), so that a tuned
# model answers with or without one. The notebook's bot uses the Russian one.
SYSTEM_PROMPTS: tuple[str, ...] = ("You are a friendly assistant.", "Ты вежливый помощник.")
CHAT_TEST_SHARE = 10  # one English dialog in CHAT_TEST_SHARE (by a hash of its turns) is held out


def _held_out(dialog: Dialog) -> bool:
    digest = hashlib.sha256("\n".join(dialog.turns).encode("utf-8")).digest()
    return digest[0] % CHAT_TEST_SHARE == 0


def chat_conversations(
    split: str = "train",
    languages: Sequence[str] = ("english", "russian"),
    *,
    russian_repeats: int = 4,
    max_history: int = 3,
    seed: int = 0,
) -> list[list[dict[str, str]]]:
    """The ``chatterbot-corpus`` dialogs as chat training examples. Chapter 08 (applications).

    Every turn of a dialog after the first becomes one example: the turns before it are the history
    (the newest one is the user's, then alternating back; at most ``max_history`` turns, which keeps the
    examples short and training fast) and the turn itself is the assistant's reply (the last message).
    So each dialog of n turns gives n - 1 examples, and each reply is learned with the history it answers.
    Half of the examples (chosen with ``seed``) start with a system prompt from
    ``SYSTEM_PROMPTS``. ``split``: "train" or "test": one English dialog in ``CHAT_TEST_SHARE`` (by a
    hash of its text) is "test"; the Russian dialogs (43, too few to split) are all "train", repeated
    ``russian_repeats`` times so that 5% of the data is not drowned by the English 95%.
    """
    check_choice("split", split, ("train", "test"))
    check_positive_int("max_history", max_history, hint="turns before the reply")
    check_positive_int("russian_repeats", russian_repeats)
    rng = random.Random(seed)
    examples: list[list[dict[str, str]]] = []
    for language in languages:
        dialogs = load_dialogs(language)
        if language == "russian":
            dialogs = dialogs * russian_repeats if split == "train" else []
        else:
            dialogs = [d for d in dialogs if _held_out(d) == (split == "test")]
        for dialog in dialogs:
            for i in range(1, len(dialog.turns)):
                history = [{"role": "user" if (i - 1 - j) % 2 == 0 else "assistant", "content": dialog.turns[j]}
                           for j in range(max(0, i - max_history), i)]
                system = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < 0.5 else []
                examples.append(system + history + [{"role": "assistant", "content": dialog.turns[i]}])
    return examples


def encode_chat(tokenizer: Any, messages: Sequence[Mapping[str, str]], max_length: int) -> dict[str, list[int]]:
    """One conversation whose last message is the assistant's, encoded for training. Chapter 08 (applications).

    ``input_ids`` = ``render_chat(messages[:-1])`` (the prompt exactly as ``ChatBot`` writes it,
    markers neutralized) + the reply + the end-of-text id; ``labels`` are -100 on the prompt, so only
    the reply and the stop are learned (chapter 05's recipe, ``instruct.encode_instruction``). A
    conversation longer than ``max_length`` tokens is a ValueError (nothing is cut silently).
    """
    messages = check_messages(messages)
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        raise ValueError("the last message must be the assistant's reply (non-empty): it is what is learned")
    prompt_ids = encode_plain(tokenizer, render_chat(messages[:-1]))
    reply_ids = encode_plain(tokenizer, messages[-1]["content"]) + [eos_token_id(tokenizer)]
    total = len(prompt_ids) + len(reply_ids)
    if total > max_length:
        raise ValueError(f"this conversation is {total} tokens, more than max_length={max_length}")
    return {"input_ids": prompt_ids + reply_ids, "attention_mask": [1] * total,
            "labels": [IGNORE_INDEX] * len(prompt_ids) + reply_ids}


def chat_tune(
    model: nn.Module,
    tokenizer: Any,
    conversations: Sequence[Sequence[Mapping[str, str]]],
    steps: int = 800,
    batch_size: int = 16,
    lr: float = 3e-3,
    *,
    eval_conversations: Sequence[Sequence[Mapping[str, str]]] | None = None,
    max_length: int | None = None,
    callbacks: Sequence[Any] | None = None,
    seed: int = 0,
    **train_config: Any,
) -> TrainResult:
    """Fine-tune a causal LM to answer in the chat format. Chapter 08 (applications).

    ``conversations``: e.g. ``chat_conversations("train")``; each is encoded with ``encode_chat``
    (conversations longer than ``max_length`` tokens, default the model's context, are skipped and
    counted in a warning: a batch is padded to its longest example, so a few long ones cost a lot) and trained
    with chapter 05's loop (``instruct.tune_encoded``). The defaults are the ``course-gpt-chat`` recipe
    (``llm_course.zoo``). Returns the ``TrainResult``; the model is left in eval mode.
    """
    context = context_length(model) or 1024
    if max_length is None:
        max_length = context
    else:
        check_int("max_length", max_length, 2, context, hint=f"at most the model's context, {context} tokens")
    encoded, skipped = [], 0
    for conversation in conversations:
        try:
            encoded.append(encode_chat(tokenizer, conversation, max_length))
        except ValueError as error:
            if "more than max_length" not in str(error):
                raise
            skipped += 1
    if not encoded:
        raise ValueError("no conversation fits the model's context window: nothing to train on")
    if skipped:
        warnings.warn(f"chat_tune: {skipped} conversations longer than {max_length} tokens were skipped", stacklevel=2)
    held_out = None
    if eval_conversations is not None:
        held_out = [encode_chat(tokenizer, c, context) for c in eval_conversations]
    return tune_encoded(model, encoded, eos_token_id(tokenizer), steps, batch_size, lr, eval_encoded=held_out,
                        callbacks=callbacks, seed=seed, **train_config)


# ----------------------------------------------------------------------------------------
# The shipped chat model: course-gpt-chat (made by ``llm-course zoo train course-gpt-chat``)
# ----------------------------------------------------------------------------------------

# The exchanges metrics.json records (greedy replies), the manual's first among them.
SAMPLE_MESSAGES: tuple[tuple[str | None, str], ...] = (
    (None, "Привет! Как дела?"),
    ("Ты вежливый помощник.", "Привет! Как дела?"),
    (None, "Что такое деньги?"),
    (None, "What is AI?"),
    (None, "Do you like movies?"),
    ("You are a friendly assistant.", "Tell me a joke."),
)
_TUNE_OPTIONS = {"max_history": 3, "russian_repeats": 4, "max_tokens": None}


def _options(recipe: TunedRecipe) -> dict[str, Any]:
    unknown = sorted(set(recipe.options) - set(_TUNE_OPTIONS))
    if unknown:
        raise ValueError(f"unknown chat recipe options {unknown}; the chat task takes {sorted(_TUNE_OPTIONS)}")
    return {**_TUNE_OPTIONS, **recipe.options}


def held_out_loss(model: nn.Module, tokenizer: Any, recipe: TunedRecipe) -> float:
    """Mean loss per reply token (end-of-text included) on the held-out conversations. Chapter 08 (applications).

    The first ``recipe.eval_examples`` of ``chat_conversations("test")`` (English dialogs never trained
    on); what course-gpt-chat's metrics.json records and ``llm-course zoo eval`` re-scores.
    """
    options = _options(recipe)
    conversations = chat_conversations("test", max_history=options["max_history"], seed=recipe.seed)
    max_length = context_length(model) or 1024
    encoded = [encode_chat(tokenizer, c, max_length) for c in conversations[: recipe.eval_examples]]
    collate = InstructionCollator(eos_token_id(tokenizer))
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(encoded), 16):
            batch = collate(encoded[i : i + 16])
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            targets = batch["labels"][:, 1:]  # position t predicts token t + 1
            total += float(F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                                           ignore_index=IGNORE_INDEX, reduction="sum"))
            count += int((targets != IGNORE_INDEX).sum())
    return total / count


def tune(recipe: TunedRecipe, progress: bool = True,
         callbacks: Sequence[Any] | None = None) -> tuple[nn.Module, Any, dict]:
    """Make the model of a chat ``TunedRecipe`` (course-gpt-chat). Chapter 08 (applications).

    Loads ``recipe.base``, measures its held-out reply loss, tunes it on ``chat_conversations("train")``
    with ``chat_tune``. Returns ``(model, tokenizer, info)`` for ``llm_course.zoo.build.train_checkpoint``,
    which saves it.

    Why 150 steps (measured on course-gpt, lr 1e-3, batch 16, 2 threads): the held-out reply loss
    (4.89 untuned) was 3.86 / 3.93 / 4.14 / 4.37 / 4.44 after 50 / 100 / 200 / 400 / 500 steps of a
    500-step run, and 5.01 after 800 steps: past ~150 steps the model memorizes the training replies.
    The shipped 150-step schedule ends at 3.86. Repeating the 43 Russian dialogs 40 times instead of 10
    memorizes Russian corpus phrases, but not the right ones for the input.
    """
    options = _options(recipe)
    model, tokenizer = load_pretrained(recipe.base)
    before = held_out_loss(model, tokenizer, recipe)
    train_set = chat_conversations("train", max_history=options["max_history"],
                                   russian_repeats=options["russian_repeats"], seed=recipe.seed)
    t0 = time.perf_counter()
    result = chat_tune(model, tokenizer, train_set, recipe.steps, recipe.batch_size, recipe.lr, seed=recipe.seed,
                       max_length=options["max_tokens"], callbacks=callbacks, progress=progress,
                       log_interval=100 if progress else 0)
    data = {"train": f"chat_conversations('train', max_history={options['max_history']}, "
                     f"russian_repeats={options['russian_repeats']}): chatterbot-corpus English dialogs not held "
                     f"out + Russian dialogs; examples over {options['max_tokens']} tokens skipped",
            "train_examples": len(train_set),
            "held_out": f"the first {recipe.eval_examples} of chat_conversations('test') (1 English dialog in "
                        f"{CHAT_TEST_SHARE}, by hash)"}
    metrics = {"held_out_before": {"loss": before, "what": f"{recipe.base}, untuned"},
               "train_loss_last_50": sum(result.losses[-50:]) / len(result.losses[-50:])}
    return model, tokenizer, {"result": result, "train_seconds": time.perf_counter() - t0, "data": data,
                              "metrics": metrics}


def measure(model: nn.Module, tokenizer: Any, recipe: TunedRecipe) -> dict[str, Any]:
    """metrics.json of a chat checkpoint: held-out reply loss and greedy replies to ``SAMPLE_MESSAGES``."""
    replies = []
    for system, message in SAMPLE_MESSAGES:
        bot = ChatBot(model, tokenizer, system_prompt=system, max_new_tokens=40)
        replies.append({"system": system, "message": message, "reply": bot.reply(message)})
    return {"held_out": {"loss": held_out_loss(model, tokenizer, recipe),
                         "what": "mean loss per reply token on held-out English dialogs (held_out_loss)"},
            "greedy_replies": replies}



# The zoo's plug-in: ``train_checkpoint("course-...", task=CHAT_TASK)`` calls these three functions.
CHAT_TASK = TaskFunctions("chat", tune, measure, held_out_loss)
