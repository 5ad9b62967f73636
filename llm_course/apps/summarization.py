"""Summarization: a seq2seq model, a causal LM's "TL;DR:", and ROUGE to tell them apart. Chapter 08 (applications).

The manual's summariser (ERRATA section 8) prompts a causal LM with
``"Создай краткое резюме следующего текста:\\n\\n{text}\\n\\nРезюме:"`` and has three defects, fixed here:

1. **The summary cut out of a string.** ``decode(outputs[0])[len(prompt):]`` assumes that decoding gives
   back the prompt's exact text (it does not for normalising tokenizers, cleaned-up spaces or skipped
   special tokens). ``tldr_summarize`` decodes the *generated ids* only (those after the prompt), up to
   the end-of-text id, and keeps the first line.
2. **Sampling settings that do nothing.** ``temperature=0.7, top_p=0.9`` without ``do_sample=True`` are
   ignored by greedy decoding. Here decoding is greedy on purpose (a summary should be the model's best
   guess, and reproducible), and ``generation.GenerationConfig`` rejects the ineffective combination.
3. **No evaluation at all.** Here every method is scored with ROUGE (``rouge_scores``, the
   ``rouge-score`` package) on a held-out split, next to the trivial **lead baseline** (the first
   sentence of the text), which any summariser must beat to be worth its compute.

The task (``summary_pairs``), built from the standard-library documentation of chapter 01: the
*source* is a documentation entry's title line and its body **without its first sentence**; the
*target* is that first sentence (the docstring's summary line). Removing it matters: otherwise the lead
baseline would copy the answer. One entry in ten (by a hash of its name) is held out.

Three summarisers:

* ``lead_baseline(source)``: the first sentence of the body.
* ``summarize``: a sequence-to-sequence model, chapter 02's ``T5`` (greedy decoding with the key/value
  cache; the encoder runs once) or any transformers seq2seq model (``T5ForConditionalGeneration``; a
  Hub T5 such as ``google-t5/t5-small`` wants ``prefix="summarize: "``). ``train_summarizer``
  (``llm_course.apps.summarization_tuning``) trains a small course T5 from scratch on the train split
  (the ``course-t5-sum`` recipe).
* ``tldr_summarize``: a causal LM continues ``"{text}\\n\\nTL;DR:"`` (``TLDR_PROMPT``, the GPT-2 paper's
  zero-shot trick) or the manual's Russian prompt (``MANUAL_PROMPT``).

ROUGE pitfall: ``rouge-score``'s default tokenizer lowercases and keeps only ``[a-z0-9]`` runs, so a
Russian summary has *no tokens* and scores 0 against anything, itself included. ``rouge_scores(...,
tokenizer="unicode")`` splits on ``\\w+`` (any script); ``"default"`` warns when a text with letters has
no tokens.

Measured on the test split (318 pairs; 2,398 train), mean F1 x 100, default ROUGE tokenizer:

    ==============================================  =======  =======  =======
    summariser                                      ROUGE-1  ROUGE-2  ROUGE-L
    ==============================================  =======  =======  =======
    lead baseline (first sentence of the rest)        18.1      4.8     15.1
    the title line alone                              15.8      2.3     14.6
    course-t5-sum (shipped: 600 steps)                11.0      1.4     10.6
    the same recipe at 300 steps                      11.3      1.4     11.2
    course-gpt, ``TLDR_PROMPT``                        6.9      0.9      6.6
    course-gpt, the manual's Russian prompt            1.2      0.0      1.1
    ==============================================  =======  =======  =======

**The lead baseline wins.** The shipped course-t5-sum (``llm-course zoo train course-t5-sum``: 600 steps,
7 minutes on two threads; held-out loss 4.47 nats per summary token, 4.84 after 300 steps) has learnt
the *style* of a summary line but not to read its source: it writes nearly the same sentence for every
input ("Return the given file for the current file."),
which shares the frequent words ("Return the ... of the ...") with many references and nothing else.
Starting its embedding from course-gpt's helps (training loss at step 80: 5.74 against 6.47 from a
random start) but does not change the verdict. The 2.3 M-parameter course-gpt has never seen "TL;DR:"
used as a cue, so it continues with more documentation-like text (often code or a reST table rule); the
Russian prompt makes it write Cyrillic babble ("Пророророр...") that shares nothing with the English
references.

Notebook use::

    from llm_course.apps.summarization import summary_pairs, lead_baseline, rouge_scores, summarize, tldr_summarize
    from llm_course.apps.summarization_tuning import train_summarizer
    from llm_course.zoo.loading import load_pretrained

    test = summary_pairs("test")
    refs = [p.target for p in test]
    rouge_scores([lead_baseline(p.source) for p in test], refs)
    t5, tok, result = train_summarizer()                      # about 5 minutes on a laptop
    rouge_scores(summarize(t5, tok, [p.source for p in test]), refs)
    gpt, gpt_tok = load_pretrained("course-gpt")
    rouge_scores(tldr_summarize(gpt, gpt_tok, [p.source for p in test]), refs)
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from llm_course.core.checks import check_choice, check_int, check_positive_int, check_str
from llm_course.core.runtime import eval_mode
from llm_course.infer.generation import generate
from llm_course.models.modeling import context_length, is_encoder_decoder
from llm_course.models.t5 import T5
from llm_course.text.corpora import docs_documents, first_sentence
from llm_course.text.encoding import encode_plain
from llm_course.train.instruct import eos_token_id

__all__ = [
    "SummaryPair",
    "summary_pairs",
    "lead_baseline",
    "ROUGE_TYPES",
    "rouge_scores",
    "encode_pair",
    "summarize",
    "TLDR_PROMPT",
    "MANUAL_PROMPT",
    "tldr_summarize",
]

SUMMARY_TEST_SHARE = 10  # one entry in SUMMARY_TEST_SHARE (by a hash of its name) is held out
MIN_TARGET_CHARS = 20  # shorter summary lines ("New in 3.5.") say too little
MAX_TARGET_CHARS = 200  # longer ones are paragraphs, not summaries
MIN_REST_CHARS = 80  # a body that is little more than its summary line leaves nothing to summarise
MAX_SOURCE_CHARS = 600  # sources are cut (at a word boundary) to this many characters
MAX_SOURCE_TOKENS = 64  # source tokens read (end-of-text included): course-t5-sum is trained on 64; Hub T5: 512

# --------------------------------------------------------------------------------------------
# 1. The task: a documentation entry's body -> its first sentence
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SummaryPair:
    """One summarisation example. Chapter 08 (applications).

    ``name``: the documentation entry (``"json.dumps"``). ``source``: its title on the first line, then
    the body without its first sentence, on one line. ``target``: that first sentence.
    """

    name: str
    source: str
    target: str


def _flatten(text: str) -> str:
    """All white space (line breaks included) as single spaces."""
    return " ".join(text.split())


def _cut_words(text: str, max_chars: int) -> str:
    """``text`` cut to at most ``max_chars`` characters, at a word boundary."""
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars + 1].rsplit(" ", 1)[0]  # +1: a space right after the limit is a boundary too
    return cut if cut else text[:max_chars]


def _rest_after_summary(body: str) -> str:
    """The body without its first sentence (``first_sentence`` reads the first paragraph), on one line."""
    paragraphs = body.strip().split("\n\n")
    first = _flatten(paragraphs[0])
    lead = first_sentence(body)
    assert first.startswith(lead), (first, lead)  # first_sentence flattens the first paragraph the same way
    return _flatten(" ".join([first[len(lead):]] + paragraphs[1:]))


def _split_of(name: str) -> str:
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return "test" if int.from_bytes(digest[:8], "big") % SUMMARY_TEST_SHARE == 0 else "train"


def summary_pairs(split: str = "train", max_source_chars: int = MAX_SOURCE_CHARS) -> list[SummaryPair]:
    """The (source, target) pairs of the docs summarisation task, in corpus order. Chapter 08 (applications).

    For every entry of ``data.docs_documents()``: target = its summary line (``Document.summary``, the
    body's first sentence), kept if it has 20-200 characters; source = ``title + "\\n" + rest`` where
    rest is the body without that sentence, on one line, cut at a word boundary to ``max_source_chars``
    characters; entries whose rest has fewer than 80 characters, or whose title or rest contains the
    target, are skipped. A target seen before (many methods share a docstring) is skipped, so no summary
    is both trained on and tested. Built once per process (and ``max_source_chars``).
    ``split``: "train" (9 in 10 entries) or "test" (the others, chosen by a SHA-256 hash of the name:
    stable across runs and machines), or "all".
    """
    check_choice("split", split, ("train", "test", "all"))
    check_int("max_source_chars", max_source_chars, minimum=MIN_REST_CHARS)
    if max_source_chars not in _PAIRS:
        _PAIRS[max_source_chars] = _build_pairs(max_source_chars)
    return [pair for pair_split, pair in _PAIRS[max_source_chars] if split in ("all", pair_split)]


_PAIRS: dict[int, list[tuple[str, SummaryPair]]] = {}  # (split, pair) lists by max_source_chars, built once


def _build_pairs(max_source_chars: int) -> list[tuple[str, SummaryPair]]:
    pairs, seen = [], set()
    for doc in docs_documents():
        target = doc.summary
        if not MIN_TARGET_CHARS <= len(target) <= MAX_TARGET_CHARS or target in seen:
            continue
        rest = _rest_after_summary(doc.body)
        title = _flatten(doc.title)
        if len(rest) < MIN_REST_CHARS or target in rest or target in title:  # some repeat their summary line
            continue
        seen.add(target)
        source = title + "\n" + _cut_words(rest, max_source_chars)
        pairs.append((_split_of(doc.name), SummaryPair(doc.name, source, target)))
    return pairs


def _check_text(text: Any, what: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"{what} is empty (or only white space): there is nothing to summarise")
    return text


def _check_texts(texts: Any) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
    if not texts:
        raise ValueError("texts is empty: pass at least one text to summarise")
    return [_check_text(t, f"texts[{i}]") for i, t in enumerate(texts)]


def lead_baseline(source: str) -> str:
    """The first sentence of the source's body (the text after its title line). Chapter 08 (applications).

    The "lead" baseline of news summarisation: on a well-written text the opening sentence is already
    a summary. A source without a line break is all body.
    """
    _check_text(source, "source")
    body = source.split("\n", 1)[1] if "\n" in source else source
    if not body.strip():
        raise ValueError(f"source {source[:40]!r} has a title line but no body to take the lead sentence from")
    return first_sentence(body)


# --------------------------------------------------------------------------------------------
# 2. ROUGE
# --------------------------------------------------------------------------------------------

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


class _UnicodeTokenizer:
    """ROUGE tokens for any script: lowercased ``\\w+`` runs (letters, digits, underscore)."""

    def tokenize(self, text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())


_DEFAULT_TOKEN = re.compile(r"[a-z0-9]+")


def rouge_scores(
    predictions: Sequence[str],
    references: Sequence[str],
    rouge_types: Sequence[str] = ROUGE_TYPES,
    *,
    tokenizer: str = "default",
    use_stemmer: bool = False,
) -> dict[str, float]:
    """Mean ROUGE F1 (in [0, 1]; multiply by 100 for the usual tables) over pairs. Chapter 08 (applications).

    ROUGE-n: overlap of word n-grams (precision = shared / predicted, recall = shared / reference, F1
    their harmonic mean); ROUGE-L: the same with the longest common subsequence of words (order
    matters, gaps allowed). Computed by Google's ``rouge-score`` package (``rouge_scorer.RougeScorer``).
    ``tokenizer``: ``"default"`` is the package's (lowercase, ``[a-z0-9]+`` runs; the published
    numbers), which finds **no tokens in Cyrillic** (a Russian summary scores 0, a warning says so);
    ``"unicode"``: lowercased ``\\w+`` runs, right for any script. ``use_stemmer``: the package's
    Porter stemmer (English; default tokenizer only). Returns ``{"rouge1": ..., "rouge2": ..., "rougeL": ...}``.
    """
    from rouge_score import rouge_scorer

    for name, values in (("predictions", predictions), ("references", references)):
        if isinstance(values, str) or not isinstance(values, Sequence):
            raise TypeError(f"{name} must be a list of strings, got {type(values).__name__}")
        bad = [i for i, v in enumerate(values) if not isinstance(v, str)]
        if bad:
            raise TypeError(f"{name}[{bad[0]}] is a {type(values[bad[0]]).__name__}, not a string")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references: one prediction per "
                         "reference, in the same order")
    if not predictions:
        raise ValueError("no predictions: ROUGE of an empty list is undefined")
    rouge_types = list(rouge_types)
    allowed = {"rouge1", "rouge2", "rouge3", "rouge4", "rougeL", "rougeLsum"}
    if not rouge_types or not set(rouge_types) <= allowed:
        raise ValueError(f"rouge_types must be some of {sorted(allowed)}, got {rouge_types!r}")
    if tokenizer == "unicode":
        if use_stemmer:
            raise ValueError("use_stemmer is the English Porter stemmer; it goes with tokenizer='default' only")
        scorer = rouge_scorer.RougeScorer(rouge_types, tokenizer=_UnicodeTokenizer())
    elif tokenizer == "default":
        scorer = rouge_scorer.RougeScorer(rouge_types, use_stemmer=use_stemmer)
        for text in (*predictions, *references):
            if re.search(r"[^\W\d_]", text) and not _DEFAULT_TOKEN.search(text.lower()):
                warnings.warn(f"{text[:40]!r} has letters but no [a-z0-9] tokens, so ROUGE's default tokenizer "
                              "scores it 0; use tokenizer='unicode' for non-Latin text", stacklevel=2)
                break
    else:
        raise ValueError(f"tokenizer must be 'default' or 'unicode', got {tokenizer!r}")
    totals = dict.fromkeys(rouge_types, 0.0)
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(reference, prediction)  # the package's order: (target, prediction)
        for t in rouge_types:
            totals[t] += scores[t].fmeasure
    return {t: totals[t] / len(predictions) for t in rouge_types}


# --------------------------------------------------------------------------------------------
# 3. Encoding a pair: source tokens in, summary tokens + end-of-text out
# --------------------------------------------------------------------------------------------


def _source_ids(tokenizer: Any, text: str, max_source_tokens: int, prefix: str = "") -> list[int]:
    """``prefix + text`` as plain-text ids, cut to its first max_source_tokens - 1, then end-of-text (T5's ``</s>``)."""
    ids = encode_plain(tokenizer, prefix + text)
    return ids[: max_source_tokens - 1] + [eos_token_id(tokenizer)]


def encode_pair(
    tokenizer: Any, pair: SummaryPair | tuple[str, str], max_source_tokens: int = MAX_SOURCE_TOKENS
) -> dict[str, list[int]]:
    """One pair as ``{"input_ids", "attention_mask", "labels"}`` lists for a seq2seq model. Chapter 08.

    ``input_ids``: the source's tokens (its first ``max_source_tokens - 1``) + end-of-text; ``labels``:
    the target's tokens + end-of-text (the model learns to stop). The model shifts the labels right
    behind its decoder start token itself (teacher forcing, ``T5.shift_right``).
    """
    source, target = (pair.source, pair.target) if isinstance(pair, SummaryPair) else pair
    check_int("max_source_tokens", max_source_tokens, minimum=2)
    _check_text(source, "the source")
    _check_text(target, "the target")
    input_ids = _source_ids(tokenizer, source, max_source_tokens)
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids),
            "labels": encode_plain(tokenizer, target) + [eos_token_id(tokenizer)]}


