"""Token labels: what a tokenizer's tokens look like on a plot axis. Chapter 03 (attention), chapter 07.

A tokenizer's own strings are not made for people: GPT-2's byte-level BPE writes ' the' as 'Ġthe' and
may split a Cyrillic letter into two tokens that are not valid UTF-8 alone; SentencePiece writes '▁the'.
Figures of attention (chapter 03) and of next-token distributions (chapter 07) label tokens with:

* ``token_label(token, byte_level)``: one raw token as readable text ('·the', '↵', '\\xd0');
* ``is_byte_level(tokenizer)``: whether a tokenizer's tokens are in GPT-2's byte alphabet;
* ``tokenize(tokenizer, text)``: ids and raw token strings of a text, the special tokens a model
  expects included (any tokenizer the course uses);
* ``token_strings(tokenizer, ids)`` / ``readable_labels(tokenizer, tokens, byte_level)``: the raw strings
  of ids and their readable labels, special tokens ('<|endoftext|>', '[CLS]') shown as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llm_course.text.tokenizer import bytes_to_unicode

__all__ = ["token_label", "is_byte_level", "tokenize", "token_strings", "readable_labels"]


# GPT-2's byte alphabet read backwards: 'Ġ' -> 0x20 (see llm_course.text.tokenizer.bytes_to_unicode).
_UNICODE_TO_BYTE: dict[str, int] = {c: b for b, c in bytes_to_unicode().items()}

# Characters that are invisible or break a plot label, and what we show instead.
_VISIBLE = {" ": "·", "▁": "·", "\n": "↵", "\t": "→", "\r": "\\r"}


def _visible(text: str) -> str:
    """Apply ``_VISIBLE`` and escape other control characters (no font has glyphs for them)."""
    return "".join(_VISIBLE.get(c, f"\\x{ord(c):02x}" if ord(c) < 32 or ord(c) == 127 else c) for c in text)


def token_label(token: str | bytes, byte_level: bool = False) -> str:
    """Turn a raw token into a label a person can read. Chapter 03 (attention).

    * ``bytes`` (a byte-level token kept as raw bytes) are decoded as UTF-8.
    * With ``byte_level=True`` the token is in GPT-2's byte alphabet ('Ġthe' is the bytes
      b' the') and is first mapped back to its bytes.
    * A space, or SentencePiece's '▁', is shown as '·' so that ' the' and 'the' differ
      on a plot axis; a newline as '↵', a tab as '→', other control characters as escapes
      ('\\r', '\\x0c': no font has glyphs for them).
    * Bytes that are not valid UTF-8 on their own (a byte-level BPE token often holds half
      of a Cyrillic letter) are shown as escapes, e.g. '\\xd0'.
    """
    if isinstance(token, (bytes, bytearray)):
        raw = bytes(token)
    elif isinstance(token, str):
        if not byte_level:
            return _visible(token)
        # Characters outside the byte alphabet (special tokens such as '<｜end｜>') keep
        # their own UTF-8 bytes.
        raw = b"".join(
            bytes([_UNICODE_TO_BYTE[c]]) if c in _UNICODE_TO_BYTE else c.encode("utf-8")
            for c in token
        )
    else:
        raise TypeError(f"a token must be str or bytes, got {type(token).__name__}")
    text = raw.decode("utf-8", errors="backslashreplace")
    return _visible(text)


def is_byte_level(tokenizer: Any) -> bool:
    """Guess whether a tokenizer's tokens are written in GPT-2's byte alphabet ('Ġthe'). Chapter 03."""
    flag = getattr(tokenizer, "byte_level", None)
    if isinstance(flag, bool):
        return flag
    if "ByteLevel" in type(tokenizer).__name__:
        return True
    if hasattr(tokenizer, "byte_encoder"):  # slow GPT2Tokenizer in transformers 4.x
        return True
    # A Hugging Face fast tokenizer, or a raw ``tokenizers.Tokenizer``.
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    parts = (getattr(backend, "decoder", None), getattr(backend, "pre_tokenizer", None))
    return any(part is not None and "ByteLevel" in repr(part) for part in parts)


def tokenize(tokenizer: Any, text: str) -> tuple[list[int], list[str | bytes]]:
    """Token ids and raw token strings for ``text`` with any tokenizer the course uses. Chapter 03.

    Hugging Face tokenizers (``__call__`` + ``convert_ids_to_tokens``) add their special
    tokens ([CLS] ... [SEP] for BERT, </s> for T5), as the model saw them in training.
    The course's tokenizer and raw ``tokenizers.Tokenizer`` objects use
    ``encode`` + ``id_to_token``.
    """
    if hasattr(tokenizer, "convert_ids_to_tokens") and callable(tokenizer):
        ids = tokenizer(text)["input_ids"]
    elif hasattr(tokenizer, "encode") and hasattr(tokenizer, "id_to_token"):
        encoded = tokenizer.encode(text)
        ids = getattr(encoded, "ids", encoded)  # a tokenizers.Encoding keeps them in .ids
    else:
        raise TypeError(
            f"unsupported tokenizer {type(tokenizer).__name__}: pass a Hugging Face tokenizer "
            "(callable, with convert_ids_to_tokens) or one with encode(text) and id_to_token(id), "
            "such as llm_course.text.tokenizer.ByteLevelBPETokenizer"
        )
    ids = [int(i) for i in ids]
    return ids, token_strings(tokenizer, ids)


def token_strings(tokenizer: Any, ids: Sequence[int]) -> list[str | bytes]:
    """The tokenizer's own string for each id ('Ġthe'), with either tokenizer flavour. Chapter 03.

    An id the tokenizer does not know is shown as '<id>'.
    """
    if hasattr(tokenizer, "convert_ids_to_tokens"):
        tokens = list(tokenizer.convert_ids_to_tokens(list(ids)))
    else:
        tokens = [tokenizer.id_to_token(i) for i in ids]
    return [t if t is not None else f"<{i}>" for i, t in zip(ids, tokens)]


def readable_labels(tokenizer: Any, tokens: Sequence[str | bytes], byte_level: bool) -> list[str]:
    """``token_label`` of each raw token; special tokens ('<|endoftext|>', '[CLS]') as they are. Chapter 03."""
    # Hugging Face tokenizers list them in all_special_tokens, the course's in special_tokens.
    special = set(getattr(tokenizer, "all_special_tokens", None) or getattr(tokenizer, "special_tokens", None) or [])
    return [
        t if isinstance(t, str) and t in special else token_label(t, byte_level)
        for t in tokens
    ]
