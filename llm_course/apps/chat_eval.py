"""Measuring a chat model per language: reply loss, replies in the prompt's language, samples. Chapter 08.

A chat model tuned on English and Russian dialogs can lower its average reply loss and still answer a
Russian question in English (or in noise). So course-gpt-chat is measured separately on each language's
held-out conversations (``llm_course.apps.chat_tuning`` makes them and records these figures):

* ``reply_loss``: the mean loss per reply token (end-of-text included), what tuning lowers;
* ``reply_language``: a small, documented test of the language of a reply, by its letters: Cyrillic
  letters are Russian, Latin letters are English, the majority decides, and a reply with no letters (or a
  tie) has no language, so it never counts as an answer in the prompt's language;
* ``language_report``: the share of greedy replies that are in the prompt's language;
* ``sample_rows`` / ``samples_markdown``: a table of held-out prompts with a greedy and a sampled reply.

Notebook use::

    from llm_course.apps.chat_eval import chat_reply, reply_language
    reply_language("Я очень люблю Python")   # "russian": 11 Cyrillic letters, 6 Latin
    reply_language("42 :)")                  # None: no letters, never the prompt's language
    chat_reply(model, tok, [{"role": "user", "content": "Что такое деньги?"}])   # the greedy reply
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_course.apps.chat import ChatBot
from llm_course.core.checks import check_choice, check_positive_int
from llm_course.nn.objectives import IGNORE_INDEX
from llm_course.train.instruct import InstructionCollator
from llm_course.train.instructions import check_messages

__all__ = [
    "LANGUAGE_SCRIPTS",
    "REPLY_TOKENS",
    "SAMPLING",
    "script_letters",
    "reply_language",
    "reply_loss",
    "chat_reply",
    "language_report",
    "sample_rows",
    "samples_markdown",
]

# Each dialog language and the script of its letters (the start of their Unicode names).
LANGUAGE_SCRIPTS: dict[str, str] = {"english": "LATIN", "russian": "CYRILLIC"}
REPLY_TOKENS = 40  # the longest reply measured (new tokens); chatterbot replies are a sentence or two
# How the sampled replies of the samples table are drawn (the seed is the recipe's).
SAMPLING: dict[str, Any] = {"do_sample": True, "temperature": 0.7, "top_p": 0.9}


# ----------------------------------------------------------------------------------------
# The language of a reply, by its letters
# ----------------------------------------------------------------------------------------


def script_letters(text: str) -> dict[str, int]:
    """How many letters of ``text`` belong to each language's script. Chapter 08 (applications).

    ``{"english": Latin letters, "russian": Cyrillic letters}``; a letter is a character with
    ``str.isalpha()`` whose Unicode name starts with the script (``"LATIN SMALL LETTER E WITH ACUTE"``
    is Latin, ``"CYRILLIC SMALL LETTER IO"`` (ё) Cyrillic). Digits, punctuation, emoji and letters of
    other scripts (Greek, CJK) count for neither.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    counts = dict.fromkeys(LANGUAGE_SCRIPTS, 0)
    for ch in text:
        if ch.isalpha():
            name = unicodedata.name(ch, "")
            for language, script in LANGUAGE_SCRIPTS.items():
                if name.startswith(script + " "):
                    counts[language] += 1
    return counts


def reply_language(text: str) -> str | None:
    """The language of a reply: the script that holds most of its letters, or None. Chapter 08 (applications).

    ``"russian"`` if more than half of its Latin and Cyrillic letters (``script_letters``) are Cyrillic,
    ``"english"`` if more than half are Latin; ``None`` for a reply with no such letters ("", "42!",
    "🙂") or an exact tie. A word-level language detector would do better on real text; for the short
    replies of a 2 M-parameter model the alphabet is what tells Russian from English, and this test
    can be checked by hand. ``None`` is never the prompt's language: an empty reply counts as wrong.
    """
    counts = script_letters(text)
    total = sum(counts.values())
    for language, n in counts.items():
        if 2 * n > total:
            return language
    return None


# ----------------------------------------------------------------------------------------
# Reply loss and replies
# ----------------------------------------------------------------------------------------


@torch.no_grad()
def reply_loss(model: nn.Module, encoded: Sequence[Mapping[str, Sequence[int]]], pad_token_id: int,
               batch_size: int = 16) -> tuple[float, int]:
    """``(mean loss per learned token, number of learned tokens)`` of encoded chat examples. Chapter 08.

    ``encoded``: examples from ``chat_tuning.encode_chat`` (labels -100 on the prompt), so the mean is over
    the reply tokens and their end-of-text, in nats. Batches of ``batch_size`` are right-padded with
    ``pad_token_id`` (``InstructionCollator``); padding is never scored. The model is put in eval mode.
    """
    check_positive_int("batch_size", batch_size)
    if not encoded:
        raise ValueError("no examples to score: encoded is empty")
    collate = InstructionCollator(pad_token_id)
    total, count = 0.0, 0
    model.eval()
    for i in range(0, len(encoded), batch_size):
        batch = collate(list(encoded[i : i + batch_size]))
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]  # position t predicts token t + 1: (batch, T - 1)
        total += float(F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                                       ignore_index=IGNORE_INDEX, reduction="sum"))
        count += int((targets != IGNORE_INDEX).sum())
    return total / count, count


