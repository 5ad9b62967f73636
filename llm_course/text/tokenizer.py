"""Byte-level BPE, built from scratch. Chapter 01 (tokenization).

A language model reads integers, not text. GPT-2's answer, used by most LLMs since, is
*byte-level byte-pair encoding*:

1. **Bytes.** Text is UTF-8 encoded, so every string is a sequence of bytes 0..255 and
   the 256 byte tokens can spell anything: there is no "unknown token".
2. **Pre-tokenization.** A regular expression (GPT-2's) cuts text into "words": runs of
   letters with their leading space (" hello"), runs of digits, runs of punctuation,
   whitespace. Merges never cross these boundaries, so " dog" and " dog." share a token.
3. **Training.** Start from the 256 byte tokens; repeatedly find the most frequent
   adjacent pair of tokens in the corpus and add it to the vocabulary as a new token.
   The ordered list of these *merges* is the tokenizer.
4. **Encoding.** Split a new text into words and, inside each word, apply the learned
   merges in the order they were learned (lowest rank first).

Token *strings* follow GPT-2's ``bytes_to_unicode`` trick: each byte is shown as one
printable character (a space becomes ``Ġ``, a newline ``Ċ``), so " the" is the token
``Ġthe``. This is exactly how Hugging Face stores byte-level vocabularies, and
:meth:`ByteLevelBPETokenizer.save_pretrained` writes a ``tokenizer.json`` that
``transformers`` loads and that encodes identically.

Training is the Hugging Face ``tokenizers`` algorithm (the same merges, in the same order,
with the same ids; ``tests/test_tokenizer.py`` checks it), written in plain Python:
the corpus is counted once into unique words, and after each merge only the pair counts
of the words that contained the merged pair are updated (a heap with lazy deletion
finds the next best pair), instead of recounting the whole corpus every step.

Known differences from Hugging Face (each one asserted in the tests):

* special-token strings inside *training* text are document boundaries here; HF's
  trainer reads them as plain text and learns merges such as ``("<", "|")``;
* letters and digits added to Unicode after version 15.1 (which the ``regex`` module
  knows and ``tokenizers``' regex engine does not yet) can be split differently;
* ``decode`` keeps special tokens (HF's ``decode`` drops them unless
  ``skip_special_tokens=False``).
"""

from __future__ import annotations

import heapq
import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import regex

from llm_course.core.checks import check_index, check_int, check_str

__all__ = [
    "ByteLevelBPETokenizer",
    "bpe_merge_steps",
    "bytes_to_unicode",
    "pretokenize",
    "GPT2_SPLIT_PATTERN",
]

# GPT-2's pre-tokenization pattern, exactly as Hugging Face's ByteLevel pre-tokenizer uses
# it: English contractions, an optional space + letters, an optional space + digits, an
# optional space + other symbols, then whitespace. A whitespace run leaves its last character
# out (`\s+(?!\S)`), so "a   b" -> "a", "  ", " b" (the last space starts the next word)
# and "b\n\nc" -> "b", "\n", "\n", "c".
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_GPT2_SPLIT_RE = regex.compile(GPT2_SPLIT_PATTERN)

_FORMAT_NAME = "llm_course.ByteLevelBPETokenizer"
_FORMAT_VERSION = 1
_ENCODE_CACHE_SIZE = 100_000  # words remembered by encode(); cleared when full


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte (0..255) to a printable character. Chapter 01 (tokenization).

    Printable Latin-1 bytes map to themselves ("a" -> "a"); the others (control
    characters, space, ...) are shifted to code points from 256 up, so a space (32)
    becomes "Ġ" (U+0120) and a newline (10) becomes "Ċ". Token strings are then readable
    and never contain whitespace, which is how ``vocab.json``/``tokenizer.json`` store them.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shift)
            shift += 1
    return mapping


@cache
def _unicode_to_bytes() -> dict[str, int]:
    """The inverse of :func:`bytes_to_unicode` (a token character -> its byte)."""
    return {c: b for b, c in bytes_to_unicode().items()}


