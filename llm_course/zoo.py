"""The course's model zoo: small pretrained checkpoints shipped with the package. Chapter 04 (pretraining).

Later chapters need a *pretrained* model, and nothing may be downloaded, so the course trains its own
and ships them in Hugging Face format, each with the recipe that made it::

    from llm_course.zoo import load_pretrained
    model, tok = load_pretrained("course-gpt")                   # llm_course GPT + ByteLevelBPETokenizer
    hf, hf_tok = load_pretrained("course-gpt", as_course_model=False)   # GPT2LMHeadModel + HF tokenizer
    bert, btok = load_pretrained("course-bert")                  # llm_course BERT (masked LM)

    $ llm-course zoo list                     # what is shipped, its size and validation score
    $ llm-course zoo train course-gpt         # re-make a checkpoint from its recipe (minutes, CPU)
    $ llm-course zoo eval course-gpt          # re-score the shipped weights on the recorded text

A checkpoint is a folder (``llm_course/checkpoints/<name>/``) that ``transformers`` reads as it is:

    config.json, model.safetensors     written by ``model.to_hf().save_pretrained(dir)``; the weights are
                                       stored in **float16** (half the size) and loaded back as float32
    tokenizer.json, tokenizer_config.json   ``AutoTokenizer.from_pretrained(dir)`` reads them
    recipe.json                         every hyperparameter, the data, the seed, versions, wall time
    metrics.json                        validation loss / bits per character, and the exact validation
                                        text slice they were measured on (``evaluate_checkpoint``)

The metrics are measured *after* the weights were rounded to float16, so re-scoring the shipped file
gives the recorded numbers. Weights are safetensors only: a pickle checkpoint (``pytorch_model.bin``)
is refused, never unpickled (unpickling can run arbitrary code).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import platform
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .bert import BERT, BERTConfig
from .data import TextCorpus, dialogs_text, docs_corpus
from .gpt import GPT, GPTConfig
from .objectives import mask_tokens, random_blocks, sequential_blocks
from .pretraining import BERT_SPECIALS, EOT, TimeBudget, TokenizedCorpus, generate, prepare_docs_tokens
from .tokenizer import ByteLevelBPETokenizer
from .training import TrainConfig, estimate_loss, train
from .utils import quiet_loading

__all__ = [
    "ZooRecipe",
    "TunedRecipe",
    "TASKS",
    "ZOO",
    "KINDS",
    "CHECKPOINTS_DIR",
    "shipped_names",
    "checkpoint_dir",
    "list_checkpoints",
    "prepare_zoo_data",
    "train_checkpoint",
    "load_pretrained",
    "evaluate_checkpoint",
    "slice_loss",
    "mlm_eval_batches",
]

PRETRAIN_KINDS = ("causal-lm", "masked-lm")  # what ZooRecipe pretrains
KINDS = PRETRAIN_KINDS + ("seq2seq-lm",)  # what the zoo can hold (a TunedRecipe may make a T5)
CHECKPOINTS_DIR = Path(__file__).resolve().parent / "checkpoints"  # the shipped folders live here
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
GREEDY_PROMPT = "The function returns"  # the prompt of the greedy sample recorded in metrics.json
MLM_MASK_SEED = 1234  # the masks of the masked-LM validation batches (fixed: the same every time)


# --------------------------------------------------------------------------------------------
# Recipes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZooRecipe:
    """How one zoo checkpoint is made: data, tokenizer, model and optimisation. Chapter 04 (pretraining).

    Data: the training split of ``docs_corpus()`` (Python's documentation, English prose) plus the
    English and Russian dialogs (``dialogs_text``), cut to ``max_train_chars`` characters if set (tiny
    test recipes); validation is the docs corpus' validation split (its first ``max_val_chars`` if set). Tokenizer: byte-level BPE with
    ``vocab_size`` tokens learned from the training text (special tokens: ``<|endoftext|>`` for a
    causal LM, ``[PAD] [CLS] [SEP] [MASK]`` for a masked LM). Model: ``kind`` "causal-lm" (``GPT``) or
    "masked-lm" (``BERT``), ``n_layer`` blocks of width ``n_embd`` with ``n_head`` heads and contexts of
    ``block_size`` tokens. Optimisation: ``max_steps`` AdamW updates on ``batch_size`` random windows,
    peak ``lr`` after ``warmup_steps``, cosine decay to ``min_lr``; masked LM masks ``mlm_probability``
    of the tokens. ``threads``: torch CPU threads. ``val_slice_chars``: characters of validation text
    whose loss metrics.json records exactly (the test re-scores them).
    """

    name: str
    kind: str
    description: str
    vocab_size: int = 4096
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128
    batch_size: int = 16
    max_steps: int = 1000
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    mlm_probability: float = 0.15
    eval_interval: int = 100
    eval_steps: int = 4
    seed: int = 0
    threads: int | None = 2
    max_train_chars: int | None = None
    max_val_chars: int | None = None
    val_slice_chars: int = 4000
    save_dtype: str = "float16"

    def __post_init__(self) -> None:
        if self.kind not in PRETRAIN_KINDS:
            raise ValueError(f"ZooRecipe.kind must be one of {PRETRAIN_KINDS}, got {self.kind!r}")
        if self.save_dtype not in ("float16", "float32"):
            raise ValueError(f"ZooRecipe.save_dtype must be 'float16' or 'float32', got {self.save_dtype!r}")
        for name in ("max_train_chars", "max_val_chars"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1000):
                raise ValueError(f"ZooRecipe.{name} must be None or an integer >= 1000, got {value!r}")
        if not isinstance(self.val_slice_chars, int) or self.val_slice_chars < 100:
            raise ValueError(f"ZooRecipe.val_slice_chars must be an integer >= 100, got {self.val_slice_chars!r}")
        self.model_config(self.vocab_size)  # checks the model's shape (n_embd % n_head, ...)
        self.train_config()  # checks the optimisation settings (lr, warmup_steps <= max_steps, ...)

    @property
    def special_tokens(self) -> tuple[str, ...]:
        """The tokenizer's special tokens (ids 0, 1, ...)."""
        return (EOT,) if self.kind == "causal-lm" else BERT_SPECIALS

    def model_config(self, vocab_size: int) -> GPTConfig | BERTConfig:
        """The model's config: a ``GPTConfig`` (causal LM) or a ``BERTConfig`` (masked LM), no dropout."""
        if self.kind == "causal-lm":
            return GPTConfig(vocab_size=vocab_size, n_positions=self.block_size, n_embd=self.n_embd,
                             n_layer=self.n_layer, n_head=self.n_head, dropout=0.0)
        return BERTConfig(vocab_size=vocab_size, hidden_size=self.n_embd, num_hidden_layers=self.n_layer,
                          num_attention_heads=self.n_head, intermediate_size=4 * self.n_embd,
                          max_position_embeddings=self.block_size, hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0, pad_token_id=0)  # [PAD] is id 0

    def train_config(self, **overrides: Any) -> TrainConfig:
        """The optimisation as a ``TrainConfig`` (``overrides`` win, e.g. ``progress=False``)."""
        settings: dict[str, Any] = dict(
            max_steps=self.max_steps, lr=self.lr, min_lr=self.min_lr, warmup_steps=self.warmup_steps,
            weight_decay=self.weight_decay, grad_clip=self.grad_clip, eval_interval=self.eval_interval,
            eval_steps=self.eval_steps, seed=self.seed, device="cpu", live_plot=False,
        )
        settings.update(overrides)
        return TrainConfig(**settings)

    def replace(self, **changes: Any) -> ZooRecipe:
        """A copy with some fields changed, e.g. ``ZOO["course-gpt"].replace(max_steps=3)``."""
        return dataclasses.replace(self, **changes)


# The modules that make a TunedRecipe's checkpoint: each has ``tune(recipe, progress)`` and ``measure(...)``.
TASKS = {"chat": "llm_course.chat", "summarization": "llm_course.summarization"}


@dataclass(frozen=True)
class TunedRecipe:
    """How a fine-tuned zoo checkpoint is made: one application, trained from a base. Chapter 08 (applications).

    ``task``: "chat" (``llm_course.chat``: ``base`` tuned on the chatterbot dialogs in the chat format)
    or "summarization" (``llm_course.summarization``: a T5 trained on docs entries -> summary lines,
    with ``base``'s tokenizer). ``steps`` AdamW updates of ``batch_size`` examples at peak ``lr``;
    ``options``: the task's own settings (see the task module's ``tune``). ``eval_examples``: how many
    held-out examples metrics.json scores (``zoo eval`` re-scores them). ``threads``: torch CPU threads.
    """

    name: str
    kind: str
    task: str
    description: str
    base: str = "course-gpt"
    steps: int = 800
    batch_size: int = 16
    lr: float = 3e-3
    seed: int = 0
    threads: int | None = 2
    eval_examples: int = 64
    save_dtype: str = "float16"
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"TunedRecipe.kind must be one of {KINDS}, got {self.kind!r}")
        if self.task not in TASKS:
            raise ValueError(f"TunedRecipe.task must be one of {tuple(TASKS)}, got {self.task!r}")
        if self.save_dtype not in ("float16", "float32"):
            raise ValueError(f"TunedRecipe.save_dtype must be 'float16' or 'float32', got {self.save_dtype!r}")
        for name in ("steps", "batch_size", "eval_examples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TunedRecipe.{name} must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"TunedRecipe.lr must be positive, got {self.lr!r}")

    def replace(self, **changes: Any) -> TunedRecipe:
        """A copy with some fields changed (``options`` entries too: ``replace(max_history=1)``)."""
        fields = {f.name for f in dataclasses.fields(self)}
        options = dict(self.options, **{k: v for k, v in changes.items() if k not in fields})
        return dataclasses.replace(self, options=options, **{k: v for k, v in changes.items() if k in fields})


# The shipped checkpoints: the chapter's recipes, run for ~30 minutes on two CPU cores each.
ZOO: dict[str, ZooRecipe | TunedRecipe] = {
    "course-gpt": ZooRecipe(
        name="course-gpt", kind="causal-lm",
        description="small GPT-2-style causal LM: English technical prose (Python docs) and dialogs, "
                    "English and Russian",
        vocab_size=4096, n_layer=5, n_head=5, n_embd=160, block_size=384,
        batch_size=6, max_steps=2600, lr=3e-3, min_lr=1e-4, warmup_steps=100, eval_interval=200,
    ),
    "course-bert": ZooRecipe(
        name="course-bert", kind="masked-lm",
        description="small BERT masked LM for the encoder chapters (same data, its own tokenizer with "
                    "[PAD] [CLS] [SEP] [MASK])",
        vocab_size=4096, n_layer=4, n_head=4, n_embd=128, block_size=64,
        batch_size=32, max_steps=2500, lr=1e-3, min_lr=1e-4, warmup_steps=250, eval_interval=250, threads=2,
    ),
    "course-gpt-chat": TunedRecipe(
        name="course-gpt-chat", kind="causal-lm", task="chat",
        description="course-gpt tuned to chat: the chatterbot dialogs (English and Russian) in chapter 05's chat "
                    "format, reply and end-of-text learned",
        base="course-gpt", steps=150, batch_size=16, lr=1e-3, eval_examples=120,
        options={"max_history": 2, "russian_repeats": 10, "max_tokens": 128},
    ),
    "course-t5-sum": TunedRecipe(
        name="course-t5-sum", kind="seq2seq-lm", task="summarization",
        description="T5 (chapter 02) trained to summarize: a docs entry's title and body -> its summary line; "
                    "course-gpt's tokenizer and token embeddings",
        base="course-gpt", steps=600, batch_size=32, lr=3e-3, eval_examples=128,
    ),
}


# --------------------------------------------------------------------------------------------
# Where checkpoints are
# --------------------------------------------------------------------------------------------


def shipped_names() -> list[str]:
    """The zoo names whose files are present in this installation. Chapter 04."""
    return [n for n in ZOO if (CHECKPOINTS_DIR / n / "config.json").is_file()]


def checkpoint_dir(name: str) -> Path:
    """The folder of shipped checkpoint ``name`` (``FileNotFoundError`` if it is not shipped). Chapter 04."""
    _check_zoo_name(name)
    folder = CHECKPOINTS_DIR / name
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{name!r} is in the zoo but its files are not in this installation ({folder}); make them with "
            f"`llm-course zoo train {name} --out DIR` and load DIR"
        )
    return folder


