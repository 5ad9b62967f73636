"""Training a summarizer, and the zoo's summarization task (course-t5-sum). Chapter 08 (applications).

``new_summarizer`` builds a small course ``T5`` for the course tokenizer (its shared embedding may
start from course-gpt's), ``summarization_tune`` trains any seq2seq model on ``encode_pair``-ed pairs
(``Seq2SeqCollator`` pads sources and targets separately) with chapter 05's loop, and
``train_summarizer`` is the whole ``course-t5-sum`` recipe. ``SUMMARIZATION_TASK`` is the
``llm_course.zoo.recipes.ZooTask`` that makes and re-scores the shipped checkpoint (``llm-course zoo
train course-t5-sum``). The task, ROUGE and decoding are in ``llm_course.apps.summarization``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from llm_course.apps.summarization import (
    MAX_SOURCE_TOKENS,
    SUMMARY_TEST_SHARE,
    SummaryPair,
    encode_pair,
    lead_baseline,
    rouge_scores,
    summarize,
    summary_pairs,
)
from llm_course.core.checks import check_int
from llm_course.models.t5 import T5, T5Config
from llm_course.nn.objectives import IGNORE_INDEX
from llm_course.train.instruct import eos_token_id, tune_encoded
from llm_course.train.loop import TrainResult
from llm_course.zoo.loading import load_pretrained
from llm_course.zoo.recipes import TaskFunctions, TunedRecipe

__all__ = [
    "new_summarizer",
    "Seq2SeqCollator",
    "summarization_tune",
    "train_summarizer",
    "held_out_loss",
    "tune",
    "measure",
    "SUMMARIZATION_TASK",
]


# --------------------------------------------------------------------------------------------
# A small course T5 for the course tokenizer
# --------------------------------------------------------------------------------------------


def _vocab_size(tokenizer: Any) -> int:
    size = getattr(tokenizer, "vocab_size", None)
    size = size() if callable(size) else size
    return int(len(tokenizer) if hasattr(tokenizer, "__len__") else size)


def new_summarizer(
    tokenizer: Any,
    *,
    d_model: int = 160,
    num_layers: int = 3,
    num_decoder_layers: int | None = None,
    num_heads: int = 4,
    d_ff: int = 512,
    dropout_rate: float = 0.1,
    embeddings_from: nn.Module | None = None,
    seed: int = 0,
) -> T5:
    """A freshly initialised course ``T5`` for ``tokenizer``. Chapter 08 (applications).

    pad = eos = decoder start = the tokenizer's end-of-text id (the course tokenizer has one special
    token, ``<|endoftext|>``; transformers' T5 also starts the decoder with its pad token). d_kv =
    d_model / num_heads, relu feed-forward (T5 v1.0). ``embeddings_from``: a model whose input token
    embedding (``get_input_embeddings()`` or ``wte``: course-gpt's is 4096 x 160) initialises the
    shared embedding, rescaled to T5's std of 1 (then d_model must match it).
    """
    eos = eos_token_id(tokenizer)
    if d_model % num_heads:
        raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
    config = T5Config(
        vocab_size=_vocab_size(tokenizer), d_model=d_model, d_kv=d_model // num_heads, d_ff=d_ff,
        num_layers=num_layers, num_decoder_layers=num_decoder_layers, num_heads=num_heads,
        dropout_rate=dropout_rate, pad_token_id=eos, eos_token_id=eos, decoder_start_token_id=eos,
    )
    torch.manual_seed(seed)
    model = T5(config)
    if embeddings_from is not None:
        table = embeddings_from.get_input_embeddings() if hasattr(embeddings_from, "get_input_embeddings") \
            else getattr(embeddings_from, "wte", None)
        if not isinstance(table, nn.Embedding):
            raise TypeError(f"embeddings_from must have a token embedding (get_input_embeddings() or .wte), "
                            f"got {type(embeddings_from).__name__}")
        weight = table.weight.detach().float()
        if tuple(weight.shape) != tuple(model.shared.weight.shape):
            raise ValueError(f"embeddings_from has a {tuple(weight.shape)} embedding, this T5 needs "
                             f"{tuple(model.shared.weight.shape)} (vocab_size, d_model)")
        with torch.no_grad():
            model.shared.weight.copy_(weight / weight.std())  # T5 initialises its embedding with std 1
    return model


# --------------------------------------------------------------------------------------------
# Training: batches of encoded pairs
# --------------------------------------------------------------------------------------------


class Seq2SeqCollator:
    """Pads encoded pairs into a batch, on the right. Chapter 08 (applications).

    Unlike a causal LM's examples, the source and the target differ in length: ``input_ids`` /
    ``attention_mask`` are padded to the longest source (pad id / 0), ``labels`` to the longest target
    with -100 (no loss on padding).
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = check_int("pad_token_id", pad_token_id, 0)

    def __call__(self, features: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty list of pairs")

        def pad(key: str, value: int) -> torch.Tensor:
            width = max(len(f[key]) for f in features)
            return torch.tensor([list(f[key]) + [value] * (width - len(f[key])) for f in features], dtype=torch.long)

        return {"input_ids": pad("input_ids", self.pad_token_id), "attention_mask": pad("attention_mask", 0),
                "labels": pad("labels", IGNORE_INDEX)}


def summarization_tune(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[SummaryPair | tuple[str, str]],
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 3e-3,
    *,
    eval_pairs: Sequence[SummaryPair | tuple[str, str]] | None = None,
    max_source_tokens: int = MAX_SOURCE_TOKENS,
    seed: int = 0,
    **train_config: Any,
) -> TrainResult:
    """Train a seq2seq ``model`` (course ``T5`` or transformers') to write the targets. Chapter 08 (applications).

    Each pair is ``encode_pair``-ed; ``steps`` AdamW updates on shuffled batches of ``batch_size``
    (``Seq2SeqCollator``) with ``training.train``: 10% warmup, cosine decay to ``lr / 10``, no weight
    decay. ``eval_pairs``: held-out pairs whose summary loss is measured every ``eval_interval`` steps
    (default: once, at the end). Other ``TrainConfig`` fields by name (``progress=False``...). Returns
    the ``TrainResult``; the model is left in eval mode.
    """
    check_int("steps", steps, 1)
    check_int("batch_size", batch_size, 1)
    if isinstance(pairs, str) or not isinstance(pairs, Sequence):
        raise TypeError(f"pairs must be a list of SummaryPair (or (source, target) tuples), got {type(pairs).__name__}")
    if not pairs:
        raise ValueError("pairs must be a non-empty list of SummaryPair (or (source, target) tuples)")
    encoded = [encode_pair(tokenizer, p, max_source_tokens) for p in pairs]
    held_out = None
    if eval_pairs is not None:
        held_out = [encode_pair(tokenizer, p, max_source_tokens) for p in eval_pairs]
    eos = eos_token_id(tokenizer)
    return tune_encoded(model, encoded, eos, steps, batch_size, lr, eval_encoded=held_out, seed=seed,
                        collate=Seq2SeqCollator(eos), **train_config)


# --------------------------------------------------------------------------------------------
# The course-t5-sum recipe
# --------------------------------------------------------------------------------------------


def train_summarizer(
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 3e-3,
    *,
    d_model: int = 160,
    num_layers: int = 3,
    num_heads: int = 4,
    d_ff: int = 512,
    dropout_rate: float = 0.1,
    init_embeddings: bool = True,
    max_source_tokens: int = MAX_SOURCE_TOKENS,
    seed: int = 0,
    progress: bool = True,
    base: str = "course-gpt",
    **train_config: Any,
) -> tuple[T5, Any, TrainResult]:
    """Train the ``course-t5-sum`` summariser from scratch: ``(model, tokenizer, result)``. Chapter 08.

    A course ``T5`` (``new_summarizer``) with course-gpt's tokenizer, trained with
    ``summarization_tune`` on ``summary_pairs("train")``, its summary loss measured on
    ``summary_pairs("test")`` at the end. ``init_embeddings``: start the shared embedding from
    course-gpt's token embeddings (d_model must be 160). The defaults are the recipe measured in this
    module's docstring: a 2.6 M-parameter T5 (3 + 3 layers, d_model 160, 4 heads, d_ff 512), 300 steps
    of 32 pairs at lr 3e-3 (10% warmup, cosine to 3e-4), sources cut to 64 tokens; 327 s of CPU time on
    one thread (886 s wall on a machine shared with other jobs, load average about 8), held-out loss
    4.84. The model is returned in eval mode, on the CPU.
    """
    gpt, tokenizer = load_pretrained(base)
    model = new_summarizer(tokenizer, d_model=d_model, num_layers=num_layers, num_heads=num_heads, d_ff=d_ff,
                           dropout_rate=dropout_rate, embeddings_from=gpt if init_embeddings else None, seed=seed)
    result = summarization_tune(model, tokenizer, summary_pairs("train"), steps, batch_size, lr,
                                eval_pairs=summary_pairs("test"), max_source_tokens=max_source_tokens, seed=seed,
                                progress=progress, **train_config)
    return model.cpu().eval(), tokenizer, result


# --------------------------------------------------------------------------------------------
# The shipped summarizer: course-t5-sum (made by ``llm-course zoo train course-t5-sum``)
# --------------------------------------------------------------------------------------------

_TUNE_OPTIONS = {"d_model": 160, "num_layers": 3, "num_heads": 4, "d_ff": 512, "dropout_rate": 0.1,
                 "init_embeddings": True, "max_source_tokens": 64}


def _options(recipe: TunedRecipe) -> dict[str, Any]:
    unknown = sorted(set(recipe.options) - set(_TUNE_OPTIONS))
    if unknown:
        raise ValueError(f"unknown summarization recipe options {unknown}; the task takes {sorted(_TUNE_OPTIONS)}")
    return {**_TUNE_OPTIONS, **recipe.options}


@torch.no_grad()
def held_out_loss(model: nn.Module, tokenizer: Any, recipe: TunedRecipe) -> float:
    """Mean loss per summary token (end-of-text included) on held-out pairs. Chapter 08 (applications).

    The first ``recipe.eval_examples`` of ``summary_pairs("test")``: what course-t5-sum's metrics.json
    records and ``llm-course zoo eval`` re-scores.
    """
    options = _options(recipe)
    encoded = [encode_pair(tokenizer, p, options["max_source_tokens"])
               for p in summary_pairs("test")[: recipe.eval_examples]]
    collate = Seq2SeqCollator(eos_token_id(tokenizer))
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(encoded), 32):
        batch = collate(encoded[i : i + 32])
        n = int((batch["labels"] != IGNORE_INDEX).sum())
        total += float(model(**batch).loss) * n
        count += n
    return total / count


def tune(recipe: TunedRecipe, progress: bool = True,
         callbacks: Sequence[Any] | None = None) -> tuple[nn.Module, Any, dict]:
    """Make the model of a summarization ``TunedRecipe`` (course-t5-sum). Chapter 08 (applications).

    ``train_summarizer`` with the recipe's steps, batch size, learning rate, seed and options; the base's
    tokenizer (and token embeddings). Returns ``(model, tokenizer, info)`` for
    ``llm_course.zoo.build.train_checkpoint``.
    """
    options = _options(recipe)
    t0 = time.perf_counter()
    model, tokenizer, result = train_summarizer(recipe.steps, recipe.batch_size, recipe.lr, seed=recipe.seed,
                                                progress=progress, base=recipe.base, callbacks=callbacks,
                                                **options)
    data = {"train": "summary_pairs('train'): a docs entry's title + body without its first sentence -> that "
                     "sentence", "train_pairs": len(summary_pairs("train")), "test_pairs": len(summary_pairs("test")),
            "held_out": f"the first {recipe.eval_examples} of summary_pairs('test') (1 entry in "
                        f"{SUMMARY_TEST_SHARE}, by hash)"}
    return model, tokenizer, {"result": result, "train_seconds": time.perf_counter() - t0, "data": data,
                              "metrics": {"train_loss_last_50": sum(result.losses[-50:]) / len(result.losses[-50:])}}


def measure(model: nn.Module, tokenizer: Any, recipe: TunedRecipe) -> dict[str, Any]:
    """metrics.json of a summarizer: held-out loss, ROUGE on the whole test split vs the lead baseline."""
    options = _options(recipe)
    test = summary_pairs("test")
    references = [p.target for p in test]
    predictions = summarize(model, tokenizer, [p.source for p in test], max_source_tokens=options["max_source_tokens"])
    scale = lambda scores: {k: round(100 * v, 2) for k, v in scores.items()}  # noqa: E731
    return {"held_out": {"loss": held_out_loss(model, tokenizer, recipe),
                         "what": "mean loss per summary token on held-out pairs (held_out_loss)"},
            "rouge_test": {"pairs": len(test), "what": "mean F1 x 100, rouge-score's default tokenizer",
                           "model": scale(rouge_scores(predictions, references)),
                           "lead_baseline": scale(rouge_scores([lead_baseline(p.source) for p in test], references))},
            "samples": [{"source": p.source, "target": p.target, "summary": s}
                        for p, s in zip(test[:3], predictions[:3])]}



# The zoo's plug-in: ``train_checkpoint("course-...", task=SUMMARIZATION_TASK)`` calls these three functions.
SUMMARIZATION_TASK = TaskFunctions("summarization", tune, measure, held_out_loss)