# --------------------------------------------------------------------------------------------
# 4. Summarising with a seq2seq model
# --------------------------------------------------------------------------------------------


def _decode_until_eos(tokenizer: Any, ids: Sequence[int], eos: int) -> str:
    """The text of ``ids`` up to (not including) the first end-of-text id."""
    ids = [int(i) for i in ids]
    if eos in ids:
        ids = ids[: ids.index(eos)]
    try:
        return tokenizer.decode(ids, skip_special_tokens=True)  # transformers: drop <pad>, </s>...
    except TypeError:
        return tokenizer.decode(ids)  # the course tokenizer has no such option


@torch.no_grad()
def _greedy_t5(model: T5, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy decoding with the course T5: (B, S) source -> (B, <= max_new_tokens) generated ids.

    The encoder runs once; each step feeds the decoder only its newest token (the self-attention keys
    and values of the earlier ones, and the cross-attention keys and values of the source, are in
    ``past_key_values``). Rows that have written end-of-text are filled with padding.
    """
    c = model.config
    enc = model.encode(input_ids, attention_mask)
    B = input_ids.shape[0]
    token = torch.full((B, 1), c.decoder_start_token_id, dtype=torch.long, device=input_ids.device)
    done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    past, out = None, []
    for _ in range(max_new_tokens):
        step = model(attention_mask=attention_mask, decoder_input_ids=token, encoder_outputs=enc,
                     past_key_values=past, use_cache=True)
        past = step.past_key_values
        token = step.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        token = token.masked_fill(done[:, None], c.pad_token_id)
        out.append(token)
        done |= token[:, 0] == c.eos_token_id
        if bool(done.all()):
            break
    return torch.cat(out, dim=1)


@torch.no_grad()
def summarize(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str] | str,
    max_new_tokens: int = 48,
    *,
    max_source_tokens: int = MAX_SOURCE_TOKENS,
    prefix: str = "",
    batch_size: int = 32,
) -> list[str] | str:
    """Greedy summaries of ``texts`` by a seq2seq model. Chapter 08 (applications).

    ``model``: the course ``T5`` (decoded here with the key/value cache, the encoder run once per batch)
    or a transformers encoder-decoder such as ``T5ForConditionalGeneration`` (its ``generate`` with
    ``num_beams=1, do_sample=False``; both give the same ids). Each text becomes ``prefix + text`` as
    plain-text ids (Hub T5 checkpoints want ``prefix="summarize: "`` and ``max_source_tokens=512``), **cut
    to its first** ``max_source_tokens - 1`` **tokens** (the beginning of a document says the most; the
    default, 64, is what course-t5-sum is trained on), then end-of-text.
    The summary is the decoding of the generated ids only, up to the end-of-text id, stripped.
    A single string gives a single summary; a list gives a list. Empty texts raise ValueError naming
    the item.
    """
    single = isinstance(texts, str)
    texts = _check_texts([texts] if single else texts)
    check_positive_int("max_new_tokens", max_new_tokens)
    check_int("max_source_tokens", max_source_tokens, minimum=2)
    check_positive_int("batch_size", batch_size)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a seq2seq torch model, got {type(model).__name__}")
    course = isinstance(model, T5)
    if not course and not is_encoder_decoder(model):
        raise TypeError(f"{type(model).__name__} is not an encoder-decoder model; for a causal LM use tldr_summarize")
    eos = eos_token_id(tokenizer)
    device = next(model.parameters()).device
    summaries = []
    with eval_mode(model):
        for start in range(0, len(texts), batch_size):
            rows = [_source_ids(tokenizer, t, max_source_tokens, prefix) for t in texts[start: start + batch_size]]
            width = max(len(r) for r in rows)
            input_ids = torch.tensor([r + [eos] * (width - len(r)) for r in rows], device=device)  # right-padded
            attention_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
            if course:
                generated = _greedy_t5(model, input_ids, attention_mask, max_new_tokens)
            else:
                out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                                     num_beams=1, do_sample=False, eos_token_id=eos)
                generated = out[:, 1:]  # the first column is the decoder start token, not generated
            summaries += [_decode_until_eos(tokenizer, row, eos).strip() for row in generated.tolist()]
    return summaries[0] if single else summaries


# --------------------------------------------------------------------------------------------
# 5. Summarising with a causal LM: "TL;DR:"
# --------------------------------------------------------------------------------------------

TLDR_PROMPT = "{text}\n\nTL;DR:"
MANUAL_PROMPT = "Создай краткое резюме следующего текста:\n\n{text}\n\nРезюме:"


@torch.no_grad()
def tldr_summarize(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str] | str,
    prompt: str = TLDR_PROMPT,
    max_new_tokens: int = 40,
    *,
    batch_size: int = 16,
) -> list[str] | str:
    """Summaries by a causal LM that continues ``prompt`` (greedy). Chapter 08 (applications).

    ``prompt`` holds ``{text}`` once: ``TLDR_PROMPT`` (``"{text}\\n\\nTL;DR:"``) or the manual's
    ``MANUAL_PROMPT``. The prompt is encoded piece by piece (before the text, the text, after it, all as
    plain text), so that a text too long for ``context_length(model) - max_new_tokens`` is cut at its
    *end*, in tokens, and the instruction and the "TL;DR:" cue always survive. (Cutting the prompt's
    start instead would drop the manual's instruction and the text's lead.) Decoding is greedy
    (``generation.generate``) and stops at end-of-text; the summary is the decoding of the generated ids
    only (never ``decode(output)[len(prompt):]``), up to end-of-text, up to its first line break,
    stripped. A single string gives a single summary; a list gives a list.
    """
    single = isinstance(texts, str)
    texts = _check_texts([texts] if single else texts)
    check_positive_int("max_new_tokens", max_new_tokens)
    check_positive_int("batch_size", batch_size)
    check_str("prompt", prompt)
    if prompt.count("{text}") != 1:
        raise ValueError(f"prompt must contain '{{text}}' exactly once, got {prompt!r}")
    head, tail = prompt.split("{text}")
    head_ids = encode_plain(tokenizer, head) if head else []
    tail_ids = encode_plain(tokenizer, tail) if tail else []
    eos = eos_token_id(tokenizer)
    limit = context_length(model)
    budget = None
    if limit is not None:
        budget = limit - max_new_tokens - len(head_ids) - len(tail_ids)
        if budget < 1:
            raise ValueError(f"the prompt's own {len(head_ids) + len(tail_ids)} tokens plus max_new_tokens="
                             f"{max_new_tokens} leave no room for the text in the model's {limit}-token context; "
                             "ask for fewer tokens or use a shorter prompt")
    device = next(model.parameters()).device
    summaries = []
    for start in range(0, len(texts), batch_size):
        rows = [head_ids + encode_plain(tokenizer, t)[:budget] + tail_ids for t in texts[start: start + batch_size]]
        width = max(len(r) for r in rows)
        input_ids = torch.tensor([[eos] * (width - len(r)) + r for r in rows], device=device)  # left-padded
        attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        out = generate(model, input_ids, attention_mask, max_new_tokens=max_new_tokens, eos_token_id=eos,
                       pad_token_id=eos)
        for row in out[:, width:].tolist():  # the generated ids only
            text = _decode_until_eos(tokenizer, row, eos).lstrip()
            summaries.append(text.split("\n", 1)[0].strip())
    return summaries[0] if single else summaries