def _check_zoo_name(name: str) -> ZooRecipe:
    if name in ZOO:
        return ZOO[name]
    close = difflib.get_close_matches(name, list(ZOO), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown zoo checkpoint {name!r}.{hint} The zoo has: {', '.join(ZOO)} "
                     f"(shipped here: {', '.join(shipped_names()) or 'none'})")


def list_checkpoints() -> list[dict[str, Any]]:
    """One row per zoo recipe: name, kind, shipped?, parameters, size on disk, validation metrics. Chapter 04."""
    rows = []
    for name, recipe in ZOO.items():
        folder = CHECKPOINTS_DIR / name
        row: dict[str, Any] = {"name": name, "kind": recipe.kind, "shipped": (folder / "config.json").is_file(),
                               "description": recipe.description}
        if row["shipped"]:
            metrics = _read_json(folder / "metrics.json") if (folder / "metrics.json").is_file() else {}
            row["parameters"] = metrics.get("parameters")
            row["size_mb"] = round(sum(f.stat().st_size for f in folder.iterdir()) / 1e6, 2)
            row["val_loss"] = metrics.get("validation", {}).get("loss")
            row["val_bits_per_char"] = metrics.get("validation", {}).get("bits_per_char")
            row["held_out_loss"] = metrics.get("held_out", {}).get("loss")
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def prepare_zoo_data(recipe: ZooRecipe) -> tuple[TokenizedCorpus, dict[str, Any]]:
    """Train the recipe's tokenizer and encode its data: ``(TokenizedCorpus, data description)``. Chapter 04.

    Training text: the docs corpus' training split, then the English dialogs, then the Russian ones,
    joined by blank lines (cut to ``recipe.max_train_chars`` if set); validation: the docs corpus'
    validation split. The description (sources, sizes) goes into recipe.json.
    """
    docs = docs_corpus()
    english, russian = dialogs_text("english"), dialogs_text("russian")
    train_text = "\n\n".join([docs.train, english, russian])
    if recipe.max_train_chars is not None:
        train_text = train_text[: recipe.max_train_chars]
    val_text = docs.val if recipe.max_val_chars is None else docs.val[: recipe.max_val_chars]
    corpus = TextCorpus(train=train_text, val=val_text, source=docs.source)
    data = prepare_docs_tokens(recipe.vocab_size, corpus, special_tokens=recipe.special_tokens)
    description = {
        "train": "docs_corpus().train + '\\n\\n' + dialogs_text('english') + '\\n\\n' + dialogs_text('russian')"
                 + (f", first {recipe.max_train_chars} characters" if recipe.max_train_chars else ""),
        "validation": "docs_corpus().val (the last 10% of the docs corpus, cut at a document boundary)"
                      + (f", first {recipe.max_val_chars} characters" if recipe.max_val_chars else ""),
        "docs_source": docs.source,
        "train_chars": len(train_text),
        "train_tokens": int(data.train_ids.numel()),
        "docs_train_chars": len(docs.train),
        "dialogs_english_chars": len(english),
        "dialogs_russian_chars": len(russian),
        "val_chars": len(val_text),
        "val_tokens": int(data.val_ids.numel()),
    }
    return data, description


