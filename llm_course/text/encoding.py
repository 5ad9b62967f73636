"""Text to token ids with any tokenizer the course uses, and what a script costs in tokens. Chapter 01.

The course meets three kinds of tokenizer: its own ``ByteLevelBPETokenizer`` (chapter 01), transformers
tokenizers (``AutoTokenizer``) and raw ``tokenizers.Tokenizer`` objects. Each has its own way to say
"encode this as plain text":

* ``encode_plain(tokenizer, text)``: the ids of ``text`` with no special tokens added ([CLS], <s>) and
  special-token *strings* kept as text: a user who types ``"<|endoftext|>"`` gets seven ordinary tokens,
  never the control token that ends a document. Every module that encodes user or corpus text (the
  chat bot, summarization, SFT, classification, the sampling explorer) goes through it.
* ``cyrillic_token_cost`` / ``latin_token_cost``: tokens per letter of the Cyrillic (Latin) words of a
  text, the measure of chapter 01's multilinguality section (a byte-level tokenizer without Cyrillic
  merges pays 2 tokens per Russian letter).
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from llm_course.text.dialogs import dialogs_text
from llm_course.text.tokenizer import ByteLevelBPETokenizer

__all__ = ["encode_plain", "cyrillic_token_cost", "latin_token_cost"]


def encode_plain(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` as plain text: no special tokens added, typed special tokens kept as text.

    Chapter 01 (tokenization). Works with

    * the course's ``ByteLevelBPETokenizer``: ``encode(text, allowed_special="none")``;
    * a transformers tokenizer: ``tokenizer(text, add_special_tokens=False, split_special_tokens=True)``
      (its ``encode`` would turn a typed ``"<|endoftext|>"`` into the control token);
    * a ``tokenizers.Tokenizer``: ``encode(text, add_special_tokens=False)`` with its
      ``encode_special_tokens`` switched on for the call;
    * anything else with ``encode(text)`` (a test's stand-in): ``add_special_tokens=False`` is passed
      when its ``encode`` takes it.

    An empty text gives ``[]``; a text that is not a ``str`` is a TypeError.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}: decode token ids first, or pass the text")
    if not text:
        return []
    if isinstance(tokenizer, ByteLevelBPETokenizer):  # the course's tokenizer
        return tokenizer.encode(text, allowed_special="none")
    if hasattr(tokenizer, "convert_ids_to_tokens") and callable(tokenizer):  # a transformers tokenizer
        return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])
    if hasattr(tokenizer, "encode_special_tokens"):  # a raw tokenizers.Tokenizer
        before = tokenizer.encode_special_tokens
        tokenizer.encode_special_tokens = True  # typed special tokens are split like any other text
        try:
            return list(tokenizer.encode(text, add_special_tokens=False).ids)
        finally:
            tokenizer.encode_special_tokens = before
    encode = getattr(tokenizer, "encode", None)
    if not callable(encode):
        raise TypeError(
            f"tokenizer must have an encode(text) method (the course's ByteLevelBPETokenizer, a transformers "
            f"tokenizer or a tokenizers.Tokenizer), got {type(tokenizer).__name__}"
        )
    params = inspect.signature(encode).parameters
    ids = encode(text, add_special_tokens=False) if "add_special_tokens" in params else encode(text)
    ids = getattr(ids, "ids", ids)  # a tokenizers.Encoding keeps them in .ids
    return [int(i) for i in ids]


# The letters whose cost a tokenizer is measured on. Cyrillic: the letters of Unicode's Cyrillic block
# U+0400-U+04FF (Russian а-я, А-Я, ё, Ё and the other Cyrillic alphabets' letters), without its sign
# U+0482 and combining marks U+0483-U+0489. Latin: the 52 ASCII letters.
_CYRILLIC_WORD = re.compile("[\u0400-\u0481\u048a-\u04ff]+")
_LATIN_WORD = re.compile("[A-Za-z]+")


def _tokens_per_letter(tokenizer: object, text: str, word_re: re.Pattern, script: str) -> float:
    """Tokens per letter of ``text``'s words written in one script (see ``cyrillic_token_cost``)."""
    if not callable(getattr(tokenizer, "encode", None)):
        raise TypeError(
            f"tokenizer must have an encode(text) method (the course's ByteLevelBPETokenizer, a transformers "
            f"tokenizer or a tokenizers.Tokenizer), got {type(tokenizer).__name__}"
        )
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    words = word_re.findall(text)
    if not words:
        raise ValueError(
            f"the text has no {script} letters to measure; pass a text written in {script} "
            f"(or text=None for the {script} chatterbot dialogs)"
        )
    return len(encode_plain(tokenizer, " ".join(words))) / sum(map(len, words))


def cyrillic_token_cost(tokenizer: object, text: str | None = None) -> float:
    """Tokens per Cyrillic character: what Russian costs a tokenizer. Chapter 01 (multilinguality).

    The text (default: the Russian ``chatterbot-corpus`` dialogs, ``dialogs_text("russian")``) is
    reduced to its Cyrillic words: maximal runs of Cyrillic letters (Unicode's Cyrillic block,
    U+0400-U+04FF, less the sign and combining marks U+0482-U+0489; so Russian а-я, А-Я, ё, Ё). The
    words are joined with single spaces and encoded once, without special tokens; the result is
    ``tokens / letters``. Digits, punctuation, Latin letters and line breaks are left out, so the
    figure is about Cyrillic alone; the spaces are in the text (a word-initial space is merged into
    the word's first token, as in running text) but not in the letter count.

    Every Cyrillic letter is two UTF-8 bytes, so a byte-level tokenizer that learned no Cyrillic
    merges pays 2.00 tokens per Cyrillic character; one that holds every word whole pays
    1 / (mean word length), about 0.2. Compare ``latin_token_cost`` on English text. Works with the
    course's ``ByteLevelBPETokenizer``, a transformers tokenizer or a ``tokenizers.Tokenizer``.

    Example: with a byte-level tokenizer without merges, ``"да, нет!"`` -> ``"да нет"`` = 11 bytes,
    11 tokens for 5 letters: 2.2.
    """
    return _tokens_per_letter(tokenizer, dialogs_text("russian") if text is None else text, _CYRILLIC_WORD,
                              "Cyrillic")


def latin_token_cost(tokenizer: object, text: str | None = None) -> float:
    """Tokens per Latin letter, the English counterpart of ``cyrillic_token_cost``. Chapter 01.

    The same measure on the words of ASCII letters (A-Z, a-z) of ``text`` (default: the English
    ``chatterbot-corpus`` dialogs, ``dialogs_text("english")``). Its inverse is letters per token.
    """
    return _tokens_per_letter(tokenizer, dialogs_text("english") if text is None else text, _LATIN_WORD, "Latin")
