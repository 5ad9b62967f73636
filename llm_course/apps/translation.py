"""English->Russian translation: a course T5, chrF, and the copy-the-source baseline. Chapter 08 (applications).

The manual's T5 is "text-to-text" (chapter 02) and its instruction-tuning example is a translation
(chapter 05). This module makes that concrete on the course's own data:

* **The task**: ``shipped_pairs("train" | "val")`` (``llm_course.text.translation_data``): 1,399 + 145
  short English->Russian messages of Django and Sphinx (``"Enter a valid URL."`` -> ``"Введите
  правильный URL."``), held out by a hash of the English text, shipped with the package.
* **The score**: chrF (Popović, 2015), the character n-gram F-score of ``sacrebleu.metrics.CHRF``:
  for n = 1..6 the character n-grams (spaces removed) of the translations and the references are
  counted over the whole corpus; precision and recall are averaged over n and combined as an F-beta
  with beta = 2 (recall weighs twice as much as precision). Characters, not words, because Russian
  inflects: "файл", "файла", "файлов" share most of their n-grams but no word. 0 to 100.
* **The baseline**: copying the English source (``copy_baseline``). Not zero: names, digits,
  placeholders and Latin words ("URL", "JSON", "%(name)s") are kept by a translation too. A translator
  that does not beat it has learned nothing about Russian.
* **The model**: a small course ``T5`` with course-gpt's tokenizer and token embeddings, trained with
  chapter 05's loop: the very recipe of course-t5-sum (``new_summarizer`` and ``summarization_tune`` are
  task-agnostic seq2seq code; only the pairs differ). ``translate`` decodes greedily (the encoder runs
  once, the decoder uses its key/value cache). ``TRANSLATION_TASK`` is the zoo plug-in that makes and
  re-scores a checkpoint (``llm-course zoo train NAME`` for a ``TunedRecipe`` with ``task="translation"``).

Measured on the 145 held-out pairs: copying the source scores chrF 16.0 (chrF++ 17.4). Cost: with an
English-only tokenizer a Russian character costs about one token (1.09 characters per token), so the
targets were ~3x longer than their sources (mean 33 vs 10 tokens; 95% <= 94) and a training step of 32
pairs with course-t5-sum's shape took 5.7 s of CPU time. The bilingual course-gpt tokenizer reads 2.59
Russian characters per token: targets average 14 tokens (95% <= 38), sources 11.5.

Not yet good enough to ship (2026-12-04, bilingual course-gpt tokenizer, batch 16, greedy, chrF on the
145 held-out pairs; copying scores 16.0): a T5 of course-t5-sum's shape from scratch reached chrF 1.8
after 250 steps and 7.7 after 1,500 (held-out loss 4.94 -> 3.82, still falling); started from
course-t5-sum's weights, 3.6 after 400 steps, the same word for every input. 1,399 pairs are few for a
model that must learn Russian and the mapping at once; the bilingual course-gpt, which already models
Russian, is the next thing to try (as an instruction-tuned translator, chapter 05's format).

Notebook use::

    from llm_course.apps.translation import copy_baseline, chrf, translate, train_translator
    from llm_course.text.translation_data import shipped_pairs

    val = shipped_pairs("val")
    copy_baseline(val)                                   # chrF of the English left as it is
    model, tok, result = train_translator(steps=300)     # a few minutes on a laptop
    chrf(translate(model, tok, [p.source for p in val]), [p.target for p in val])
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch.nn as nn

from llm_course.apps.summarization import encode_pair, summarize
from llm_course.apps.summarization_tuning import Seq2SeqCollator, new_summarizer, summarization_tune
from llm_course.core.checks import check_int, check_positive_int
from llm_course.core.deps import require
from llm_course.models.t5 import T5
from llm_course.nn.evaluation import count_labels, estimate_loss
from llm_course.text.translation_data import pair_data, shipped_pairs
from llm_course.text.translations import TranslationPair
from llm_course.train.instruct import eos_token_id
from llm_course.train.loop import TrainResult
from llm_course.zoo.loading import load_pretrained
from llm_course.zoo.recipes import TaskFunctions, TunedRecipe

__all__ = [
    "MAX_SOURCE_TOKENS",
    "MAX_NEW_TOKENS",
    "chrf",
    "copy_baseline",
    "translate",
    "MODEL_OPTIONS",
    "train_translator",
    "held_out_loss",
    "tune",
    "measure",
    "TRANSLATION_TASK",
]

MAX_SOURCE_TOKENS = 160  # the longest English message is 134 course-gpt tokens (122 before): no source is cut
MAX_NEW_TOKENS = 160  # the longest Russian reference is 147 tokens of the bilingual tokenizer (316 before)


# --------------------------------------------------------------------------------------------
# 1. The score: chrF, and the copy-the-source baseline
# --------------------------------------------------------------------------------------------


def _check_strings(name: str, values: Any) -> list[str]:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a list of strings, got {type(values).__name__}")
    bad = [i for i, v in enumerate(values) if not isinstance(v, str)]
    if bad:
        raise TypeError(f"{name}[{bad[0]}] is a {type(values[bad[0]]).__name__}, not a string")
    return list(values)


def chrf(predictions: Sequence[str], references: Sequence[str], *, word_order: int = 0) -> float:
    """Corpus-level chrF (0-100) of ``predictions`` against one reference each. Chapter 08 (applications).

    ``sacrebleu.metrics.CHRF`` with its defaults: character n-grams n = 1..6 (white space removed),
    their counts summed over the corpus, precision and recall averaged over the orders both sides
    have, F-beta with beta = 2. ``word_order=2`` adds word unigrams and bigrams (chrF++). Needs the
    ``sacrebleu`` package (``MissingDependencyError`` says how to install it).
    """
    predictions = _check_strings("predictions", predictions)
    references = _check_strings("references", references)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references: one prediction per "
                         "reference, in the same order")
    if not predictions:
        raise ValueError("no predictions: chrF of an empty list is undefined")
    check_int("word_order", word_order, 0, 2, hint="0 for chrF, 2 for chrF++")
    metrics = require("sacrebleu.metrics", "sacrebleu")
    return float(metrics.CHRF(word_order=word_order).corpus_score(predictions, [references]).score)


def _sources_and_targets(pairs: Any) -> tuple[list[str], list[str]]:
    """``(sources, targets)`` of ``TranslationPair``s or ``(source, target)`` tuples."""
    if isinstance(pairs, str) or not isinstance(pairs, Sequence):
        raise TypeError(f"pairs must be a list of TranslationPair (or (source, target) tuples), "
                        f"got {type(pairs).__name__}")
    if not pairs:
        raise ValueError("pairs is empty: pass at least one (source, target) pair")
    rows = [(p.source, p.target) if isinstance(p, TranslationPair) else tuple(p) for p in pairs]
    if any(len(r) != 2 for r in rows):
        raise ValueError("each pair must be a TranslationPair or a (source, target) tuple")
    return [r[0] for r in rows], [r[1] for r in rows]


def copy_baseline(pairs: Sequence[TranslationPair | tuple[str, str]]) -> float:
    """chrF of the English sources left untranslated, against the Russian references. Chapter 08.

    The floor a translator must clear: what it scores for free (shared names, digits, placeholders).
    """
    sources, targets = _sources_and_targets(pairs)
    return chrf(sources, targets)


# --------------------------------------------------------------------------------------------
# 2. Translating: greedy decoding with a seq2seq model
# --------------------------------------------------------------------------------------------


def translate(model: nn.Module, tokenizer: Any, texts: Sequence[str] | str, max_new_tokens: int = MAX_NEW_TOKENS,
              *, max_source_tokens: int = MAX_SOURCE_TOKENS, batch_size: int = 32) -> list[str] | str:
    """Greedy translations of ``texts`` by a seq2seq ``model`` (course ``T5`` or transformers'). Chapter 08.

    Each text is encoded as plain text (its first ``max_source_tokens - 1`` tokens) + end-of-text; the
    decoder starts from its start token and takes the most likely token each step until end-of-text or
    ``max_new_tokens``; the translation is the decoding of the generated ids, stripped. The decoding
    loop is ``summarization.summarize``'s: nothing in it is specific to summaries. A single string
    gives a single translation; a list gives a list.
    """
    single = isinstance(texts, str)
    rows = _check_strings("texts", [texts] if single else texts)
    if not rows:
        raise ValueError("texts is empty: pass at least one English text to translate")
    empty = [i for i, t in enumerate(rows) if not t.strip()]
    if empty:
        raise ValueError(f"texts[{empty[0]}] is empty (or only white space): there is nothing to translate")
    check_positive_int("max_new_tokens", max_new_tokens)
    out = summarize(model, tokenizer, rows, max_new_tokens, max_source_tokens=max_source_tokens,
                    batch_size=batch_size)
    return out[0] if single else out


# --------------------------------------------------------------------------------------------
# 3. Training a translator: course-t5-sum's recipe on the translation pairs
# --------------------------------------------------------------------------------------------


# new_summarizer's keyword arguments that shape the model (the rest of train_translator's go to the loop)
MODEL_OPTIONS = ("d_model", "num_layers", "num_decoder_layers", "num_heads", "d_ff", "dropout_rate")


def train_translator(steps: int = 300, batch_size: int = 32, lr: float = 3e-3, *, init_embeddings: bool = True,
                     max_source_tokens: int = MAX_SOURCE_TOKENS, seed: int = 0, progress: bool = True,
                     base: str = "course-gpt", **options: Any) -> tuple[T5, Any, TrainResult]:
    """Train an English->Russian course ``T5`` from scratch: ``(model, tokenizer, result)``. Chapter 08.

    course-t5-sum's recipe on other pairs: ``base``'s tokenizer and a T5 made by ``new_summarizer``
    (its defaults: 3 + 3 layers, d_model 160, 4 heads, d_ff 512, dropout 0.1; change them by name in
    ``options``: ``d_model=32``...), its shared embedding started from ``base``'s token embeddings when
    ``init_embeddings`` (d_model must match: 160 for course-gpt); trained with ``summarization_tune`` on
    ``shipped_pairs("train")`` (``steps`` AdamW updates of ``batch_size`` pairs, peak ``lr``), its loss
    on ``shipped_pairs("val")`` measured at the end. The other ``options`` are ``TrainConfig`` fields
    (``callbacks``...). The model is returned in eval mode, on the CPU.
    """
    shape = {name: options.pop(name) for name in MODEL_OPTIONS if name in options}
    gpt, tokenizer = load_pretrained(base)
    model = new_summarizer(tokenizer, embeddings_from=gpt if init_embeddings else None, seed=seed, **shape)
    result = summarization_tune(model, tokenizer, _pairs("train"), steps, batch_size, lr, eval_pairs=_pairs("val"),
                                max_source_tokens=max_source_tokens, seed=seed, progress=progress, **options)
    return model.cpu().eval(), tokenizer, result


def _pairs(split: str) -> list[tuple[str, str]]:
    return [(p.source, p.target) for p in shipped_pairs(split)]


# --------------------------------------------------------------------------------------------
# 4. The zoo's plug-in: make and re-score a translation checkpoint
# --------------------------------------------------------------------------------------------

_TUNE_OPTIONS = {"d_model": 160, "num_layers": 3, "num_heads": 4, "d_ff": 512, "dropout_rate": 0.1,
                 "init_embeddings": True, "max_source_tokens": MAX_SOURCE_TOKENS}


def _options(recipe: TunedRecipe) -> dict[str, Any]:
    unknown = sorted(set(recipe.options) - set(_TUNE_OPTIONS))
    if unknown:
        raise ValueError(f"unknown translation recipe options {unknown}; the task takes {sorted(_TUNE_OPTIONS)}")
    return {**_TUNE_OPTIONS, **recipe.options}


def held_out_loss(model: nn.Module, tokenizer: Any, recipe: TunedRecipe) -> float:
    """Mean loss per Russian token (end-of-text included) on held-out pairs. Chapter 08 (applications).

    The first ``recipe.eval_examples`` of ``shipped_pairs("val")``, in batches of 32, weighted by the
    tokens each batch scores (``estimate_loss`` with ``count_labels``): what metrics.json records and
    ``llm-course zoo eval`` re-scores.
    """
    max_source_tokens = _options(recipe)["max_source_tokens"]
    encoded = [encode_pair(tokenizer, p, max_source_tokens) for p in _pairs("val")[: recipe.eval_examples]]
    collate = Seq2SeqCollator(eos_token_id(tokenizer))
    batches = [collate(encoded[i : i + 32]) for i in range(0, len(encoded), 32)]
    return estimate_loss(model, batches, count_tokens=count_labels)["loss"]


def tune(recipe: TunedRecipe, progress: bool = True,
         callbacks: Sequence[Any] | None = None) -> tuple[nn.Module, Any, dict]:
    """Make the model of a translation ``TunedRecipe``: ``train_translator`` with its settings. Chapter 08.

    Returns ``(model, tokenizer, info)`` for ``llm_course.zoo.build.train_checkpoint``.
    """
    options = _options(recipe)
    t0 = time.perf_counter()
    model, tokenizer, result = train_translator(recipe.steps, recipe.batch_size, recipe.lr, seed=recipe.seed,
                                                progress=progress, base=recipe.base, callbacks=callbacks, **options)
    data = pair_data()
    described = {"train": "shipped_pairs('train'): English->Russian messages of Django and Sphinx "
                          "(llm_course/text/data/translation_pairs_ru.json)",
                 "packages": {p["name"]: p["version"] for p in data["packages"]},
                 "train_pairs": data["counts"]["train"], "val_pairs": data["counts"]["val"],
                 "held_out": f"the first {recipe.eval_examples} of shipped_pairs('val') ({data['split']})"}
    last = result.losses[-50:]
    return model, tokenizer, {"result": result, "train_seconds": time.perf_counter() - t0, "data": described,
                              "metrics": {"train_loss_last_50": sum(last) / len(last)}}


def measure(model: nn.Module, tokenizer: Any, recipe: TunedRecipe) -> dict[str, Any]:
    """metrics.json of a translator: held-out loss, and chrF on every held-out pair vs copying. Chapter 08."""
    val = shipped_pairs("val")
    references = [p.target for p in val]
    translations = translate(model, tokenizer, [p.source for p in val],
                             max_source_tokens=_options(recipe)["max_source_tokens"])
    return {"held_out": {"loss": held_out_loss(model, tokenizer, recipe),
                         "what": "mean loss per Russian token on held-out pairs (held_out_loss)"},
            "chrf_val": {"pairs": len(val), "what": "corpus chrF (sacrebleu CHRF defaults: n = 1..6, beta = 2), "
                         "greedy translations", "model": round(chrf(translations, references), 2),
                         "copy_baseline": round(copy_baseline(val), 2)},
            "samples": [{"source": p.source, "target": p.target, "translation": t}
                        for p, t in zip(val[:5], translations[:5])]}


# The zoo's plug-in: ``train_checkpoint(recipe, task=TRANSLATION_TASK)`` calls these three functions.
TRANSLATION_TASK = TaskFunctions("translation", tune, measure, held_out_loss)
