"""English->Russian translation: an instruction-tuned course-gpt, chrF, and the copy-the-source baseline. Chapter 08.

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
* **The model** (the zoo's ``course-gpt-translate``): the bilingual course-gpt instruction-tuned on the
  pairs in chapter 05's format (``translation_instruction``: instruction "Translate to Russian.", the
  English text as input, the Russian as response; prompt masked, end-of-text learned). ``translate``
  decodes greedily until end-of-text. ``TRANSLATION_TASK`` is the zoo plug-in that makes and re-scores
  it (``llm-course zoo train course-gpt-translate``).

Measured on the 145 held-out pairs (2026-12-05, 2 CPU cores, greedy): copying the source scores chrF
16.0 (chrF++ 17.4); course-gpt tuned for 600 steps of 16 pairs at lr 3e-3 (about 7 passes over the
pairs, 8 to 9 minutes on two busy cores) scores 22.8 (held-out loss 3.40 nats per Russian token;
training loss 1.2: it has begun to memorise). It gets the frame of a message right ("Убедитесь, что
это значение ...") and guesses at words it never saw ("Khmer" -> "К"): what 1,399 pairs can teach.
Placeholders are its weak point: ``placeholders_kept`` finds all of them kept in 18 of the 51 held-out
messages that have any (31 of 75 placeholders); a real pipeline would check them, as
``text.translations`` checks the training pairs.

**Why not a T5?** ``train_translator(architecture="t5")`` trains course-t5-sum's recipe (a T5 of 3 + 3
layers, d_model 160, with course-gpt's tokenizer and token embeddings) on the same pairs. From scratch it
reached chrF 1.8 after 250 steps and 7.7 after 1,500 (held-out loss 4.94 -> 3.82), below copying; started
from course-t5-sum's weights, 3.6 after 400 steps, the same word for every input. A T5 trained on
1,399 pairs must learn Russian and the mapping at once; course-gpt already models both languages (it
was pretrained on English docs and Russian man pages), so the pairs only have to teach the mapping.

Notebook use::

    from llm_course.apps.translation import copy_baseline, chrf, translate
    from llm_course.text.translation_data import shipped_pairs
    from llm_course.zoo.loading import load_pretrained

    val = shipped_pairs("val")
    copy_baseline(val)                                   # chrF of the English left as it is: 16.0
    model, tok = load_pretrained("course-gpt-translate")
    chrf(translate(model, tok, [p.source for p in val]), [p.target for p in val])     # 22.8
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch.nn as nn

from llm_course.apps.chat_eval import reply_loss
from llm_course.apps.summarization import encode_pair, summarize
from llm_course.apps.summarization_tuning import Seq2SeqCollator, new_summarizer, summarization_tune
from llm_course.core.checks import check_choice, check_int, check_positive_int
from llm_course.core.deps import require
from llm_course.models.gpt import GPT
from llm_course.models.modeling import context_length, is_encoder_decoder
from llm_course.nn.evaluation import count_labels, estimate_loss
from llm_course.text.translation_data import pair_data, shipped_pairs
from llm_course.text.translations import TranslationPair, placeholders
from llm_course.train.instruct import answer, encode_instruction, eos_token_id, instruction_tune
from llm_course.train.instructions import Instruction
from llm_course.train.loop import TrainResult
from llm_course.zoo.loading import load_pretrained
from llm_course.zoo.recipes import TaskFunctions, TunedRecipe

__all__ = [
    "MAX_SOURCE_TOKENS",
    "MAX_NEW_TOKENS",
    "INSTRUCTION",
    "ARCHITECTURES",
    "chrf",
    "copy_baseline",
    "placeholders_kept",
    "translation_instruction",
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
INSTRUCTION = "Translate to Russian."  # the instruction of every example (chapter 05's Alpaca format)
ARCHITECTURES = ("gpt", "t5")  # what train_translator can tune: an instruction-tuned GPT, or a seq2seq T5


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


def placeholders_kept(sources: Sequence[str], translations: Sequence[str]) -> dict[str, int]:
    """How many messages with placeholders (``%s``, ``%(name)s``, ``{x}``) kept all of them. Chapter 08.

    A translation that drops or changes ``%(name)s`` breaks the program that formats it, whatever its
    chrF. Returns ``{"messages": sources with at least one placeholder, "all_kept": of those, translations
    with exactly the same multiset (``text.translations.placeholders``), "placeholders": their total,
    "kept": how many of them appear in the translation}``.
    """
    sources, translations = _check_strings("sources", sources), _check_strings("translations", translations)
    if len(sources) != len(translations):
        raise ValueError(f"{len(sources)} sources but {len(translations)} translations: one each, in the same order")
    counts = {"messages": 0, "all_kept": 0, "placeholders": 0, "kept": 0}
    for source, translation in zip(sources, translations):
        wanted, got = placeholders(source), placeholders(translation)
        if wanted:
            counts["messages"] += 1
            counts["all_kept"] += wanted == got
            counts["placeholders"] += sum(wanted.values())
            counts["kept"] += sum((wanted & got).values())
    return counts


# --------------------------------------------------------------------------------------------
# 2. Translating: an instruction to a GPT, or a source to a seq2seq model
# --------------------------------------------------------------------------------------------


def translation_instruction(source: str, target: str = "") -> Instruction:
    """One pair as chapter 05's instruction example: ``INSTRUCTION``, the English as input, the Russian
    as the response (``""`` when only the prompt is needed). Chapter 08 (applications)."""
    return Instruction(INSTRUCTION, source, target, task="translate_en_ru", language="en")


def _is_causal_lm(model: nn.Module) -> bool:
    """A course GPT or a transformers decoder-only LM (not an encoder-decoder)."""
    if isinstance(model, GPT):
        return True
    return getattr(model, "config", None) is not None and hasattr(model, "generate") and not is_encoder_decoder(model)


def translate(model: nn.Module, tokenizer: Any, texts: Sequence[str] | str, max_new_tokens: int = MAX_NEW_TOKENS,
              *, max_source_tokens: int = MAX_SOURCE_TOKENS, batch_size: int = 32) -> list[str] | str:
    """Greedy English->Russian translations of ``texts``. Chapter 08 (applications).

    A causal LM (course-gpt-translate, or any GPT tuned on ``translation_instruction`` examples) gets
    each text in chapter 05's prompt (``instruct.answer``: left-padded batches, greedy until end-of-text
    or ``max_new_tokens``; the translation is the decoding of the new ids). A seq2seq model (course
    ``T5`` or transformers') gets the text itself (its first ``max_source_tokens - 1`` tokens +
    end-of-text), decoded with ``summarization.summarize``'s loop. A single string gives a single
    translation; a list gives a list.
    """
    single = isinstance(texts, str)
    rows = _check_strings("texts", [texts] if single else texts)
    if not rows:
        raise ValueError("texts is empty: pass at least one English text to translate")
    empty = [i for i, t in enumerate(rows) if not t.strip()]
    if empty:
        raise ValueError(f"texts[{empty[0]}] is empty (or only white space): there is nothing to translate")
    check_positive_int("max_new_tokens", max_new_tokens)
    if not isinstance(model, nn.Module) or not (is_encoder_decoder(model) or _is_causal_lm(model)):
        raise TypeError(f"model must be a causal LM (course-gpt-translate, a GPT) or a seq2seq model (a T5), "
                        f"got {type(model).__name__}")
    if _is_causal_lm(model):
        out = [t.strip() for t in answer(model, tokenizer, [translation_instruction(t) for t in rows],
                                         max_new_tokens=max_new_tokens, batch_size=batch_size)]
    else:
        out = summarize(model, tokenizer, rows, max_new_tokens, max_source_tokens=max_source_tokens,
                        batch_size=batch_size)
    return out[0] if single else out


# --------------------------------------------------------------------------------------------
# 3. Training a translator: course-gpt instruction-tuned (or a T5, for comparison)
# --------------------------------------------------------------------------------------------


# new_summarizer's keyword arguments that shape a T5 (the rest of train_translator's go to the loop)
MODEL_OPTIONS = ("d_model", "num_layers", "num_decoder_layers", "num_heads", "d_ff", "dropout_rate")


def _pairs(split: str) -> list[tuple[str, str]]:
    return [(p.source, p.target) for p in shipped_pairs(split)]


def _instructions(split: str) -> list[Instruction]:
    return [translation_instruction(p.source, p.target) for p in shipped_pairs(split)]


def train_translator(steps: int = 600, batch_size: int = 16, lr: float = 3e-3, *, architecture: str = "gpt",
                     base: str = "course-gpt", init_embeddings: bool = True,
                     max_source_tokens: int = MAX_SOURCE_TOKENS, seed: int = 0, progress: bool = True,
                     **options: Any) -> tuple[nn.Module, Any, TrainResult]:
    """Train an English->Russian translator on ``shipped_pairs("train")``: ``(model, tokenizer, result)``. Ch. 08.

    ``architecture="gpt"`` (course-gpt-translate's recipe): ``base`` (a zoo name, folder or Hub id of a
    causal LM) instruction-tuned with ``instruct.instruction_tune`` on ``translation_instruction`` examples:
    ``steps`` AdamW updates of ``batch_size`` pairs, peak ``lr``, the response loss on
    ``shipped_pairs("val")`` measured at the end.

    ``architecture="t5"`` (the comparison in the module docstring): course-t5-sum's recipe on these
    pairs: ``base``'s tokenizer and a T5 made by ``new_summarizer`` (3 + 3 layers, d_model 160, 4 heads,
    d_ff 512, dropout 0.1; change them by name in ``options``: ``d_model=32``...), its shared embedding
    started from ``base``'s token embeddings when ``init_embeddings`` (d_model must match), trained with
    ``summarization_tune``. The T5's shape options are refused for a GPT.

    The other ``options`` are ``TrainConfig`` fields (``callbacks``...). The model is returned in eval
    mode, on the CPU.
    """
    check_choice("architecture", architecture, ARCHITECTURES)
    shape = {name: options.pop(name) for name in MODEL_OPTIONS if name in options}
    model, tokenizer = load_pretrained(base)
    if architecture == "gpt":
        if shape:
            raise ValueError(f"{sorted(shape)} shape a T5; architecture='gpt' tunes {base} as it is")
        result = instruction_tune(model, tokenizer, _instructions("train"), steps, batch_size, lr,
                                  eval_examples=_instructions("val"), seed=seed, progress=progress, **options)
    else:
        model = new_summarizer(tokenizer, embeddings_from=model if init_embeddings else None, seed=seed, **shape)
        result = summarization_tune(model, tokenizer, _pairs("train"), steps, batch_size, lr,
                                    eval_pairs=_pairs("val"), max_source_tokens=max_source_tokens, seed=seed,
                                    progress=progress, **options)
    return model.cpu().eval(), tokenizer, result


# --------------------------------------------------------------------------------------------
# 4. The zoo's plug-in: make and re-score a translation checkpoint
# --------------------------------------------------------------------------------------------

_TUNE_OPTIONS = {"architecture": "gpt", "max_source_tokens": MAX_SOURCE_TOKENS}
_T5_OPTIONS = {"d_model": 160, "num_layers": 3, "num_heads": 4, "d_ff": 512, "dropout_rate": 0.1,
               "init_embeddings": True}


def _options(recipe: TunedRecipe) -> dict[str, Any]:
    architecture = recipe.options.get("architecture", _TUNE_OPTIONS["architecture"])
    check_choice("architecture", architecture, ARCHITECTURES)
    allowed = {**_TUNE_OPTIONS, **(_T5_OPTIONS if architecture == "t5" else {})}
    unknown = sorted(set(recipe.options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown translation recipe options {unknown}; with architecture={architecture!r} the "
                         f"task takes {sorted(allowed)}")
    return {**allowed, **recipe.options}


def held_out_loss(model: nn.Module, tokenizer: Any, recipe: TunedRecipe) -> float:
    """Mean loss per Russian token (end-of-text included) on held-out pairs. Chapter 08 (applications).

    The first ``recipe.eval_examples`` of ``shipped_pairs("val")``, encoded as they are trained: for a
    GPT the response tokens of ``translation_instruction`` examples (``chat_eval.reply_loss``), for a T5
    the target tokens (``estimate_loss`` with ``count_labels``, batches of 32). What metrics.json records
    and ``llm-course zoo eval`` re-scores.
    """
    options = _options(recipe)
    if _is_causal_lm(model):
        max_length = context_length(model) or 1024
        encoded = [encode_instruction(tokenizer, ex, max_length) for ex in _instructions("val")[: recipe.eval_examples]]
        return reply_loss(model, encoded, eos_token_id(tokenizer))[0]
    encoded = [encode_pair(tokenizer, p, options["max_source_tokens"]) for p in _pairs("val")[: recipe.eval_examples]]
    collate = Seq2SeqCollator(eos_token_id(tokenizer))
    batches = [collate(encoded[i : i + 32]) for i in range(0, len(encoded), 32)]
    return estimate_loss(model, batches, count_tokens=count_labels)["loss"]


def tune(recipe: TunedRecipe, progress: bool = True,
         callbacks: Sequence[Any] | None = None) -> tuple[nn.Module, Any, dict]:
    """Make the model of a translation ``TunedRecipe``: ``train_translator`` with its settings. Chapter 08.

    Returns ``(model, tokenizer, info)`` for ``llm_course.zoo.build.train_checkpoint``.
    """
    options = _options(recipe)
    if options["architecture"] == "gpt" and recipe.kind != "causal-lm":
        raise ValueError(f"recipe {recipe.name!r}: architecture 'gpt' makes a causal-lm, not a {recipe.kind}")
    if options["architecture"] == "t5" and recipe.kind != "seq2seq-lm":
        raise ValueError(f"recipe {recipe.name!r}: architecture 't5' makes a seq2seq-lm, not a {recipe.kind}")
    t0 = time.perf_counter()
    model, tokenizer, result = train_translator(recipe.steps, recipe.batch_size, recipe.lr, seed=recipe.seed,
                                                progress=progress, base=recipe.base, callbacks=callbacks, **options)
    data = pair_data()
    described = {"train": "shipped_pairs('train'): English->Russian messages of Django and Sphinx "
                          "(llm_course/text/data/translation_pairs_ru.json)"
                          + (f", as translation_instruction examples ({INSTRUCTION!r})"
                             if options["architecture"] == "gpt" else ""),
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
            "placeholders_val": {**placeholders_kept([p.source for p in val], translations),
                                 "what": "held-out messages with placeholders, and how many kept all of them"},
            "samples": [{"source": p.source, "target": p.target, "translation": t}
                        for p, t in zip(val[:8], translations[:8])]}


# The zoo's plug-in: ``train_checkpoint(recipe, task=TRANSLATION_TASK)`` calls these three functions.
TRANSLATION_TASK = TaskFunctions("translation", tune, measure, held_out_loss)