def chat_reply(model: nn.Module, tokenizer: Any, messages: Sequence[Mapping[str, str]],
               max_new_tokens: int = REPLY_TOKENS, **generate_kwargs: Any) -> str:
    """The ``ChatBot``'s reply to a conversation that ends with the user's message. Chapter 08.

    ``messages``: an optional system message first, then the turns (e.g. a held-out chat example
    without its last, assistant, message). The bot is given the system prompt and the earlier turns as
    its history, so the prompt is exactly the one ``encode_chat`` trains and scores on. Greedy unless
    ``generate_kwargs`` say otherwise (``do_sample=True, temperature=0.7, top_p=0.9, seed=0``).
    """
    messages = check_messages(messages)
    systems = [m["content"] for m in messages if m["role"] == "system"]
    turns = [m for m in messages if m["role"] != "system"]
    if len(systems) > 1 or (systems and messages[0]["role"] != "system"):
        raise ValueError("a conversation has at most one system message, and it comes first")
    if not turns or turns[-1]["role"] != "user":
        raise ValueError("the last message must be the user's: the bot replies to it")
    bot = ChatBot(model, tokenizer, system_prompt=systems[0] if systems else None, max_new_tokens=max_new_tokens,
                  **generate_kwargs)
    bot.history = turns[:-1]
    return bot.reply(turns[-1]["content"])


def language_report(model: nn.Module, tokenizer: Any, conversations: Sequence[Sequence[Mapping[str, str]]],
                    language: str, max_new_tokens: int = REPLY_TOKENS) -> dict[str, Any]:
    """How often the greedy reply to each conversation is in ``language``. Chapter 08 (applications).

    ``conversations``: chat examples of one language whose last message is the reference reply (it is
    dropped: the model answers the messages before it). Returns ``in_prompt_language`` (the share of
    replies whose ``reply_language`` is ``language``), ``replies`` (how many) and ``reply_languages``
    (how many replies were "english", "russian" or "none").
    """
    check_choice("language", language, tuple(LANGUAGE_SCRIPTS))
    if not conversations:
        raise ValueError(f"no {language} conversations to reply to")
    found = Counter(reply_language(chat_reply(model, tokenizer, c[:-1], max_new_tokens)) or "none"
                    for c in conversations)
    return {"in_prompt_language": found[language] / len(conversations), "replies": len(conversations),
            "reply_languages": {key: found[key] for key in (*LANGUAGE_SCRIPTS, "none")}}


def sample_rows(model: nn.Module, tokenizer: Any, conversations: Sequence[Sequence[Mapping[str, str]]],
                language: str, seed: int = 0, max_new_tokens: int = REPLY_TOKENS) -> list[dict[str, Any]]:
    """One row of the samples table per conversation: the prompt, the reference, a greedy and a sampled reply.

    The sampled reply uses ``SAMPLING`` (temperature 0.7, top-p 0.9) with ``seed``, so the table is
    the same on every run. A row: ``language``, ``system`` (or None), ``history`` (earlier turns),
    ``message`` (the user's), ``reference`` (the corpus reply), ``greedy``, ``sampled`` and
    ``greedy_language`` (``reply_language`` of the greedy reply). Chapter 08 (applications).
    """
    check_choice("language", language, tuple(LANGUAGE_SCRIPTS))
    rows = []
    for conversation in conversations:
        prompt = check_messages(conversation[:-1])
        greedy = chat_reply(model, tokenizer, prompt, max_new_tokens)
        sampled = chat_reply(model, tokenizer, prompt, max_new_tokens, **SAMPLING, seed=seed)
        system = prompt[0]["content"] if prompt[0]["role"] == "system" else None
        turns = [m for m in prompt if m["role"] != "system"]
        rows.append({"language": language, "system": system, "history": turns[:-1], "message": turns[-1]["content"],
                     "reference": conversation[-1]["content"], "greedy": greedy, "sampled": sampled,
                     "greedy_language": reply_language(greedy)})
    return rows


def samples_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The samples table as Markdown: message, reference, greedy and sampled reply. Chapter 08."""
    def cell(text: Any) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ") or "(empty)"

    lines = ["| language | message | reference | greedy | sampled (T=0.7, top-p 0.9) |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append("| " + " | ".join(cell(row[key]) for key in
                                        ("language", "message", "reference", "greedy", "sampled")) + " |")
    return "\n".join(lines)
