"""Teaching a model to chat, and the zoo's chat task (course-gpt-chat). Chapter 08 (applications).

The ``chatterbot-corpus`` dialogs become chat examples (``chat_conversations``): each reply with the
turns it answers, half of them behind a system prompt. ``encode_chat`` writes one exactly as
``llm_course.apps.chat.ChatBot`` prompts (``render_chat``) and learns only the reply and its
end-of-text; ``chat_tune`` trains on them with chapter 05's loop. ``CHAT_TASK`` is the
``llm_course.zoo.recipes.ZooTask`` that makes and re-scores the shipped ``course-gpt-chat``
(``llm-course zoo train course-gpt-chat``): ``tune``, ``measure`` and ``held_out_loss``. Each language
has its own held-out dialogs, and ``held_out_metrics`` scores each (reply loss, replies in the prompt's
language, with ``llm_course.apps.chat_eval``), so a gain in English cannot hide noise in Russian.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch.nn as nn

from llm_course.apps.chat import ChatBot, render_chat
from llm_course.apps.chat_eval import LANGUAGE_SCRIPTS, language_report, reply_loss, sample_rows
from llm_course.core.checks import check_choice, check_int, check_positive_int
from llm_course.models.modeling import context_length
from llm_course.nn.objectives import IGNORE_INDEX
from llm_course.text.dialogs import Dialog, load_dialogs
from llm_course.text.encoding import encode_plain
from llm_course.train.instruct import eos_token_id, tune_encoded
from llm_course.train.instructions import check_messages
from llm_course.train.loop import TrainResult
from llm_course.zoo.loading import load_pretrained
from llm_course.zoo.recipes import TaskFunctions, TunedRecipe

__all__ = [
    "SYSTEM_PROMPTS",
    "CHAT_TEST_SHARE",
    "RUSSIAN_TEST_SHARE",
    "is_held_out",
    "chat_conversations",
    "encode_chat",
    "chat_tune",
    "SAMPLE_MESSAGES",
    "SAMPLES_PER_LANGUAGE",
    "held_out_conversations",
    "held_out_loss",
    "held_out_metrics",
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
RUSSIAN_TEST_SHARE = 4  # one Russian opening in RUSSIAN_TEST_SHARE (by a hash of its words) is held out


def _opening(dialog: Dialog) -> str:
    """A dialog's first turn, lower case, words only: "Что такое экономика?" and "что такое экономика" match."""
    return " ".join(re.findall(r"\w+", dialog.turns[0].lower()))


