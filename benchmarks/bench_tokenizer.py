"""Benchmark: training byte-level BPE, ours (pure Python) vs Hugging Face ``tokenizers`` (Rust).

Chapter 01 (tokenization). Both train on the same text with the same settings, side by side
in one run; we report seconds each, the ratio, whether the two learned identical merges,
tokens per character on the validation text, and how long encoding that text takes.

    python benchmarks/bench_tokenizer.py          # the course's docs corpus, vocab 4096 and 8192
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from llm_course.benchtools import record, timeit
from llm_course.text.tokenizer import ByteLevelBPETokenizer

VOCAB_SIZES = (4096, 8192)
QUICK_CHARS = 100_000  # quick=True trains on a ~100 KB slice


def _corpus(quick: bool) -> tuple[str, str, str]:
    """(train, val, description): the course's English docs corpus, or a ~100 KB slice.

    The quick slice comes from ``pydoc_data.topics`` (the first part of the same corpus),
    so a smoke test does not wait for ``docs_corpus()`` to build its cache the first time.
    """
    if quick:
        import pydoc_data.topics

        text = "\n\n".join(pydoc_data.topics.topics.values())
        return text[:QUICK_CHARS], text[QUICK_CHARS : QUICK_CHARS + QUICK_CHARS // 5], "pydoc_data.topics slice"
    from llm_course.text.corpora import docs_corpus

    corpus = docs_corpus()
    return corpus.train, corpus.val, corpus.source or "docs_corpus()"


def _hf_train(text: str, vocab_size: int) -> Any:
    """Hugging Face's byte-level BPE with the same settings as ours."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([text], trainer)
    return tok


def _hf_merges(tok: Any) -> list[tuple[str, str]]:
    merges = json.loads(tok.to_str())["model"]["merges"]
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]


def run(quick: bool = False) -> list[dict]:
    """Train ours and HF's at each vocabulary size; return one row per size."""
    train, val, source = _corpus(quick)
    repeat = 1 if quick else 3
    rows = []
    for vocab_size in VOCAB_SIZES:
        ours: list[ByteLevelBPETokenizer] = []
        hf: list[Any] = []
        ours_s = timeit(lambda ours=ours, n=vocab_size: ours.append(ByteLevelBPETokenizer.train(train, n)),
                        repeat=repeat, warmup=0)
        hf_s = timeit(lambda hf=hf, n=vocab_size: hf.append(_hf_train(train, n)), repeat=repeat, warmup=0)
        tok, ref = ours[-1], hf[-1]

        # Encoding the validation text once, from a cold cache (a fresh tokenizer).
        fresh = ByteLevelBPETokenizer(tok.get_vocab(), tok.merges, list(tok.special_tokens))
        t0 = time.perf_counter()
        ids = fresh.encode(val)
        ours_encode_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref_ids = ref.encode(val).ids
        hf_encode_s = time.perf_counter() - t0

        rows.append(
            {
                "vocab_size": vocab_size,
                "train_chars": len(train),
                "ours_train_s": ours_s,
                "hf_train_s": hf_s,
                "ours/hf": ours_s / hf_s,
                "identical_merges": tok.merges == _hf_merges(ref),
                "identical_val_ids": ids == ref_ids,
                "val_tokens_per_char": len(ids) / max(1, len(val)),
                "ours_encode_val_s": ours_encode_s,
                "hf_encode_val_s": hf_encode_s,
            }
        )
    notes = (
        f"Corpus: {source}; {len(train):,} training / {len(val):,} validation characters. "
        f"Median of {repeat} training run(s) each. Ours is pure Python on one core; HF tokenizers "
        f"is Rust and may use all {os.cpu_count()} cores (RAYON_NUM_THREADS). "
        "Encoding time is one pass over the validation text with a cold word cache."
    )
    record("tokenizer", rows, notes=notes, quick=quick)
    return rows


if __name__ == "__main__":
    run()