def _mlm_rows(core: torch.Tensor, tokenizer: ByteLevelBPETokenizer) -> torch.Tensor:
    """``[CLS] window [SEP]`` for each row of ``core`` (B, T - 2) -> (B, T)."""
    cls_id, sep_id = tokenizer.special_tokens["[CLS]"], tokenizer.special_tokens["[SEP]"]
    B = core.shape[0]
    return torch.cat([torch.full((B, 1), cls_id), core, torch.full((B, 1), sep_id)], dim=1)


def _mlm_batch(ids: torch.Tensor, tokenizer: ByteLevelBPETokenizer, probability: float,
               generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Mask ``ids`` (B, T) BERT's way (80/10/10): ``{input_ids, attention_mask, labels}``."""
    specials = [tokenizer.special_tokens[t] for t in BERT_SPECIALS]
    masked, labels = mask_tokens(ids, tokenizer.special_tokens["[MASK]"], tokenizer.vocab_size, specials,
                                 mlm_probability=probability, generator=generator)
    return {"input_ids": masked, "attention_mask": torch.ones_like(ids), "labels": labels}


def mlm_eval_batches(val_ids: torch.Tensor, tokenizer: ByteLevelBPETokenizer, block_size: int,
                     probability: float = 0.15, batch_size: int = 32,
                     seed: int = MLM_MASK_SEED) -> list[dict[str, torch.Tensor]]:
    """Masked-LM validation batches: consecutive ``[CLS] window [SEP]`` rows, masked with a fixed seed. Chapter 04.

    The same ids give the same masks every time, so losses measured on them compare exactly.
    """
    n = val_ids.numel() // (block_size - 2)
    if n < 1:
        raise ValueError(f"the validation text has {val_ids.numel()} tokens, fewer than one window of {block_size - 2}")
    rows = _mlm_rows(val_ids[: n * (block_size - 2)].view(n, block_size - 2), tokenizer)
    generator = torch.Generator().manual_seed(seed)
    return [_mlm_batch(rows[i : i + batch_size], tokenizer, probability, generator) for i in range(0, n, batch_size)]


def _mlm_loss(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Mean masked-LM loss over all masked positions of ``batches`` (weighted by their count)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batches:
            n = int((b["labels"] != -100).sum())
            total += float(model(**b).loss) * n
            count += n
    model.train(was_training)
    return {"loss": total / count, "masked_tokens": count}


def slice_loss(model: nn.Module, tokenizer: ByteLevelBPETokenizer, text: str, kind: str,
               block_size: int, mlm_probability: float = 0.15) -> dict[str, float]:
    """The loss of ``model`` on ``text``: what metrics.json records for its ``val_slice``. Chapter 04.

    Causal LM: every token but the first predicted once (``sequential_blocks``), with loss, perplexity
    and bits per character of ``text``. Masked LM: ``mlm_eval_batches`` (fixed masks). ``model`` is a
    course ``GPT``/``BERT`` or the matching transformers model (both return ``.loss``).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    # the tokenizer's Rust twin: the same ids as tokenizer.encode(text), ~10x faster on a long text
    ids = torch.tensor(tokenizer.to_hf_tokenizer().encode(text).ids, dtype=torch.long)
    if kind == "causal-lm":
        return estimate_loss(model, list(sequential_blocks(ids, 32, block_size)), n_chars=len(text))
    return _mlm_loss(model, mlm_eval_batches(ids, tokenizer, block_size, mlm_probability))


def _round_weights(model: nn.Module, dtype: str) -> None:
    """Round every float tensor to ``dtype`` and back in place: the model then computes what the saved
    float16 file will, so the metrics measured next are those of the shipped weights."""
    if dtype == "float32":
        return
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.to(getattr(torch, dtype)).float())


def _save_hf_tokenizer(tokenizer: ByteLevelBPETokenizer, folder: Path, kind: str) -> None:
    """tokenizer.json + tokenizer_config.json; a masked LM's adds ``[CLS] ... [SEP]`` itself, as BERT's does."""
    tokenizer.save_pretrained(folder)
    if kind != "masked-lm":
        return
    from tokenizers import Tokenizer, processors

    fast = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids = tokenizer.special_tokens
    fast.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                      special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])]),
    ])
    fast.save(str(folder / "tokenizer.json"))
    config = _read_json(folder / "tokenizer_config.json")
    config.update(pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def train_checkpoint(
    name: str | ZooRecipe,
    out_dir: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    time_limit_s: float | None = None,
    **changes: Any,
) -> Path:
    """Make a zoo checkpoint from its recipe and write it to ``out_dir``. Chapter 04 (pretraining).

    ``name``: a zoo name ("course-gpt") or a ``ZooRecipe``; ``changes`` override recipe fields (e.g.
    ``max_steps=3`` for a smoke run). ``out_dir`` (default ``runs/zoo/<name>``) receives the HF files,
    recipe.json and metrics.json; everything is written to a temporary folder first and moved into
    place at the end, so an interrupted run leaves nothing half-written. An existing ``out_dir`` is only
    replaced with ``overwrite=True``. ``time_limit_s``: give up (``TimeoutError``, nothing written) if
    training takes longer. Returns ``out_dir``.

    The same recipe on the same machine and thread count gives the same weights (seeded model,
    batches and masks); another CPU may differ in the last bits of float arithmetic.
    """
    recipe = name if isinstance(name, (ZooRecipe, TunedRecipe)) else _check_zoo_name(name)
    if changes:
        recipe = recipe.replace(**changes)
    out = Path(out_dir) if out_dir is not None else Path("runs") / "zoo" / recipe.name
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists: pass overwrite=True (CLI: --overwrite) or another --out")
    if recipe.threads is not None:
        torch.set_num_threads(recipe.threads)
    if isinstance(recipe, TunedRecipe):
        return _train_tuned(recipe, out, progress, time_limit_s)
    t0 = time.perf_counter()
    data, data_description = prepare_zoo_data(recipe)
    tok = data.tokenizer
    config = recipe.model_config(tok.vocab_size)
    torch.manual_seed(recipe.seed)  # the same initial weights for the same recipe
    model: nn.Module = GPT(config) if recipe.kind == "causal-lm" else BERT(config)
    generator = torch.Generator().manual_seed(recipe.seed)  # the batches (and masks) of training
    B, T = recipe.batch_size, recipe.block_size

    if recipe.kind == "causal-lm":
        def get_batch(i: int) -> dict[str, torch.Tensor]:
            return random_blocks(data.train_ids, B, T, generator)

        def evaluate(i: int) -> dict[str, torch.Tensor]:  # held-out batch i is the same at every evaluation
            return random_blocks(data.val_ids, B, T, torch.Generator().manual_seed(10_000 + i))
        chars_per_token = data.chars_per_token
    else:
        def get_batch(i: int) -> dict[str, torch.Tensor]:
            core = random_blocks(data.train_ids, B, T - 2, generator)["input_ids"]
            return _mlm_batch(_mlm_rows(core, tok), tok, recipe.mlm_probability, generator)

        val_batches = mlm_eval_batches(data.val_ids[: recipe.eval_steps * B * (T - 2)], tok, T,
                                       recipe.mlm_probability, batch_size=B)
        evaluate = val_batches  # a list: train() evaluates on its first eval_steps batches
        chars_per_token = None

    cfg = recipe.train_config(chars_per_token=chars_per_token, progress=progress,
                              log_interval=recipe.eval_interval if progress else 0)
    callbacks = [TimeBudget(time_limit_s)] if time_limit_s is not None else []
    t_train = time.perf_counter()
    result = train(model, get_batch, cfg, evaluate=evaluate, callbacks=callbacks, generator=generator)
    train_seconds = time.perf_counter() - t_train
    if result.stopped_early:
        raise TimeoutError(f"training {recipe.name} stopped at step {result.step} of {recipe.max_steps} "
                           f"(time_limit_s={time_limit_s} or interrupted); nothing was written")

    _round_weights(model, recipe.save_dtype)
    model.eval()
    metrics = _measure(model, tok, data, recipe)
    metrics["train_loss_last_50"] = sum(result.losses[-50:]) / len(result.losses[-50:])
    metrics["evals"] = result.evals

    hf = model.to_hf()
    recipe_json = {
        "name": recipe.name,
        "recipe": dataclasses.asdict(recipe),
        "model_class": type(model).__name__,
        "model_config": dataclasses.asdict(config),
        "hf_class": type(hf).__name__,
        "parameters": model.num_parameters(),
        "data": data_description,
        "seed": recipe.seed,
        "steps": result.step,
        "tokens_seen": result.step * B * T,
        "train_seconds": round(train_seconds, 1),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        **_provenance(recipe),
    }
    _write_checkpoint(out, hf, tok, recipe.kind, recipe.save_dtype, recipe_json, metrics)
    return out


def _provenance(recipe: ZooRecipe | TunedRecipe) -> dict[str, Any]:
    """recipe.json's record of where and with what a checkpoint was made."""
    return {
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "tokenizers": _version("tokenizers"),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "weights_dtype": recipe.save_dtype,
        "command": f"llm-course zoo train {recipe.name}",
    }


def _write_checkpoint(out: Path, hf: nn.Module, tok: ByteLevelBPETokenizer, kind: str, save_dtype: str,
                      recipe_json: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Write the HF files, recipe.json and metrics.json to a temporary folder, then move it to ``out``
    (an interrupted run leaves nothing half-written)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        hf.to(getattr(torch, save_dtype)).save_pretrained(tmp)
        _save_hf_tokenizer(tok, tmp, kind)
        _write_json(tmp / "recipe.json", recipe_json)
        _write_json(tmp / "metrics.json", metrics)
        for f in tmp.iterdir():  # mkdtemp makes a private folder: give the files ordinary permissions
            f.chmod(0o644)
        tmp.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _task_module(task: str) -> Any:
    import importlib

    return importlib.import_module(TASKS[task])


def _train_tuned(recipe: TunedRecipe, out: Path, progress: bool, time_limit_s: float | None) -> Path:
    """``train_checkpoint`` for a ``TunedRecipe``: the task module trains and measures, the zoo saves."""
    module = _task_module(recipe.task)
    t0 = time.perf_counter()
    callbacks = [TimeBudget(time_limit_s)] if time_limit_s is not None else []
    model, tok, info = module.tune(recipe, progress=progress, callbacks=callbacks)
    if info["result"].stopped_early:
        raise TimeoutError(f"training {recipe.name} stopped at step {info['result'].step} of {recipe.steps} "
                           f"(time_limit_s={time_limit_s} or interrupted); nothing was written")
    _round_weights(model, recipe.save_dtype)
    model.eval()
    metrics = {"parameters": model.num_parameters(), "weights_dtype": recipe.save_dtype,
               **module.measure(model, tok, recipe), **info.get("metrics", {})}
    hf = model.to_hf()
    recipe_json = {
        "name": recipe.name,
        "recipe": dataclasses.asdict(recipe),
        "model_class": type(model).__name__,
        "model_config": dataclasses.asdict(model.config),
        "hf_class": type(hf).__name__,
        "parameters": model.num_parameters(),
        "data": info["data"],
        "seed": recipe.seed,
        "steps": info["result"].step,
        "train_seconds": round(info["train_seconds"], 1),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        **_provenance(recipe),
    }
    _write_checkpoint(out, hf, tok, recipe.kind, recipe.save_dtype, recipe_json, metrics)
    return out


def _measure(model: nn.Module, tok: ByteLevelBPETokenizer, data: TokenizedCorpus, recipe: ZooRecipe) -> dict[str, Any]:
    """metrics.json: the validation split's loss (and bits per character), the recorded slice, a sample."""
    text = docs_corpus().val[: recipe.val_slice_chars]
    metrics: dict[str, Any] = {"parameters": model.num_parameters(), "weights_dtype": recipe.save_dtype}
    if recipe.kind == "causal-lm":
        batches = list(sequential_blocks(data.val_ids, 32, recipe.block_size))
        metrics["validation"] = estimate_loss(model, batches, n_chars=data.val_chars)
        metrics["validation"]["what"] = ("docs_corpus().val, every token predicted once with up to block_size - 1 "
                                         "tokens of context (sequential_blocks)")
        prompt = torch.tensor([tok.encode(GREEDY_PROMPT)])
        out = generate(model, prompt, 40, temperature=0)
        metrics["greedy_sample"] = {"prompt": GREEDY_PROMPT, "max_new_tokens": 40,
                                    "continuation": tok.decode(out[0, prompt.shape[1]:].tolist())}
    else:
        batches = mlm_eval_batches(data.val_ids, tok, recipe.block_size, recipe.mlm_probability)
        metrics["validation"] = _mlm_loss(model, batches)
        metrics["validation"]["what"] = (f"docs_corpus().val as [CLS] window [SEP] rows of {recipe.block_size} tokens, "
                                         f"masked with seed {MLM_MASK_SEED} (mlm_eval_batches)")
    metrics["val_slice"] = {"text": text, "chars": len(text), "start": 0,
                            **slice_loss(model, tok, text, recipe.kind, recipe.block_size, recipe.mlm_probability)}
    return metrics


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def _offline() -> bool:
    """True when the Hugging Face Hub must not be contacted (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags)


def _check_folder(folder: Path) -> None:
    """A clear error for a folder that is not a safetensors HF checkpoint (never unpickles anything)."""
    if not folder.is_dir():
        raise ValueError(f"{folder} is a file; pass the checkpoint's folder (with config.json and model.safetensors)")
    config = folder / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: it is not a Hugging Face checkpoint folder "
                                "(write one with model.to_hf().save_pretrained(folder))")
    raw = _read_json(config)
    if not isinstance(raw, dict) or "model_type" not in raw:
        raise ValueError(f"{config} holds no model_type: not a transformers config; re-save the model")
    weights = folder / "model.safetensors"
    if not weights.is_file():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise ValueError(
                f"{folder} holds a pickle checkpoint ({', '.join(pickles)}) and no model.safetensors; the course "
                "never unpickles weights (loading a pickle can run arbitrary code). Convert it where you trust "
                "the file: load it with transformers, then model.save_pretrained(folder) writes model.safetensors"
            )
        raise FileNotFoundError(f"{folder} has no model.safetensors; save the model with save_pretrained(folder)")
    from safetensors.torch import load_file

    try:
        load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for truncated / corrupt files
        raise ValueError(f"{weights} is not a valid safetensors file ({e}); re-save or re-train the checkpoint") from e
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{folder} has no tokenizer.json; save the tokenizer with "
                                "tokenizer.save_pretrained(folder)")


def _kind_of(config: dict[str, Any]) -> str:
    if config.get("is_encoder_decoder") or config.get("model_type") == "t5":
        return "seq2seq-lm"
    return "masked-lm" if config.get("model_type") == "bert" else "causal-lm"


def load_pretrained(
    name_or_path: str | os.PathLike,
    kind: str | None = None,
    as_course_model: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, Any]:
    """Load a pretrained model and its tokenizer: ``(model, tokenizer)``, in eval mode. Chapter 04.

    ``name_or_path``: a zoo name ("course-gpt", "course-bert": the files shipped in the package), a
    local folder in Hugging Face format (config.json, model.safetensors, tokenizer.json), or a Hub id
    ("gpt2"), handed to transformers' ``from_pretrained`` when the machine is online; with
    ``HF_HUB_OFFLINE=1`` or no network that is a ``ValueError`` that lists the shipped names.
    ``kind``: "causal-lm", "masked-lm" or "seq2seq-lm" (None: read from the checkpoint; "causal-lm" for
    a Hub id).

    ``as_course_model=True``: the course's own ``GPT`` / ``BERT`` / ``T5`` (``GPT.from_hf(...)``) and its
    ``ByteLevelBPETokenizer``; False: the transformers model (``GPT2LMHeadModel``, ``BertForMaskedLM``)
    and a transformers tokenizer (``PreTrainedTokenizerFast`` via ``AutoTokenizer``; course-bert's adds
    ``[CLS] ... [SEP]`` itself, the course tokenizer does not). Weights are loaded as float32 whatever the
    file stores (the zoo stores float16), and only from safetensors: a pickle checkpoint is refused.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path must be a zoo name, a folder or a Hub id (str), got {type(name_or_path).__name__}")
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} (or None: read it from the checkpoint), got {kind!r}")
    text = os.fspath(name_or_path)
    if text in ZOO:
        folder: Path | None = checkpoint_dir(text)
    elif Path(text).exists():
        folder = Path(text)
    elif text.startswith("course-"):
        _check_zoo_name(text)  # raises: unknown zoo name, with the list
        folder = None
    elif not _HUB_ID.match(text) or text.startswith((".", "/", "~")):
        raise FileNotFoundError(f"no folder {text!r}; pass an existing checkpoint folder, a zoo name "
                                f"({', '.join(ZOO)}) or a Hugging Face Hub id")
    else:
        folder = None
    if folder is not None:
        _check_folder(folder)
        source: str = str(folder)
        kind = kind or _kind_of(_read_json(folder / "config.json"))
    else:
        if _offline():
            raise ValueError(
                f"{text!r} is not a zoo name or a local folder, so it would come from the Hugging Face Hub, but this "
                f"machine is offline (HF_HUB_OFFLINE=1). Use a shipped checkpoint: {', '.join(shipped_names()) or 'none'}"
                " (llm_course.zoo.load_pretrained('course-gpt')), or a local folder"
            )
        source = text
        kind = kind or "causal-lm"
    model = _load_hf_model(source, kind, text, local=folder is not None)
    from transformers import AutoTokenizer

    if as_course_model:
        from .t5 import T5

        cls = {"causal-lm": GPT, "masked-lm": BERT, "seq2seq-lm": T5}[kind]
        try:
            model = cls.from_hf(model)
        except TypeError as e:
            raise TypeError(f"{text!r} is a {type(model).__name__}, which the course's {cls.__name__} cannot hold "
                            f"({e}); pass as_course_model=False for the transformers model") from e
        if folder is not None:
            tokenizer: Any = ByteLevelBPETokenizer.from_pretrained(folder)
        else:
            tokenizer = ByteLevelBPETokenizer.from_pretrained(_hub_file(text, "tokenizer.json"))
    else:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=folder is not None)
    return model.to(device).eval(), tokenizer


def _load_hf_model(source: str, kind: str, shown: str, local: bool) -> nn.Module:
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM

    auto = {"causal-lm": AutoModelForCausalLM, "masked-lm": AutoModelForMaskedLM,
            "seq2seq-lm": AutoModelForSeq2SeqLM}[kind]
    try:
        with quiet_loading(local):  # a local file loads in milliseconds: no progress bar
            return auto.from_pretrained(source, dtype=torch.float32, use_safetensors=True, local_files_only=local)
    except OSError as e:  # no network, no such repository, no safetensors file on the Hub
        where = "" if local else (" from the Hugging Face Hub (is the machine offline? set HF_HUB_OFFLINE=1 to "
                                  "fail fast)")
        raise ValueError(f"could not load {shown!r}{where}: {e}. Shipped checkpoints: "
                         f"{', '.join(shipped_names()) or 'none'}") from e
    except ValueError as e:  # e.g. a masked-LM config asked for as a causal LM
        raise ValueError(f"could not load {shown!r} as a {kind} model ({e}); check kind=") from e


def _hub_file(repo_id: str, filename: str) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id, filename))