def is_held_out(dialog: Dialog) -> bool:
    """Whether a dialog belongs to the held-out ("test") split, by a hash of its text. Chapter 08 (applications).

    English (899 dialogs): one in ``CHAT_TEST_SHARE`` by the SHA-256 of all its turns (92 dialogs, 122
    replies). Russian (43 dialogs, 63 replies): one in ``RUSSIAN_TEST_SHARE`` by the hash of its opening
    turn's words (``_opening``), so dialogs that open with the same question (four open with «Биржа» or
    «Фондовая биржа», with different answers) fall on the same side: 7 dialogs, 12 replies held out; 36
    dialogs, 51 replies for training. Of the 12 held-out user messages only «Как дела?» is also a
    training turn (inside another dialog, with another answer). The hash makes the split the same on
    every machine and independent of the order of the corpus files.
    """
    if dialog.language == "russian":
        digest, share = hashlib.sha256(_opening(dialog).encode("utf-8")).digest(), RUSSIAN_TEST_SHARE
    else:
        digest, share = hashlib.sha256("\n".join(dialog.turns).encode("utf-8")).digest(), CHAT_TEST_SHARE
    return digest[0] % share == 0


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
    ``SYSTEM_PROMPTS``. ``split``: "train" or "test", by ``is_held_out`` (one English dialog in 10, one
    Russian opening in 4). The Russian training dialogs are repeated ``russian_repeats`` times so that
    their 51 replies are not drowned by the 1,057 English ones (10 repeats: about a third of the examples).
    Each language's examples follow the previous language's, drawing system prompts from one ``seed``.
    """
    check_choice("split", split, ("train", "test"))
    check_positive_int("max_history", max_history, hint="turns before the reply")
    check_positive_int("russian_repeats", russian_repeats)
    rng = random.Random(seed)
    examples: list[list[dict[str, str]]] = []
    for language in languages:
        dialogs = [d for d in load_dialogs(language) if is_held_out(d) == (split == "test")]
        if language == "russian" and split == "train":
            dialogs = dialogs * russian_repeats
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
SAMPLES_PER_LANGUAGE = 6  # held-out prompts per language in metrics.json's table of samples
LANGUAGE_TEST = ("reply_language (llm_course.apps.chat_eval): a reply is Russian if more than half of its "
                 "Latin and Cyrillic letters are Cyrillic, English if more than half are Latin; a reply with no "
                 "such letters (or a tie) has no language and counts as not in the prompt's language")


def _options(recipe: TunedRecipe) -> dict[str, Any]:
    unknown = sorted(set(recipe.options) - set(_TUNE_OPTIONS))
    if unknown:
        raise ValueError(f"unknown chat recipe options {unknown}; the chat task takes {sorted(_TUNE_OPTIONS)}")
    return {**_TUNE_OPTIONS, **recipe.options}


def held_out_conversations(recipe: TunedRecipe, language: str) -> list[list[dict[str, str]]]:
    """The held-out chat examples of one language that a chat checkpoint is scored on. Chapter 08 (applications).

    The first ``recipe.eval_examples`` of ``chat_conversations("test", (language,))`` with the recipe's
    ``max_history`` and ``seed``: dialogs never trained on (``is_held_out``). With course-gpt-chat's
    recipe (120 examples), 120 of the 122 English ones and all 12 Russian ones.
    """
    check_choice("language", language, tuple(LANGUAGE_SCRIPTS))
    options = _options(recipe)
    conversations = chat_conversations("test", (language,), max_history=options["max_history"], seed=recipe.seed)
    return conversations[: recipe.eval_examples]


def _reply_loss(model: nn.Module, tokenizer: Any, conversations: Sequence[Sequence[Mapping[str, str]]]
                ) -> tuple[float, int]:
    """``chat_eval.reply_loss`` of the conversations, encoded as they are trained (``encode_chat``)."""
    max_length = context_length(model) or 1024
    encoded = [encode_chat(tokenizer, c, max_length) for c in conversations]
    return reply_loss(model, encoded, eos_token_id(tokenizer))


def held_out_loss(model: nn.Module, tokenizer: Any, recipe: TunedRecipe) -> float:
    """Mean loss per reply token (end-of-text included) on the held-out English conversations. Chapter 08.

    ``held_out_conversations(recipe, "english")``, the figure course-gpt-chat's metrics.json records as
    ``held_out["loss"]`` and ``llm-course zoo eval`` re-scores (``held_out_metrics`` has every language).
    """
    return _reply_loss(model, tokenizer, held_out_conversations(recipe, "english"))[0]


def held_out_metrics(model: nn.Module, tokenizer: Any, recipe: TunedRecipe,
                     replies: bool = True) -> dict[str, dict[str, Any]]:
    """Each language's held-out scores of a chat model. Chapter 08 (applications).

    For "english" and "russian" (``held_out_conversations``): ``loss``, the mean loss per reply token
    (nats, end-of-text included); ``bits_per_char``, the same total in bits per character of the
    replies (tokenizers cut text differently, so only this one compares models with different
    tokenizers, e.g. a course-gpt-chat tuned from a base with a new tokenizer against today's);
    ``reply_tokens``, ``reply_chars`` and ``examples``. With ``replies`` (generation: a few seconds),
    also ``chat_eval.language_report`` of the greedy replies: ``in_prompt_language``, the share in
    the prompt's language, and ``reply_languages``.
    """
    metrics: dict[str, dict[str, Any]] = {}
    for language in LANGUAGE_SCRIPTS:
        conversations = held_out_conversations(recipe, language)
        loss, tokens = _reply_loss(model, tokenizer, conversations)
        chars = sum(len(c[-1]["content"]) for c in conversations)
        metrics[language] = {"loss": loss, "bits_per_char": loss * tokens / chars / math.log(2),
                             "reply_tokens": tokens, "reply_chars": chars, "examples": len(conversations)}
        if replies:
            metrics[language].update(language_report(model, tokenizer, conversations, language))
    return metrics


def _spread(items: Sequence[Any], n: int) -> list[Any]:
    """``n`` items evenly spaced through ``items`` (all of them if there are no more than ``n``)."""
    if len(items) <= n:
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]


def tune(recipe: TunedRecipe, progress: bool = True,
         callbacks: Sequence[Any] | None = None) -> tuple[nn.Module, Any, dict]:
    """Make the model of a chat ``TunedRecipe`` (course-gpt-chat). Chapter 08 (applications).

    Loads ``recipe.base``, measures it on the held-out conversations (``held_out_metrics``: the
    "before" of metrics.json), tunes it on ``chat_conversations("train")`` with ``chat_tune``. Returns
    ``(model, tokenizer, info)`` for ``llm_course.zoo.build.train_checkpoint``, which saves it.

    Why 150 steps (measured on the previous, docs-only course-gpt, lr 1e-3, batch 16, 2 threads): the
    held-out English reply loss (4.89 untuned) was 3.86 / 3.93 / 4.14 / 4.37 / 4.44 after 50 / 100 / 200 /
    400 / 500 steps of a 500-step run: past ~150 steps the model memorizes the training replies. The shipped 150-step
    schedule ends at 3.86. Repeating the 43 Russian dialogs 40 times instead of 10 memorizes Russian
    corpus phrases, but not the right ones for the input. On the bilingual course-gpt (2026-12-04) the
    shipped recipe gives English 2.54 and Russian 3.73 bits per character on held-out replies; 300 steps
    (2.56 / 4.30) and lr 2e-3 (2.62 / 4.12) were worse.

    Russian, measured on its own held-out dialogs (``is_held_out``), in 30-step runs on the same previous
    course-gpt (lr 1e-3; its tokenizer spends 1.14 tokens per Cyrillic letter, so 6 of the 51 Russian
    training replies are over ``max_tokens=128`` and skipped): with russian_repeats 4 / 10 / 20 the
    Russian reply loss was 2.58 / 2.49 / 2.53 nats per token (3.75 / 3.62 / 3.68 bits per character;
    untuned 3.62 and 5.26) and the English one 3.89 / 3.91 / 3.91; lr 3e-3 (10 repeats) was worse in
    both languages (2.61 and 4.43). Every Russian reply was Cyrillic and every one was noise: the letter
    test (``chat_eval.reply_language``) is necessary, not sufficient; bits per character rank the models.
    """
    options = _options(recipe)
    model, tokenizer = load_pretrained(recipe.base)
    before = held_out_metrics(model, tokenizer, recipe)
    train_set = chat_conversations("train", max_history=options["max_history"],
                                   russian_repeats=options["russian_repeats"], seed=recipe.seed)
    t0 = time.perf_counter()
    result = chat_tune(model, tokenizer, train_set, recipe.steps, recipe.batch_size, recipe.lr, seed=recipe.seed,
                       max_length=options["max_tokens"], callbacks=callbacks, progress=progress,
                       log_interval=100 if progress else 0)
    data = {"train": f"chat_conversations('train', max_history={options['max_history']}, "
                     f"russian_repeats={options['russian_repeats']}): chatterbot-corpus dialogs not held out, the "
                     f"Russian ones repeated; examples over {options['max_tokens']} tokens skipped",
            "train_examples": len(train_set),
            "held_out": f"the first {recipe.eval_examples} of each language's chat_conversations('test', (language,)) "
                        f"(is_held_out: 1 English dialog in {CHAT_TEST_SHARE} by a hash of its turns, 1 Russian "
                        f"opening in {RUSSIAN_TEST_SHARE} by a hash of its words)",
            "held_out_examples": {language: m["examples"] for language, m in before.items()}}
    metrics = {"held_out_before": {"loss": before["english"]["loss"], "what": f"{recipe.base}, untuned",
                                   "by_language": before},
               "train_loss_last_50": sum(result.losses[-50:]) / len(result.losses[-50:])}
    return model, tokenizer, {"result": result, "train_seconds": time.perf_counter() - t0, "data": data,
                              "metrics": metrics}


def measure(model: nn.Module, tokenizer: Any, recipe: TunedRecipe) -> dict[str, Any]:
    """metrics.json of a chat checkpoint. Chapter 08 (applications).

    ``held_out``: the English held-out reply loss (``held_out_loss``, what ``zoo eval`` re-scores);
    ``held_out_by_language``: ``held_out_metrics`` (loss, bits per character and the share of greedy
    replies in the prompt's language, per language); ``samples``: ``SAMPLES_PER_LANGUAGE`` held-out
    prompts per language, spread over the split, with their greedy and sampled replies
    (``chat_eval.sample_rows``, seeded with ``recipe.seed``); ``greedy_replies`` to ``SAMPLE_MESSAGES``.
    """
    by_language = held_out_metrics(model, tokenizer, recipe)
    samples = []
    for language in LANGUAGE_SCRIPTS:
        prompts = _spread(held_out_conversations(recipe, language), SAMPLES_PER_LANGUAGE)
        samples += sample_rows(model, tokenizer, prompts, language, seed=recipe.seed)
    replies = []
    for system, message in SAMPLE_MESSAGES:
        bot = ChatBot(model, tokenizer, system_prompt=system, max_new_tokens=40)
        replies.append({"system": system, "message": message, "reply": bot.reply(message)})
    return {"held_out": {"loss": by_language["english"]["loss"],
                         "what": "mean loss per reply token on held-out English dialogs (held_out_loss)"},
            "held_out_by_language": by_language,
            "language_test": LANGUAGE_TEST,
            "samples": samples,
            "greedy_replies": replies}


# The zoo's plug-in: ``train_checkpoint("course-...", task=CHAT_TASK)`` calls these three functions.
CHAT_TASK = TaskFunctions("chat", tune, measure, held_out_loss)