def pretokenize(text: str) -> list[str]:
    """Split ``text`` into GPT-2 "words" (no text is lost). Chapter 01 (tokenization).

    >>> pretokenize("Hello world, it's 2024!")
    ['Hello', ' world', ',', ' it', "'s", ' 2024', '!']
    """
    if not isinstance(text, str):
        raise TypeError(f"pretokenize expects a str, got {type(text).__name__}")
    return _GPT2_SPLIT_RE.findall(text)


def _token_bytes(token: str) -> bytes:
    """The bytes a byte-level token string stands for ("Ġthe" -> b" the")."""
    table = _unicode_to_bytes()
    return bytes(table[c] for c in token)


def _byte_token_ids(first_id: int) -> list[int]:
    """Ids of the 256 byte tokens, as Hugging Face's trainer assigns them.

    The byte tokens come right after the special tokens, sorted by their printable
    character (so "!" is first and the shifted control bytes like "Ġ" come last), which
    is also the order of GPT-2's own vocabulary. Returns ``ids[byte]``.
    """
    b2u = bytes_to_unicode()
    order = sorted(range(256), key=lambda b: ord(b2u[b]))
    ids = [0] * 256
    for rank, b in enumerate(order):
        ids[b] = first_id + rank
    return ids


def _special_split_pattern(specials: Iterable[str]) -> regex.Pattern | None:
    """A regex that finds any of ``specials`` (longest first, so "<a><b>" beats "<a>")."""
    specials = sorted(set(specials), key=len, reverse=True)
    if not specials:
        return None
    return regex.compile("(" + "|".join(regex.escape(s) for s in specials) + ")")


# --------------------------------------------------------------------------------------
# Training: the merge loop
# --------------------------------------------------------------------------------------

Pair = tuple[int, int]


def _merge_word(ids: list[int], pair: Pair, new_id: int) -> tuple[list[int], list[tuple[Pair, int]]]:
    """Replace every occurrence of ``pair`` in one word by ``new_id`` (left to right).

    Also returns how the word's *neighbouring* pairs changed: merging (a, b) inside
    "p a b n" removes the pairs (p, a) and (b, n) and creates (p, ab) and (ab, n).
    (The pair (a, b) itself is dropped by the caller: it no longer exists anywhere.)
    """
    a, b = pair
    out: list[int] = []
    changes: list[tuple[Pair, int]] = []
    i, n = 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == a and ids[i + 1] == b:
            if out:  # a token on the left (possibly one we just merged)
                left = out[-1]
                changes.append(((left, a), -1))
                changes.append(((left, new_id), +1))
            if i + 2 < n:  # a token on the right
                right = ids[i + 2]
                changes.append(((b, right), -1))
                changes.append(((new_id, right), +1))
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out, changes


class _MergeLoop:
    """The state of BPE training: unique words as token ids, pair counts, a max-heap.

    ``words[w]`` is the current tokenization of the w-th distinct word and ``counts[w]``
    how often it occurs in the corpus. ``pair_counts[(a, b)]`` is how often the pair occurs
    (weighted by word counts) and ``pair_words[(a, b)]`` which words may contain it (a
    superset: words are never removed, a stale entry just finds nothing to merge).

    The heap holds ``(-count, pair)``: the most frequent pair comes out first and, among
    equal counts, the pair with the smallest ids (Hugging Face's tie-break). Entries go
    stale when counts drop; a popped entry whose count is out of date is pushed back with
    the current count ("lazy deletion"), which is much cheaper than updating the heap.
    """

    def __init__(self, words: list[list[int]], counts: list[int]) -> None:
        self.words = words
        self.counts = counts
        self.pair_counts: dict[Pair, int] = defaultdict(int)
        self.pair_words: dict[Pair, set[int]] = defaultdict(set)
        for w, (ids, count) in enumerate(zip(words, counts)):
            for pair in zip(ids, ids[1:]):
                self.pair_counts[pair] += count
                self.pair_words[pair].add(w)
        self.heap = [(-count, pair) for pair, count in self.pair_counts.items()]
        heapq.heapify(self.heap)

    def pop_best_pair(self) -> tuple[Pair, int] | None:
        """Remove and return the most frequent pair and its count (None when none is left)."""
        while self.heap:
            neg_count, pair = heapq.heappop(self.heap)
            count = self.pair_counts.get(pair, 0)
            if -neg_count == count:
                return pair, count
            if count > 0:  # stale entry: re-queue it with its current count
                heapq.heappush(self.heap, (-count, pair))
        return None

    def merge(self, pair: Pair, new_id: int) -> None:
        """Merge ``pair`` into ``new_id`` in every word that contains it; update counts."""
        self.pair_counts.pop(pair, None)
        grown: set[Pair] = set()
        for w in self.pair_words.pop(pair, ()):
            self.words[w], changes = _merge_word(self.words[w], pair, new_id)
            for changed, sign in changes:
                if changed == pair:  # an overlapping occurrence, e.g. "a a a": already gone
                    continue
                self.pair_counts[changed] += sign * self.counts[w]
                if sign > 0:
                    self.pair_words[changed].add(w)
                    grown.add(changed)
        for new_pair in grown:  # the pairs that gained occurrences need fresh heap entries
            count = self.pair_counts[new_pair]
            if count > 0:
                heapq.heappush(self.heap, (-count, new_pair))


