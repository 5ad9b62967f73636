"""Instruction data and prompt formats: what instruction tuning shows a model. Chapter 05 (fine-tuning).

1. **Data** (``make_instructions``): English and Russian instructions for tasks whose answers can be
   checked exactly (reverse, sort, arithmetic, upper/lower case, word count: their inputs come from
   ``llm_course.text.tasks``' generators) plus word translation from a bilingual word list written here
   (``WORD_PAIRS``). Each task has several phrasings per language; the ``"test"`` split uses phrasings
   the ``"train"`` split never shows, and inputs it never shows.
2. **Prompt formats**: the manual's Alpaca format (``format_prompt``) and a plain-text chat format
   (``format_chat``, with the same text as a Jinja ``CHAT_TEMPLATE`` for a transformers tokenizer's
   ``apply_chat_template``); ``prompt_text`` picks one by name.

Encoding, training and scoring these examples is ``llm_course.train.instruct``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llm_course.core.checks import check_choice, check_choices, check_int
from llm_course.text.tasks import Example, make_task

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
    "check_instruction",
    "format_prompt",
    "ROLE_NAMES",
    "check_messages",
    "format_chat",
    "CHAT_TEMPLATE",
    "TEMPLATE_FORMATS",
    "prompt_text",
]

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
# The data: phrasings, a bilingual word list, inputs from llm_course.text.tasks
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

# Short inputs for the generated tasks: llm_course.text.tasks's generators with these options. A 2M-parameter
# model tuned for a minute learns short words and one-digit sums; longer ones need more steps.
TASK_OPTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    # instruction task -> (llm_course.text.tasks task, its options)
    "reverse": ("reverse", {"min_len": 2, "max_len": 3}),
    "sort": ("sort", {"min_len": 2, "max_len": 3}),
    "arithmetic": ("arithmetic", {"min_digits": 1, "max_digits": 1, "n_terms": 2, "ops": "+-"}),
    "uppercase": ("uppercase", {"min_words": 1, "max_words": 1}),
    "lowercase": ("lowercase", {"min_words": 1, "max_words": 1}),
    "count_words": ("count_words", {"min_words": 1, "max_words": 4}),
}
TEST_SHARE = 5  # one input in TEST_SHARE (by hash) belongs to the test split, the others to train


def _task_input(example: Example) -> str:
    """The input part of a ``llm_course.text.tasks`` prompt: ``"reverse: abc"`` -> ``"abc"``, ``"3+4="`` -> ``"3+4"``.
    """
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
    check_int("n", n, minimum=0, hint="the number of examples")
    check_int("seed", seed, minimum=0)
    check_choice("split", split, SPLITS)
    languages = check_choices("languages", languages, LANGUAGES)
    tasks = tuple(INSTRUCTION_TASKS) if tasks is None else check_choices("tasks", tasks, INSTRUCTION_TASKS)

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
# Prompt formats: the manual's Alpaca format and a plain-text chat format
# ----------------------------------------------------------------------------------------


def check_instruction(example: Any) -> Instruction:
    """``example`` if it is an ``Instruction`` with a non-empty instruction, else a clear error. Chapter 05."""
    if not isinstance(example, Instruction):
        raise TypeError(f"expected an llm_course.train.instructions.Instruction, got {type(example).__name__}; "
                        "build one "
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
    example = check_instruction(example)
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
    "chat": lambda ex: format_chat([{"role": "user", "content": _user_content(check_instruction(ex))}]),
}


def prompt_text(example: Instruction, template: str = "alpaca") -> str:
    """The prompt of ``example`` in ``template``: "alpaca" (``format_prompt``) or "chat" (``format_chat``). Ch. 05."""
    if template not in TEMPLATE_FORMATS:
        raise ValueError(f"unknown template {template!r}; use one of {', '.join(TEMPLATE_FORMATS)}")
    return TEMPLATE_FORMATS[template](example)
