"""Instruction tuning: teach a pretrained LM to follow instructions, and measure it. Chapter 05 (fine-tuning).

A pretrained model only continues text. Instruction tuning shows it (instruction, input, response)
examples written in a fixed *prompt format*, so that it learns "after ``### Response:`` comes the
answer, then the end-of-text token". The pieces of this chapter:

1. **Data** (``make_instructions``): English and Russian instructions for tasks whose answers can be
   checked exactly (reverse, sort, arithmetic, upper/lower case, word count: their inputs come from
   ``llm_course.data``'s generators) plus word translation from a bilingual word list written here
   (``WORD_PAIRS``). Each task has several phrasings per language; the ``"test"`` split uses phrasings
   the ``"train"`` split never shows, and inputs it never shows.
2. **Prompt formats**: the manual's Alpaca format (``format_prompt``) and a plain-text chat format
   (``format_chat``, with the same text as a Jinja ``CHAT_TEMPLATE`` for a transformers tokenizer's
   ``apply_chat_template``).
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
    from llm_course import instruct

    model, tok = load_pretrained("course-gpt")
    tasks = instruct.QUICK_TASKS                          # what a minute of tuning can teach (see below)
    train_set = instruct.make_instructions(4800, seed=0, split="train", tasks=tasks)
    test_set = instruct.make_instructions(200, seed=0, split="test", tasks=tasks)
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

import hashlib
import random
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from llm_course.infer.generation import _encode_plain, generate
from llm_course.text.tasks import Example, check, make_task
from llm_course.text.tokenizer import ByteLevelBPETokenizer
from llm_course.train.loop import TrainConfig, TrainResult, train

__all__ = [
    "Instruction",
    "LANGUAGES",
    "SPLITS",
    "INSTRUCTION_TASKS",
    "QUICK_TASKS",
    "TEMPLATES",
    "WORD_PAIRS",
    "TASK_OPTIONS",
    "make_instructions",
    "format_prompt",
    "format_chat",
    "check_messages",
    "CHAT_TEMPLATE",
    "eos_token_id",
    "encode_instruction",
    "InstructionCollator",
    "batches",
    "answer",
    "exact_match",
    "instruction_tune",
    "tune_encoded",
]

IGNORE_INDEX = -100  # labels with this value add nothing to the loss (F.cross_entropy's ignore_index)
LANGUAGES = ("en", "ru")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Instruction:
    """One instruction-tuning example (the Alpaca fields, plus task and language). Chapter 05 (fine-tuning).

    ``instruction``: what to do ("Reverse the letters of this word."). ``input``: what to do it to
    ("kqxa"; may be ""). ``output``: the exact expected answer ("axqk"). ``task``: one of
    ``INSTRUCTION_TASKS``. ``language``: the language of the instruction, "en" or "ru".
    """

    instruction: str
    input: str
    output: str
    task: str
    language: str = "en"


# ----------------------------------------------------------------------------------------
# 1. The data: phrasings, a bilingual word list, inputs from llm_course.data
# ----------------------------------------------------------------------------------------

# Instruction phrasings per task and language. The LAST phrasing of every list is held out: only the
# "test" split uses it, so a test score measures following a phrasing the model was never tuned on.
# Held-out phrasings reuse the key words of the training ones ("reverse", "alphabetical", "по-русски"):
# a model cannot guess what a phrasing means from words it never saw.
TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "reverse": {
        "en": ("Reverse the letters of this word.", "Write this word backwards.",
               "Spell the word backwards, last letter first.", "Reverse the string.",
               "Write the letters of this word in reverse order."),
        "ru": ("Переверни буквы в этом слове.", "Напиши это слово задом наперёд.",
               "Запиши буквы слова в обратном порядке.", "Переверни строку.",
               "Напиши буквы этого слова в обратном порядке."),
    },
    "sort": {
        "en": ("Sort the letters of this word alphabetically.", "Put the letters in alphabetical order.",
               "Arrange these letters from a to z.", "Sort the characters.",
               "Write the letters of this word in alphabetical order."),
        "ru": ("Расставь буквы этого слова по алфавиту.", "Отсортируй буквы по алфавиту.",
               "Упорядочи буквы от a до z.", "Отсортируй символы строки.",
               "Запиши буквы этого слова в алфавитном порядке."),
    },
    "arithmetic": {
        "en": ("Compute the value of the expression.", "Calculate.", "What is the result of this expression?",
               "Evaluate this arithmetic expression.", "Work out the value of this expression."),
        "ru": ("Вычисли значение выражения.", "Посчитай.", "Чему равно это выражение?",
               "Найди значение арифметического выражения.", "Вычисли, чему равно выражение."),
    },
    "uppercase": {
        "en": ("Convert the text to upper case.", "Write this in capital letters.", "Make every letter uppercase.",
               "Change the text to uppercase.", "Rewrite the text in upper case letters."),
        "ru": ("Переведи текст в верхний регистр.", "Напиши это заглавными буквами.",
               "Сделай все буквы заглавными.", "Замени строчные буквы на заглавные.",
               "Перепиши текст заглавными буквами."),
    },
    "lowercase": {
        "en": ("Convert the text to lower case.", "Write this in small letters.", "Make every letter lowercase.",
               "Change the text to lowercase.", "Rewrite the text in lower case letters."),
        "ru": ("Переведи текст в нижний регистр.", "Напиши это строчными буквами.",
               "Сделай все буквы строчными.", "Замени заглавные буквы на строчные.",
               "Перепиши текст строчными буквами."),
    },
    "count_words": {
        "en": ("How many words are in this text?", "Count the words.", "Count how many words there are.",
               "Give the number of words in the text.", "Tell me how many words this text has."),
        "ru": ("Сколько слов в этом тексте?", "Посчитай слова.", "Подсчитай количество слов.",
               "Сколько здесь слов?", "Назови число слов в тексте."),
    },
    "translate_en_ru": {
        "en": ("Translate this word into Russian.", "What is this word in Russian?",
               "Give the Russian translation.", "Translate from English to Russian.",
               "Say this word in Russian."),
        "ru": ("Переведи это слово на русский.", "Как будет это слово по-русски?",
               "Дай русский перевод слова.", "Переведи с английского на русский.",
               "Скажи это слово по-русски."),
    },
    "translate_ru_en": {
        "en": ("Translate this word into English.", "What is this word in English?",
               "Give the English translation.", "Translate from Russian to English.",
               "Say this word in English."),
        "ru": ("Переведи это слово на английский.", "Как будет это слово по-английски?",
               "Дай английский перевод слова.", "Переведи с русского на английский.",
               "Скажи это слово по-английски."),
    },
}
INSTRUCTION_TASKS = tuple(TEMPLATES)
# The tasks that a minute of tuning teaches course-gpt (see the module docstring): counting words and
# translating words, which need no copying of the input. The notebook's default.
QUICK_TASKS = ("count_words", "translate_ru_en", "translate_en_ru")

# ~100 common English-Russian word pairs: one word each way, so translation is checkable exactly.
# Every English word and every Russian word occurs once (the tests check it), so both directions
# have exactly one right answer.
WORD_PAIRS: tuple[tuple[str, str], ...] = (
    ("cat", "кошка"), ("dog", "собака"), ("house", "дом"), ("water", "вода"), ("sun", "солнце"),
    ("moon", "луна"), ("tree", "дерево"), ("book", "книга"), ("table", "стол"), ("chair", "стул"),
    ("window", "окно"), ("door", "дверь"), ("city", "город"), ("street", "улица"), ("car", "машина"),
    ("bread", "хлеб"), ("milk", "молоко"), ("apple", "яблоко"), ("fish", "рыба"), ("bird", "птица"),
    ("friend", "друг"), ("mother", "мама"), ("father", "папа"), ("brother", "брат"), ("sister", "сестра"),
    ("child", "ребёнок"), ("day", "день"), ("night", "ночь"), ("morning", "утро"), ("evening", "вечер"),
    ("year", "год"), ("week", "неделя"), ("hour", "час"), ("time", "время"), ("word", "слово"),
    ("name", "имя"), ("hand", "рука"), ("head", "голова"), ("eye", "глаз"), ("heart", "сердце"),
    ("school", "школа"), ("teacher", "учитель"), ("student", "студент"), ("money", "деньги"), ("work", "работа"),
    ("game", "игра"), ("music", "музыка"), ("song", "песня"), ("flower", "цветок"), ("river", "река"),
    ("sea", "море"), ("mountain", "гора"), ("forest", "лес"), ("snow", "снег"), ("rain", "дождь"),
    ("wind", "ветер"), ("fire", "огонь"), ("sky", "небо"), ("star", "звезда"), ("road", "дорога"),
    ("train", "поезд"), ("ship", "корабль"), ("letter", "письмо"), ("paper", "бумага"), ("key", "ключ"),
    ("bed", "кровать"), ("kitchen", "кухня"), ("room", "комната"), ("garden", "сад"), ("food", "еда"),
    ("tea", "чай"), ("coffee", "кофе"), ("sugar", "сахар"), ("salt", "соль"), ("egg", "яйцо"),
    ("meat", "мясо"), ("cheese", "сыр"), ("soup", "суп"), ("red", "красный"), ("green", "зелёный"),
    ("blue", "синий"), ("white", "белый"), ("black", "чёрный"), ("big", "большой"), ("small", "маленький"),
    ("new", "новый"), ("old", "старый"), ("good", "хороший"), ("bad", "плохой"), ("cold", "холодный"),
    ("one", "один"), ("two", "два"), ("three", "три"), ("four", "четыре"), ("five", "пять"),
    ("six", "шесть"), ("seven", "семь"), ("eight", "восемь"), ("nine", "девять"), ("ten", "десять"),
    ("yes", "да"), ("no", "нет"), ("hello", "привет"), ("thanks", "спасибо"), ("love", "любовь"),
    ("language", "язык"), ("country", "страна"), ("world", "мир"), ("question", "вопрос"), ("answer", "ответ"),
    ("computer", "компьютер"), ("phone", "телефон"), ("doctor", "врач"), ("family", "семья"), ("summer", "лето"),
    ("winter", "зима"), ("autumn", "осень"),
)

# Short inputs for the generated tasks: llm_course.data's generators with these options. A 2M-parameter
# model tuned for a minute learns short words and one-digit sums; longer ones need more steps.
TASK_OPTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    # instruction task -> (llm_course.data task, its options)
    "reverse": ("reverse", {"min_len": 2, "max_len": 3}),
    "sort": ("sort", {"min_len": 2, "max_len": 3}),
    "arithmetic": ("arithmetic", {"min_digits": 1, "max_digits": 1, "n_terms": 2, "ops": "+-"}),
    "uppercase": ("uppercase", {"min_words": 1, "max_words": 1}),
    "lowercase": ("lowercase", {"min_words": 1, "max_words": 1}),
    "count_words": ("count_words", {"min_words": 1, "max_words": 4}),
}
TEST_SHARE = 5  # one input in TEST_SHARE (by hash) belongs to the test split, the others to train


def _task_input(example: Example) -> str:
    """The input part of an ``llm_course.data`` prompt: ``"reverse: abc"`` -> ``"abc"``, ``"3+4="`` -> ``"3+4"``."""
    if example.prompt.endswith("="):  # arithmetic: "3+4=" (the instruction asks for the value)
        return example.prompt[:-1]
    return example.prompt.split(": ", 1)[1]  # "reverse: abc", "count words: kato mire"


def _split_of(task: str, text: str) -> str:
    """Which split an input belongs to: a fixed hash, the same for every seed (so train and test never meet)."""
    digest = hashlib.sha256(f"{task}\x00{text}".encode()).digest()
    return "test" if digest[0] % TEST_SHARE == 0 else "train"


def _generated_pairs(task: str, split: str, count: int, seed: int) -> list[tuple[str, str]]:
    """``count`` (input, output) pairs of a generated task whose inputs belong to ``split``."""
    data_task, options = TASK_OPTIONS[task]
    pairs: list[tuple[str, str]] = []
    draw = 0
    while len(pairs) < count:
        # Draw more than needed (the test split keeps about 1 in TEST_SHARE); each round gets its own seed.
        batch = make_task(data_task, TEST_SHARE * (count - len(pairs)) + 16, seed=seed * 1000 + draw, **options)
        pairs += [(_task_input(e), e.answer) for e in batch if _split_of(task, _task_input(e)) == split]
        draw += 1
        if draw > 50:  # a task whose test share is empty cannot fill the request: say so, do not loop forever
            raise ValueError(f"could not draw {count} {split} inputs for task {task!r}; use fewer examples")
    return pairs[:count]


def _translation_pairs(task: str, count: int, rng: random.Random) -> list[tuple[str, str]]:
    """``count`` (word, translation) pairs from ``WORD_PAIRS``, in the task's direction.

    Translation is knowledge, not a procedure: a word the model never saw translated cannot be
    translated, so both splits draw from the whole word list. The test split still never repeats a
    training (instruction, input) pair: its phrasings are the held-out ones.
    """
    pairs = [(en, ru) if task == "translate_en_ru" else (ru, en) for en, ru in WORD_PAIRS]
    return [rng.choice(pairs) for _ in range(count)]


def _check_choice(name: str, values: Sequence[str] | None, allowed: Sequence[str]) -> tuple[str, ...]:
    """``values`` (None: all of ``allowed``) as a tuple, or a ValueError naming the unknown ones."""
    if values is None:
        return tuple(allowed)
    if isinstance(values, str):
        values = (values,)
    values = tuple(dict.fromkeys(values))
    unknown = [v for v in values if v not in allowed]
    if unknown or not values:
        raise ValueError(f"unknown {name} {unknown or values!r}; choose from {', '.join(allowed)}")
    return values


def make_instructions(
    n: int,
    seed: int = 0,
    split: str = "train",
    languages: Sequence[str] = LANGUAGES,
    tasks: Sequence[str] | None = None,
) -> list[Instruction]:
    """``n`` instruction examples, the same for the same arguments. Chapter 05 (fine-tuning).

    Every (task, language) combination gets ``n // combinations`` examples (the first ``n % combinations``
    one more), in shuffled order. ``split="train"`` uses all phrasings but the last of each task and
    language; ``split="test"`` uses only the held-out last one, and inputs that no training example has
    (generated tasks: a fixed hash of the input decides its split, whatever the seed). Translation
    draws from the whole word list in both splits (see ``_translation_pairs``); no test (instruction,
    input) pair ever occurs in the training split. ``tasks``: names from ``INSTRUCTION_TASKS`` (None: all).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer (the number of examples), got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use 'train' or 'test'")
    languages = _check_choice("language", languages, LANGUAGES)
    tasks = _check_choice("task", tasks, INSTRUCTION_TASKS)

    combos = [(t, lang) for t in tasks for lang in languages]
    counts = {c: n // len(combos) + (i < n % len(combos)) for i, c in enumerate(combos)}
    rng = random.Random(f"instructions:{split}:{seed}")
    examples = []
    for task in tasks:
        per_task = sum(counts[(task, lang)] for lang in languages)
        if task in TASK_OPTIONS:
            # the split's own seed stream: seed 0 of "test" is not seed 0 of "train" (inputs differ anyway)
            pairs = _generated_pairs(task, split, per_task, seed * 2 + (split == "test"))
        else:
            pairs = _translation_pairs(task, per_task, rng)
        pairs_iter = iter(pairs)
        for lang in languages:
            phrasings = TEMPLATES[task][lang]
            allowed = phrasings[:-1] if split == "train" else phrasings[-1:]
            for _ in range(counts[(task, lang)]):
                text, output = next(pairs_iter)
                examples.append(Instruction(rng.choice(allowed), text, output, task, lang))
    rng.shuffle(examples)
    return examples


# ----------------------------------------------------------------------------------------
# 2. Prompt formats: the manual's Alpaca format and a plain-text chat format
# ----------------------------------------------------------------------------------------


def _check_instruction(example: Any) -> Instruction:
    if not isinstance(example, Instruction):
        raise TypeError(f"expected an llm_course.train.instruct.Instruction, got {type(example).__name__}; build one "
                        "with Instruction(instruction=..., input=..., output=..., task=...)")
    if not isinstance(example.instruction, str) or not example.instruction.strip():
        raise ValueError(f"the instruction text is empty in {example!r}")
    return example


def format_prompt(example: Instruction) -> str:
    """The manual's Alpaca prompt, up to and including ``"### Response:\\n"``. Chapter 05 (fine-tuning).

    With an input::

        ### Instruction:
        Reverse the letters of this word.

        ### Input:
        kqxa

        ### Response:

    and without one (``input == ""``) the ``### Input:`` block is left out. The answer follows the
    last newline; the model learns to end it with the end-of-text token (``encode_instruction``).
    """
    example = _check_instruction(example)
    if example.input:
        return f"### Instruction:\n{example.instruction}\n\n### Input:\n{example.input}\n\n### Response:\n"
    return f"### Instruction:\n{example.instruction}\n\n### Response:\n"


ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


def check_messages(messages: Any) -> list[dict[str, str]]:
    """``messages`` as a list of ``{"role", "content"}`` dicts, or a clear error. Chapter 05 (fine-tuning)."""
    if isinstance(messages, (str, Mapping)) or not isinstance(messages, Sequence):
        raise TypeError("messages must be a list of {'role': ..., 'content': ...} dicts")
    if not messages:
        raise ValueError("messages is empty: give at least one {'role': 'user', 'content': ...} message")
    checked = []
    for m in messages:
        if not isinstance(m, Mapping) or not isinstance(m.get("content"), str):
            raise ValueError(f"each message must be a dict with a 'role' and a string 'content', got {m!r}")
        if m.get("role") not in ROLE_NAMES:
            raise ValueError(f"unknown role {m.get('role')!r}; use one of {', '.join(ROLE_NAMES)}")
        checked.append({"role": m["role"], "content": m["content"]})
    return checked


def format_chat(messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> str:
    """A conversation as plain text with role markers. Chapter 05 (fine-tuning).

    ``messages``: ``[{"role": "system" | "user" | "assistant", "content": "..."}, ...]``. Each message
    becomes ``"### User:\\n<content>\\n\\n"`` (System, User, Assistant); ``add_generation_prompt`` adds
    ``"### Assistant:\\n"`` for the model to continue. The markers are ordinary text, not special tokens,
    so the whole prompt can be encoded with ``allowed_special="none"``; the end of an answer is the
    end-of-text *id* that ``encode_instruction`` appends. ``CHAT_TEMPLATE`` renders the same text.
    """
    parts = [f"### {ROLE_NAMES[m['role']]}:\n{m['content']}\n\n" for m in check_messages(messages)]
    if add_generation_prompt:
        parts.append("### Assistant:\n")
    return "".join(parts)


# The same text as format_chat, for transformers: tokenizer.apply_chat_template(messages, tokenize=False,
# add_generation_prompt=True, chat_template=CHAT_TEMPLATE) == format_chat(messages). The "-" in "{%-"
# strips the white space around a tag, so the template's own line breaks do not reach the output.
CHAT_TEMPLATE = (
    "{%- set names = {'system': 'System', 'user': 'User', 'assistant': 'Assistant'} -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in names -%}"
    "{{- raise_exception('unknown role ' ~ message['role'] ~ '; use system, user or assistant') -}}"
    "{%- endif -%}"
    "{{- '### ' ~ names[message['role']] ~ ':\\n' ~ message['content'] ~ '\\n\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '### Assistant:\\n' -}}{%- endif -%}"
)


def _user_content(example: Instruction) -> str:
    """The instruction and its input as one user message (input after a blank line, if any)."""
    return f"{example.instruction}\n\n{example.input}" if example.input else example.instruction


TEMPLATE_FORMATS: dict[str, Callable[[Instruction], str]] = {
    "alpaca": format_prompt,
    "chat": lambda ex: format_chat([{"role": "user", "content": _user_content(_check_instruction(ex))}]),
}


def _prompt_text(example: Instruction, template: str) -> str:
    if template not in TEMPLATE_FORMATS:
        raise ValueError(f"unknown template {template!r}; use one of {', '.join(TEMPLATE_FORMATS)}")
    return TEMPLATE_FORMATS[template](example)


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


def _encode(tokenizer: Any, text: str) -> list[int]:
    """``text`` as ids with special-token strings kept as text (a typed "<|endoftext|>" is not the token)."""
    if not text:
        return []
    return _encode_plain(tokenizer, text)


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
    example = _check_instruction(example)
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an integer >= 2 (tokens per example), got {max_length!r}")
    if not isinstance(example.output, str) or not example.output:
        raise ValueError(f"the output is empty in {example!r}: there is nothing to learn")
    prompt_ids = _encode(tokenizer, _prompt_text(example, template))
    response_ids = _encode(tokenizer, example.output) + [eos_token_id(tokenizer)]
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
        if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int) or pad_token_id < 0:
            raise ValueError(f"pad_token_id must be a non-negative token id, got {pad_token_id!r}")
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
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
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
    return [_check_instruction(e) for e in examples]


@torch.no_grad()
def _generate_answers(
    model: nn.Module, tokenizer: Any, examples: list[Instruction], max_new_tokens: int, batch_size: int,
    template: str,
) -> list[tuple[str, bool]]:
    """(answer text, whether it ended with the end-of-text id) for each example; see ``answer``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    eos = eos_token_id(tokenizer)
    prompts = [_encode(tokenizer, _prompt_text(ex, template)) for ex in examples]
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
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer (optimizer updates), got {steps!r}")
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