def _check_utf8(text: str, what: str = "text") -> None:
    """Refuse text that UTF-8 cannot encode (a lone surrogate such as "\\ud83d"), saying where it is.

    Byte-level BPE starts from the UTF-8 bytes of the text. A lone surrogate (half of a UTF-16 pair,
    e.g. from a JSON "\\ud83d" escape or a string sliced in the middle of a surrogate pair) has no
    UTF-8 encoding, and Python's bare ``UnicodeEncodeError`` would not say what to do about it.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start:e.end]
        raise ValueError(
            f"{what} contains {bad!r} at position {e.start} (a lone surrogate, half of a UTF-16 pair), "
            "which has no UTF-8 encoding, so it cannot be tokenized. Fix the text where it was read "
            "(e.g. decode JSON or bytes properly), or replace such characters: "
            "text.encode('utf-8', 'replace').decode('utf-8') turns each into '?'"
        ) from None


def _count_words(texts: Iterable[str], special_re: regex.Pattern | None) -> Counter[str]:
    """Pre-tokenize every text into words and count them (special tokens are cut out)."""
    word_counts: Counter[str] = Counter()
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts must be strings; item {i} is a {type(text).__name__}")
        _check_utf8(text, f"training text {i}")
        chunks = special_re.split(text)[::2] if special_re is not None else [text]
        for chunk in chunks:
            word_counts.update(_GPT2_SPLIT_RE.findall(chunk))
    return word_counts


# --------------------------------------------------------------------------------------
# The tokenizer
# --------------------------------------------------------------------------------------


class ByteLevelBPETokenizer:
    """A GPT-2 style byte-level BPE tokenizer. Chapter 01 (tokenization).

    Train one with :meth:`train`, then :meth:`encode` / :meth:`decode`. Ids follow
    Hugging Face's ``BpeTrainer``: special tokens first (``<|endoftext|>`` is 0), then the
    256 byte tokens, then one token per merge in the order they were learned.

    >>> tok = ByteLevelBPETokenizer.train("low lower lowest " * 50, vocab_size=270)
    >>> tok.decode(tok.encode("slow<|endoftext|>")) == "slow<|endoftext|>"
    True
    """

    def __init__(
        self,
        vocab: dict[str, int],
        merges: Sequence[tuple[str, str]],
        special_tokens: Sequence[str] = ("<|endoftext|>",),
    ) -> None:
        """Build a tokenizer from a vocabulary and merges. Chapter 01 (tokenization).

        ``vocab`` maps token strings (byte-level form, e.g. ``"Ġthe"``) and special tokens
        to ids 0..N-1; ``merges`` is the ordered list of merged pairs of token strings.
        Most users call :meth:`train`, :meth:`load` or :meth:`from_pretrained` instead.
        """
        _check_vocab(vocab, merges, special_tokens)
        self._vocab: dict[str, int] = dict(vocab)
        self._merges: list[tuple[str, str]] = [tuple(m) for m in merges]  # type: ignore[misc]
        self._special_tokens: dict[str, int] = {s: vocab[s] for s in special_tokens}

        # id -> bytes, for decode(); special tokens decode to their own UTF-8 text.
        self._id_to_token: list[str] = [""] * len(vocab)
        for token, i in vocab.items():
            self._id_to_token[i] = token
        self._id_to_bytes: list[bytes] = [
            t.encode("utf-8") if t in self._special_tokens else _token_bytes(t)
            for t in self._id_to_token
        ]
        # byte -> id of its single-byte token, and (left id, right id) -> (rank, merged id).
        b2u = bytes_to_unicode()
        self._byte_ids: list[int] = [vocab[b2u[b]] for b in range(256)]
        self._merge_ranks: dict[Pair, tuple[int, int]] = {}
        for rank, (left, right) in enumerate(self._merges):
            self._merge_ranks[(vocab[left], vocab[right])] = (rank, vocab[left + right])
        self._special_re = _special_split_pattern(self._special_tokens)
        self._cache: dict[str, list[int]] = {}

    # ---------------------------------------------------------------- training

    @classmethod
    def train(
        cls,
        texts: str | Iterable[str],
        vocab_size: int,
        special_tokens: Sequence[str] = ("<|endoftext|>",),
        min_frequency: int = 0,
        show_progress: bool = False,
    ) -> ByteLevelBPETokenizer:
        """Learn merges from ``texts`` until the vocabulary has ``vocab_size`` tokens.

        Chapter 01 (tokenization). ``vocab_size`` counts everything: the special tokens,
        the 256 byte tokens and the merges. Training stops early when no pair occurs at
        least ``min_frequency`` times (or at all). Special-token strings inside the texts
        are treated as document boundaries, never learned as ordinary text.
        """
        special_tokens = _check_special_tokens(special_tokens)
        minimum = 256 + len(special_tokens)
        check_int("vocab_size", vocab_size, minimum=minimum, hint=f"a byte-level BPE needs at least {minimum} "
                  f"tokens (256 byte tokens + {len(special_tokens)} special token(s))")
        check_int("min_frequency", min_frequency, minimum=0)
        if isinstance(texts, str):
            texts = [texts]

        # 1. Vocabulary: special tokens, then the 256 bytes (Hugging Face's id order).
        vocab: dict[str, int] = {s: i for i, s in enumerate(special_tokens)}
        byte_ids = _byte_token_ids(first_id=len(vocab))
        b2u = bytes_to_unicode()
        for b in range(256):
            vocab.setdefault(b2u[b], byte_ids[b])
        id_to_token = sorted(vocab, key=vocab.__getitem__)

        # 2. Count the corpus once: each distinct word becomes a list of byte-token ids.
        word_counts = _count_words(texts, _special_split_pattern(special_tokens))
        words = [[byte_ids[b] for b in word.encode("utf-8")] for word in word_counts]
        loop = _MergeLoop(words, list(word_counts.values()))

        # 3. Merge the most frequent pair until the vocabulary is full.
        merges: list[tuple[str, str]] = []
        progress = None
        if show_progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=vocab_size - len(vocab), desc="BPE merges", unit="merge")
        while len(vocab) < vocab_size:
            best = loop.pop_best_pair()
            if best is None or best[1] < min_frequency:
                break
            (a, b), _count = best
            left, right = id_to_token[a], id_to_token[b]
            new_token = left + right
            # Two different merges can spell the same string ("a"+"bc", "ab"+"c"): like
            # Hugging Face, the second one reuses the existing id.
            if new_token not in vocab:
                vocab[new_token] = len(id_to_token)
                id_to_token.append(new_token)
                if progress is not None:
                    progress.update(1)
            merges.append((left, right))
            loop.merge((a, b), vocab[new_token])
        if progress is not None:
            progress.close()
        return cls(vocab, merges, special_tokens)

    # ---------------------------------------------------------------- encoding

    def _encode_word(self, word: str) -> list[int]:
        """BPE-encode one pre-token: start from bytes, apply merges lowest rank first."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        ids = [self._byte_ids[b] for b in word.encode("utf-8")]
        ranks = self._merge_ranks
        no_merge = (float("inf"), -1)
        while len(ids) >= 2:
            # The adjacent pair whose merge was learned first (GPT-2's encoder.py does the
            # same); merge all its occurrences, then look again.
            pair = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, no_merge)[0])
            if pair not in ranks:
                break
            ids, _ = _merge_word(ids, pair, ranks[pair][1])
        if len(self._cache) >= _ENCODE_CACHE_SIZE:
            self._cache.clear()
        self._cache[word] = ids
        return ids

    def _allowed_specials(self, allowed_special: str | set[str] | frozenset[str]) -> set[str]:
        """Turn ``allowed_special`` ("all", "none" or a set of special tokens) into a set."""
        if allowed_special == "all":
            return set(self._special_tokens)
        if allowed_special == "none":
            return set()
        if isinstance(allowed_special, (set, frozenset)):
            unknown = sorted(s for s in allowed_special if s not in self._special_tokens)
            if unknown:
                raise ValueError(
                    f"allowed_special contains {unknown}, which are not special tokens of this "
                    f"tokenizer (it has {sorted(self._special_tokens)})"
                )
            return set(allowed_special)
        raise ValueError(
            f"allowed_special must be 'all', 'none' or a set of special-token strings, "
            f"got {allowed_special!r}"
        )

    def encode(self, text: str, allowed_special: str | set[str] = "all") -> list[int]:
        """Text -> token ids. Chapter 01 (tokenization).

        Special-token strings in ``text`` (e.g. ``"<|endoftext|>"``) become their single
        id when allowed (``"all"``, or a set naming them). With ``allowed_special="none"``
        they are encoded as ordinary text: use it for untrusted input, so that a user
        cannot type a control token (prompt injection, chapter 08).
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}; for many texts use encode_batch")
        _check_utf8(text)
        allowed = self._allowed_specials(allowed_special)
        if allowed == set(self._special_tokens):
            special_re = self._special_re
        else:
            special_re = _special_split_pattern(allowed)
        # With a capturing group, split() alternates: text, special, text, special, ...
        pieces = special_re.split(text) if special_re is not None else [text]
        ids: list[int] = []
        for k, piece in enumerate(pieces):
            if k % 2 == 1:
                ids.append(self._special_tokens[piece])
            else:
                for word in _GPT2_SPLIT_RE.findall(piece):
                    ids.extend(self._encode_word(word))
        return ids

    def encode_batch(self, texts: Iterable[str], allowed_special: str | set[str] = "all") -> list[list[int]]:
        """:meth:`encode` every text of ``texts``. Chapter 01 (tokenization)."""
        if isinstance(texts, str):
            raise TypeError("encode_batch expects a list of strings, got a single str; use encode")
        return [self.encode(t, allowed_special=allowed_special) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        """Token ids -> text. Chapter 01 (tokenization).

        The tokens' bytes are joined and decoded as UTF-8; a sequence that is not valid
        UTF-8 (e.g. half of a Cyrillic letter) decodes to U+FFFD "�" rather than failing.
        Special tokens decode to their text.
        """
        if hasattr(ids, "tolist"):  # a torch tensor or numpy array
            ids = ids.tolist()
        if isinstance(ids, (int, str, bytes)):
            raise TypeError(f"decode expects a sequence of ids, got {type(ids).__name__}: write decode([id])")
        n = len(self._id_to_bytes)
        chunks = []
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int):
                raise TypeError(f"decode expects integer ids, got {i!r} ({type(i).__name__})")
            if not 0 <= i < n:
                raise ValueError(f"token id {i} is not in the vocabulary (vocab_size={n}, valid ids 0..{n - 1})")
            chunks.append(self._id_to_bytes[i])
        return b"".join(chunks).decode("utf-8", errors="replace")

    # ---------------------------------------------------------------- vocabulary

    @property
    def vocab_size(self) -> int:
        """Number of tokens, special tokens included. Chapter 01 (tokenization)."""
        return len(self._id_to_token)

    def __len__(self) -> int:
        return self.vocab_size

    def get_vocab(self) -> dict[str, int]:
        """A copy of the token-string -> id map. Chapter 01 (tokenization)."""
        return dict(self._vocab)

    def token_to_id(self, token: str) -> int | None:
        """The id of a token string (``"Ġthe"``), or None if it is not in the vocabulary.

        Chapter 01 (tokenization). Same convention as Hugging Face's ``token_to_id``.
        """
        return self._vocab.get(token)

    def id_to_token(self, token_id: int) -> str:
        """The token string of an id (``464 -> "Ġthe"``). Chapter 01 (tokenization)."""
        token_id = check_index("token_id", token_id, self.vocab_size, hint=f"vocab_size={self.vocab_size}")
        return self._id_to_token[token_id]

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        """Token strings of many ids (as in ``transformers``). Chapter 01 (tokenization)."""
        return [self.id_to_token(i) for i in ids]

    @property
    def merges(self) -> list[tuple[str, str]]:
        """The learned merges, in the order they were learned. Chapter 01 (tokenization)."""
        return list(self._merges)

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special-token string -> id. Chapter 01 (tokenization)."""
        return dict(self._special_tokens)

    def __repr__(self) -> str:
        return (
            f"ByteLevelBPETokenizer(vocab_size={self.vocab_size}, merges={len(self._merges)}, "
            f"special_tokens={list(self._special_tokens)})"
        )

    # ---------------------------------------------------------------- saving

    def save(self, path: str | os.PathLike) -> Path:
        """Save as one JSON file (vocabulary, merges, special tokens). Chapter 01 (tokenization)."""
        path = Path(path)
        if path.is_dir():
            raise ValueError(f"{path} is a directory: give a file name, e.g. {path / 'tokenizer.json'}")
        payload = {
            "format": _FORMAT_NAME,
            "version": _FORMAT_VERSION,
            "pattern": GPT2_SPLIT_PATTERN,
            "special_tokens": list(self._special_tokens),
            "vocab": self._vocab,
            "merges": [list(m) for m in self._merges],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ByteLevelBPETokenizer:
        """Load a tokenizer written by :meth:`save`. Chapter 01 (tokenization)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"no tokenizer file at {str(path)!r}: train one with "
                f"ByteLevelBPETokenizer.train(texts, vocab_size) and call .save({str(path)!r})"
            )
        data = _read_json(path)
        if not isinstance(data, dict) or data.get("format") != _FORMAT_NAME:
            raise ValueError(
                f"{path} is not a tokenizer saved by ByteLevelBPETokenizer.save "
                f"(expected a JSON object with \"format\": \"{_FORMAT_NAME}\")"
            )
        if data.get("version") != _FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported format version {data.get('version')!r} (expected {_FORMAT_VERSION})")
        if data.get("pattern") != GPT2_SPLIT_PATTERN:
            raise ValueError(f"{path}: unknown pre-tokenization pattern (only GPT-2's is supported)")
        return _from_parts(path, data.get("vocab"), data.get("merges"), data.get("special_tokens"))

    def to_hf_tokenizer(self) -> Any:
        """The same tokenizer as a Hugging Face ``tokenizers.Tokenizer``. Chapter 01 (tokenization).

        A ``models.BPE`` with our vocabulary and merges, GPT-2's ByteLevel pre-tokenizer
        (``add_prefix_space=False``) and decoder, and our special tokens as added tokens.
        """
        from tokenizers import (
            AddedToken,
            Tokenizer,
            decoders,
            models,
            pre_tokenizers,
            processors,
        )

        tok = Tokenizer(models.BPE(vocab=dict(self._vocab), merges=list(self._merges)))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in self._special_tokens])
        return tok

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` + ``tokenizer_config.json`` for ``transformers``. Chapter 01.

        ``PreTrainedTokenizerFast.from_pretrained(save_directory)`` (or
        ``AutoTokenizer.from_pretrained``) then encodes exactly like this tokenizer.
        ``<|endoftext|>``, if present, becomes the eos/bos token as in GPT-2.
        """
        directory = Path(save_directory)
        if directory.exists() and not directory.is_dir():
            raise ValueError(f"save_pretrained needs a directory, but {directory} is a file")
        directory.mkdir(parents=True, exist_ok=True)
        self.to_hf_tokenizer().save(str(directory / "tokenizer.json"))
        config: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_prefix_space": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1_000_000_000,
        }
        if "<|endoftext|>" in self._special_tokens:
            config["eos_token"] = "<|endoftext|>"
            config["bos_token"] = "<|endoftext|>"
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> ByteLevelBPETokenizer:
        """Load a byte-level BPE ``tokenizer.json`` (ours or GPT-2's). Chapter 01 (tokenization).

        ``directory`` is a folder holding ``tokenizer.json`` or the file itself. Only local
        files are read: nothing is downloaded.
        """
        path = Path(directory)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"no tokenizer.json at {str(path)!r}: write one with tokenizer.save_pretrained(directory)"
            )
        data = _read_json(path)
        model = data.get("model") if isinstance(data, dict) else None
        if not isinstance(model, dict) or model.get("type") != "BPE":
            raise ValueError(f"{path} is not a Hugging Face BPE tokenizer.json (no model of type 'BPE')")
        pre = data.get("pre_tokenizer") or {}
        if pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") or pre.get("use_regex") is False:
            raise ValueError(
                f"{path}: only GPT-2's byte-level pre-tokenizer is supported (ByteLevel with "
                f"add_prefix_space=False and the GPT-2 regex); this file has {pre}"
            )
        unsupported = [
            k for k in ("dropout", "continuing_subword_prefix", "end_of_word_suffix", "ignore_merges", "byte_fallback")
            if model.get(k)
        ]
        if data.get("normalizer"):
            unsupported.append("normalizer")
        if unsupported:
            raise ValueError(f"{path}: uses options this tokenizer does not implement: {unsupported}")
        merges = [m.split(" ") if isinstance(m, str) else m for m in model.get("merges", [])]
        specials = [t["content"] for t in data.get("added_tokens", []) if t.get("special")]
        return _from_parts(path, model.get("vocab"), merges, specials)


