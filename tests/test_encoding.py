"""Chapter 01: ``llm_course.text.encoding.encode_plain``, one way to encode plain text with any tokenizer.

The shipped course-gpt tokenizer is the reference: its own encoder with ``allowed_special="none"``; the same
``tokenizer.json`` read by transformers and by Rust ``tokenizers`` must give the same ids, and a typed
``"<|endoftext|>"`` must stay text in all three (it would be one control token otherwise).
"""

from __future__ import annotations

import pytest

from llm_course.text.encoding import encode_plain
from llm_course.text.tokenizer import ByteLevelBPETokenizer
from llm_course.zoo.loading import checkpoint_dir

EOT = "<|endoftext|>"
TEXT = f"a typed {EOT} is text, Привет!"


@pytest.fixture(scope="module")
def folder():
    return checkpoint_dir("course-gpt")


@pytest.fixture(scope="module")
def course_tok(folder):
    return ByteLevelBPETokenizer.from_pretrained(folder)


def test_course_tokenizer_keeps_typed_special_tokens_as_text(course_tok):
    eot = course_tok.special_tokens[EOT]
    ids = encode_plain(course_tok, TEXT)
    assert ids == course_tok.encode(TEXT, allowed_special="none")
    assert eot not in ids
    assert course_tok.decode(ids) == TEXT
    # the control token is what a naive encode makes of it: the difference this helper exists for
    assert eot in course_tok.encode(TEXT, allowed_special="all")


def test_transformers_and_rust_tokenizers_give_the_course_ids(folder, course_tok):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    expected = course_tok.encode(TEXT, allowed_special="none")
    hf = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), eos_token=EOT)
    assert hf.encode(TEXT, add_special_tokens=False) != expected  # transformers' encode makes the control token
    assert encode_plain(hf, TEXT) == expected
    rust = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert encode_plain(rust, TEXT) == expected
    assert rust.encode_special_tokens is False  # the switch is put back after the call


def test_stand_ins_and_bad_inputs():
    class CharTokenizer:  # encode(text) only
        def encode(self, text):
            return [ord(c) for c in text]

    class WithSpecials:  # transformers-like encode: adds two specials unless told not to
        def encode(self, text, add_special_tokens=True):
            return [1] + [ord(c) for c in text] + [2] if add_special_tokens else [ord(c) for c in text]

    assert encode_plain(CharTokenizer(), "ab") == [97, 98]
    assert encode_plain(WithSpecials(), "ab") == [97, 98]
    assert encode_plain(CharTokenizer(), "") == []
    with pytest.raises(TypeError, match="text must be a str, got bytes"):
        encode_plain(CharTokenizer(), b"ab")
    with pytest.raises(TypeError, match="encode.*got object"):
        encode_plain(object(), "ab")