# --------------------------------------------------------------------------------------------
# Re-scoring a checkpoint
# --------------------------------------------------------------------------------------------


def evaluate_checkpoint(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """Re-score a zoo checkpoint's weights on the text its metrics.json recorded. Chapter 04.

    Returns ``{"name", "kind", "recorded", "measured", "abs_diff"}`` for the validation slice loss (they
    agree to ~1e-5 for unchanged weights), plus ``"validation"``: the metrics on this machine's
    docs validation split (the same as recorded when the Python version is, since the docs corpus comes
    from the standard library).
    """
    text = os.fspath(name_or_path)
    folder = checkpoint_dir(text) if text in ZOO else Path(text)
    model, tok = load_pretrained(folder)
    metrics = _read_json(folder / "metrics.json") if (folder / "metrics.json").is_file() else None
    if not metrics or not ("val_slice" in metrics or "held_out" in metrics):
        raise FileNotFoundError(f"{folder} has no metrics.json with a val_slice; was it made by train_checkpoint?")
    recipe = _read_json(folder / "recipe.json")["recipe"]
    kind = recipe["kind"]
    if "task" in recipe:  # a TunedRecipe: re-score its held-out examples
        tuned = TunedRecipe(**recipe)
        recorded = metrics["held_out"]["loss"]
        measured_loss = _task_module(tuned.task).held_out_loss(model, tok, tuned)
        return {"name": text, "kind": kind, "recorded": recorded, "measured": measured_loss,
                "abs_diff": abs(recorded - measured_loss), "held_out": metrics["held_out"]}
    sl = metrics["val_slice"]
    measured = slice_loss(model, tok, sl["text"], kind, recipe["block_size"], recipe["mlm_probability"])
    val_text = docs_corpus().val[: recipe.get("max_val_chars")]  # [:None] is all of it
    if kind == "causal-lm":
        validation = slice_loss(model, tok, val_text, kind, recipe["block_size"])
    else:
        validation = slice_loss(model, tok, val_text, kind, recipe["block_size"], recipe["mlm_probability"])
    return {"name": text, "kind": kind, "recorded": sl["loss"], "measured": measured["loss"],
            "abs_diff": abs(sl["loss"] - measured["loss"]), "validation": validation,
            "recorded_validation": metrics.get("validation")}


# --------------------------------------------------------------------------------------------
# Small file helpers
# --------------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-save or re-train the checkpoint") from e


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _version(dist: str) -> str | None:
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None