# --------------------------------------------------------------------------------------
# Validation helpers (clear errors for bad input and bad files)
# --------------------------------------------------------------------------------------


def _check_special_tokens(special_tokens: Sequence[str]) -> list[str]:
    """Special tokens as a list; reject a single string, empty strings and duplicates."""
    if isinstance(special_tokens, str):
        raise TypeError(
            f"special_tokens must be a list of strings, got the single string {special_tokens!r}; "
            f"write special_tokens=[{special_tokens!r}]"
        )
    special_tokens = list(special_tokens)
    for s in special_tokens:
        if not isinstance(s, str) or not s:
            raise ValueError(f"special tokens must be non-empty strings, got {s!r}")
    if len(set(special_tokens)) != len(special_tokens):
        raise ValueError(f"special_tokens contains duplicates: {special_tokens}")
    clashes = [s for s in special_tokens if s in _unicode_to_bytes()]
    if clashes:
        raise ValueError(f"special tokens {clashes} are also byte tokens; pick distinct strings such as '<|pad|>'")
    return special_tokens


def _check_vocab(vocab: Any, merges: Any, special_tokens: Any) -> None:
    """Raise ValueError unless vocab/merges/special tokens form a valid byte-level BPE."""
    if not isinstance(vocab, dict) or not all(isinstance(k, str) for k in vocab):
        raise ValueError("vocab must be a dict of token string -> id")
    integer_ids = all(isinstance(i, int) and not isinstance(i, bool) for i in vocab.values())
    ids = sorted(vocab.values()) if integer_ids else None
    if ids != list(range(len(vocab))):
        raise ValueError(f"vocab ids must be exactly 0..{len(vocab) - 1}, each used once")
    missing = [b for b, c in bytes_to_unicode().items() if c not in vocab]
    if missing:
        raise ValueError(f"vocab lacks the byte token(s) of byte(s) {missing[:10]}: every byte 0..255 needs a token")
    specials = _check_special_tokens(special_tokens)
    absent = [s for s in specials if s not in vocab]
    if absent:
        raise ValueError(f"special tokens {absent} are not in the vocab")
    if not isinstance(merges, (list, tuple)):
        raise ValueError("merges must be a list of [left, right] token-string pairs")
    for k, m in enumerate(merges):
        if not (isinstance(m, (list, tuple)) and len(m) == 2 and all(isinstance(x, str) for x in m)):
            raise ValueError(f"merge {k} must be a pair of token strings, got {m!r}")
        if m[0] not in vocab or m[1] not in vocab or m[0] + m[1] not in vocab:
            raise ValueError(f"merge {k} {tuple(m)} uses or makes a token that is not in the vocab")
    allowed = set(_unicode_to_bytes())
    for token in vocab:
        if token not in specials and not set(token) <= allowed:
            raise ValueError(f"token {token!r} is neither a special token nor a byte-level token string")


def _read_json(path: Path) -> Any:
    """Parse a JSON file, turning decoding errors into a ValueError that names the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{path} is not valid JSON ({err}); the file is corrupt or truncated: "
            "save the tokenizer again"
        ) from None


def _from_parts(path: Path, vocab: Any, merges: Any, specials: Any) -> ByteLevelBPETokenizer:
    """Build a tokenizer from a file's parts; any inconsistency names the file."""
    if specials is None or vocab is None or merges is None:
        raise ValueError(f"{path}: missing field(s): the file needs vocab, merges and special_tokens")
    try:
        return ByteLevelBPETokenizer(vocab, [tuple(m) if isinstance(m, list) else m for m in merges], specials)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path} is not a valid tokenizer file: {err}") from None


# --------------------------------------------------------------------------------------
# Teaching helper
# --------------------------------------------------------------------------------------


def bpe_merge_steps(text: str, num_merges: int) -> list[dict[str, Any]]:
    """Run BPE on a small ``text`` and record every merge. Chapter 01 (tokenization).

    Returns one dict per merge with ``step`` (1, 2, ...), ``pair`` (the two token strings
    merged), ``new_token``, ``count`` (how often the pair occurred), ``tokens`` (the whole
    text's token strings after the merge) and ``num_tokens``. Uses the same training code
    as :meth:`ByteLevelBPETokenizer.train` (no special tokens); returns fewer steps if the
    text runs out of pairs (every word already a single token).
    """
    check_str("text", text)
    check_int("num_merges", num_merges, minimum=0)
    _check_utf8(text)
    b2u = bytes_to_unicode()
    byte_ids = _byte_token_ids(first_id=0)
    id_to_token = [""] * 256
    for b in range(256):
        id_to_token[byte_ids[b]] = b2u[b]
    vocab = {t: i for i, t in enumerate(id_to_token)}

    text_words = pretokenize(text)
    distinct = list(dict.fromkeys(text_words))
    index = {w: k for k, w in enumerate(distinct)}
    counts = Counter(text_words)
    loop = _MergeLoop([[byte_ids[b] for b in w.encode("utf-8")] for w in distinct], [counts[w] for w in distinct])

    steps: list[dict[str, Any]] = []
    while len(steps) < num_merges:
        best = loop.pop_best_pair()
        if best is None:
            break
        (a, b), count = best
        new_token = id_to_token[a] + id_to_token[b]
        if new_token not in vocab:
            vocab[new_token] = len(id_to_token)
            id_to_token.append(new_token)
        loop.merge((a, b), vocab[new_token])
        tokens = [id_to_token[i] for w in text_words for i in loop.words[index[w]]]
        steps.append(
            {
                "step": len(steps) + 1,
                "pair": (id_to_token[a], id_to_token[b]),
                "new_token": new_token,
                "count": count,
                "tokens": tokens,
                "num_tokens": len(tokens),
            }
        )
    return steps
