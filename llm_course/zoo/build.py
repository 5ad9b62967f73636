"""Making and re-scoring zoo checkpoints: ``llm-course zoo train`` and ``zoo eval``. Chapters 04 and 08.

``train_checkpoint`` turns a recipe into a checkpoint folder: for a ``PretrainRecipe`` it trains the
tokenizer and the model on the docs corpus and the dialogs (``prepare_zoo_data``), for a
``TunedRecipe`` it hands training to the application's ``ZooTask``; then it rounds the weights to the
saved dtype, measures them (metrics.json), records how they were made (recipe.json) and writes the
folder atomically. ``evaluate_checkpoint`` re-scores a folder's weights on the text its metrics.json
recorded: the same weights give the same loss to ~1e-5 (``slice_loss``, ``mlm_eval_batches``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from llm_course.core.checks import check_choice
from llm_course.infer.generation import generate
from llm_course.models.bert import BERT
from llm_course.models.gpt import GPT
from llm_course.nn.evaluation import count_labels, estimate_loss
from llm_course.nn.objectives import mask_tokens, random_blocks, sequential_blocks
from llm_course.text.bilingual import bilingual_corpus
from llm_course.text.corpora import TextCorpus, docs_corpus
from llm_course.text.dialogs import dialogs_text
from llm_course.text.encoding import cyrillic_token_cost
from llm_course.text.tokenizer import ByteLevelBPETokenizer
from llm_course.train.loop import train
from llm_course.train.pretraining import TimeBudget, TokenizedCorpus, prepare_docs_tokens
from llm_course.train.recipe import BERT_SPECIALS, PretrainRecipe
from llm_course.zoo.loading import checkpoint_dir, load_pretrained, read_metrics, read_recipe, zoo_recipe
from llm_course.zoo.recipes import GREEDY_PROMPT, KINDS, MLM_MASK_SEED, ZOO, TunedRecipe, ZooTask

__all__ = ['prepare_zoo_data', 'train_checkpoint', 'evaluate_checkpoint', 'slice_loss', 'mlm_eval_batches',
           'language_scores']


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def _zoo_texts(recipe: PretrainRecipe) -> tuple[str, str, dict[str, TextCorpus], dict[str, Any]]:
    """The recipe's training text, its (English) validation text, each language's held-out corpus, and a
    description of both for recipe.json. Chapter 04."""
    docs = docs_corpus()
    english, russian = dialogs_text("english"), dialogs_text("russian")
    cut = recipe.max_train_chars
    if recipe.corpus == "bilingual":
        corpus = bilingual_corpus()
        parts = corpus.languages
        # a tiny test recipe keeps some of each language: the same share of each language's training text
        train_text = "\n\n".join(c.train if cut is None else c.train[: cut // len(parts)] for c in parts.values())
        description: dict[str, Any] = {
            "train": "bilingual_corpus().train: docs_corpus().train + English dialogs, then the Russian manual pages' "
                     "training pages (manpages_corpus().train) + Russian dialogs"
                     + (f", first {cut // len(parts)} characters of each language" if cut else ""),
            "validation": "docs_corpus().val (the last 10% of the docs corpus, cut at a document boundary); "
                          "validation_by_language in metrics.json adds manpages_corpus().val (held-out pages)",
            "docs_source": docs.source,
            "russian_source": parts["russian"].source,
            "russian_train_chars": len(parts["russian"].train),
            "russian_val_chars": len(parts["russian"].val),
        }
        held_out = {language: TextCorpus(train="", val=c.val, source=c.source) for language, c in parts.items()}
    else:
        train_text = "\n\n".join([docs.train, english, russian])
        if cut is not None:
            train_text = train_text[:cut]
        description = {
            "train": "docs_corpus().train + '\\n\\n' + dialogs_text('english') + '\\n\\n' + dialogs_text('russian')"
                     + (f", first {cut} characters" if cut else ""),
            "validation": "docs_corpus().val (the last 10% of the docs corpus, cut at a document boundary)",
            "docs_source": docs.source,
        }
        held_out = {}
    if recipe.max_val_chars is not None:
        description["validation"] += f", first {recipe.max_val_chars} characters"
    val_text = docs.val if recipe.max_val_chars is None else docs.val[: recipe.max_val_chars]
    description.update(docs_train_chars=len(docs.train), dialogs_english_chars=len(english),
                       dialogs_russian_chars=len(russian))
    return train_text, val_text, held_out, description


def prepare_zoo_data(recipe: PretrainRecipe) -> tuple[TokenizedCorpus, dict[str, Any]]:
    """Train the recipe's tokenizer and encode its data: ``(TokenizedCorpus, data description)``. Chapter 04.

    Training text (``recipe.corpus``): "docs", the docs corpus' training split, then the English
    dialogs, then the Russian ones, joined by blank lines; "bilingual", ``bilingual_corpus().train``
    (the same English part, then the Russian manual pages' training pages and the Russian dialogs).
    ``recipe.max_train_chars`` cuts it (each language's share, for "bilingual"). Validation: the docs
    corpus' validation split (the Russian held-out pages are scored in metrics.json). The description
    (sources, sizes) goes into recipe.json.
    """
    train_text, val_text, _, description = _zoo_texts(recipe)
    corpus = TextCorpus(train=train_text, val=val_text, source=description["docs_source"])
    data = prepare_docs_tokens(recipe.vocab_size, corpus, special_tokens=recipe.special_tokens)
    description.update(train_chars=len(train_text), train_tokens=int(data.train_ids.numel()),
                       val_chars=len(val_text), val_tokens=int(data.val_ids.numel()))
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
    metrics = estimate_loss(model, batches, count_tokens=count_labels)
    return {"loss": metrics["loss"], "masked_tokens": metrics["tokens"]}


def slice_loss(model: nn.Module, tokenizer: ByteLevelBPETokenizer, text: str, kind: str,
               block_size: int, mlm_probability: float = 0.15) -> dict[str, float]:
    """The loss of ``model`` on ``text``: what metrics.json records for its ``val_slice``. Chapter 04.

    Causal LM: every token but the first predicted once (``sequential_blocks``), with loss, perplexity
    and bits per character of ``text``. Masked LM: ``mlm_eval_batches`` (fixed masks). ``model`` is a
    course ``GPT``/``BERT`` or the matching transformers model (both return ``.loss``).
    """
    check_choice("kind", kind, KINDS)
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
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.update(pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def train_checkpoint(
    name: str | PretrainRecipe | TunedRecipe,
    out_dir: str | os.PathLike | None = None,
    *,
    task: ZooTask | None = None,
    overwrite: bool = False,
    progress: bool = True,
    time_limit_s: float | None = None,
    **changes: Any,
) -> Path:
    """Make a zoo checkpoint from its recipe and write it to ``out_dir``. Chapter 04 (pretraining).

    ``name``: a zoo name ("course-gpt") or a recipe (``PretrainRecipe`` or ``TunedRecipe``); ``changes``
    override recipe fields (e.g. ``max_steps=3`` for a smoke run). A tuned recipe needs ``task``, the
    application that trains it (e.g. ``llm_course.apps.chat_tuning.CHAT_TASK`` for "course-gpt-chat").
    ``out_dir`` (default ``runs/zoo/<name>``) receives the HF files,
    recipe.json and metrics.json; everything is written to a temporary folder first and moved into
    place at the end, so an interrupted run leaves nothing half-written. An existing ``out_dir`` is only
    replaced with ``overwrite=True``. ``time_limit_s``: give up (``TimeoutError``, nothing written) if
    training takes longer. Returns ``out_dir``.

    The same recipe on the same machine and thread count gives the same weights (seeded model,
    batches and masks); another CPU may differ in the last bits of float arithmetic.
    """
    recipe = name if isinstance(name, (PretrainRecipe, TunedRecipe)) else zoo_recipe(name)
    if changes:
        recipe = recipe.replace(**changes)
    out = Path(out_dir) if out_dir is not None else Path("runs") / "zoo" / recipe.name
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists: pass overwrite=True (CLI: --overwrite) or another --out")
    if isinstance(recipe, TunedRecipe):
        _check_task(task, recipe)
    elif recipe.max_steps is None:
        raise ValueError(f"a zoo recipe trains a fixed number of steps: give {recipe.name} max_steps")
    if recipe.threads is not None:
        torch.set_num_threads(recipe.threads)
    if isinstance(recipe, TunedRecipe):
        return _train_tuned(recipe, task, out, progress, time_limit_s)
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

    cfg = recipe.train_config(chars_per_token=chars_per_token, progress=progress, device="cpu", live_plot=False,
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


def _provenance(recipe: PretrainRecipe | TunedRecipe) -> dict[str, Any]:
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


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _version(dist: str) -> str | None:
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _check_task(task: ZooTask | None, recipe: TunedRecipe) -> ZooTask:
    """The ``ZooTask`` that serves ``recipe``, or a clear error naming the one to pass."""
    plugin = {"chat": "llm_course.apps.chat_tuning.CHAT_TASK",
              "summarization": "llm_course.apps.summarization_tuning.SUMMARIZATION_TASK",
              "translation": "llm_course.apps.translation.TRANSLATION_TASK"}.get(recipe.task, "a ZooTask")
    if task is None:
        raise ValueError(f"{recipe.name} is tuned by the {recipe.task!r} application: pass task={plugin} "
                         f"(the CLI `llm-course zoo` does)")
    if getattr(task, "name", None) != recipe.task:
        raise ValueError(f"{recipe.name} needs the {recipe.task!r} task, got task {getattr(task, 'name', task)!r}; "
                         f"pass task={plugin}")
    return task


def _train_tuned(recipe: TunedRecipe, task: ZooTask, out: Path, progress: bool, time_limit_s: float | None) -> Path:
    """``train_checkpoint`` for a ``TunedRecipe``: the task trains and measures, the zoo saves."""
    t0 = time.perf_counter()
    callbacks = [TimeBudget(time_limit_s)] if time_limit_s is not None else []
    model, tok, info = task.tune(recipe, progress=progress, callbacks=callbacks)
    if info["result"].stopped_early:
        raise TimeoutError(f"training {recipe.name} stopped at step {info['result'].step} of {recipe.steps} "
                           f"(time_limit_s={time_limit_s} or interrupted); nothing was written")
    _round_weights(model, recipe.save_dtype)
    model.eval()
    metrics = {"parameters": model.num_parameters(), "weights_dtype": recipe.save_dtype,
               **task.measure(model, tok, recipe), **info.get("metrics", {})}
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


def _measure(model: nn.Module, tok: ByteLevelBPETokenizer, data: TokenizedCorpus,
             recipe: PretrainRecipe) -> dict[str, Any]:
    """metrics.json: the validation split's loss (and bits per character), the recorded slice, a sample."""
    text = docs_corpus().val[: recipe.val_slice_chars]
    metrics: dict[str, Any] = {"parameters": model.num_parameters(), "weights_dtype": recipe.save_dtype}
    if recipe.kind == "causal-lm":
        batches = list(sequential_blocks(data.val_ids, 32, recipe.block_size))
        metrics["validation"] = estimate_loss(model, batches, n_chars=data.val_chars)
        metrics["validation"]["what"] = ("docs_corpus().val, every token predicted once with up to block_size - 1 "
                                         "tokens of context (sequential_blocks)")
        prompt = torch.tensor([tok.encode(GREEDY_PROMPT)])
        # greedy; slide_context: a tiny test model's context is shorter than the prompt and 40 new tokens
        out = generate(model, prompt, max_new_tokens=40, slide_context=True)
        metrics["greedy_sample"] = {"prompt": GREEDY_PROMPT, "max_new_tokens": 40,
                                    "continuation": tok.decode(out[0, prompt.shape[1]:].tolist())}
    else:
        batches = mlm_eval_batches(data.val_ids, tok, recipe.block_size, recipe.mlm_probability)
        metrics["validation"] = _mlm_loss(model, batches)
        metrics["validation"]["what"] = (f"docs_corpus().val as [CLS] window [SEP] rows of {recipe.block_size} tokens, "
                                         f"masked with seed {MLM_MASK_SEED} (mlm_eval_batches)")
    metrics["val_slice"] = {"text": text, "chars": len(text), "start": 0,
                            **slice_loss(model, tok, text, recipe.kind, recipe.block_size, recipe.mlm_probability)}
    if recipe.kind == "causal-lm" and recipe.corpus == "bilingual":
        metrics.update(_language_scores(model, tok, recipe))
    return metrics


def language_scores(model: nn.Module, tokenizer: ByteLevelBPETokenizer, block_size: int,
                    max_val_chars: int | None = None) -> dict[str, dict[str, float]]:
    """A causal LM's loss and bits per character on each language's held-out text. Chapters 01 and 04.

    English: ``docs_corpus().val``; Russian: the held-out manual pages (``manpages_corpus().val``);
    each with ``tokens_per_char``, what the tokenizer spends on that language. Any checkpoint can be
    scored this way, so today's and yesterday's compare on the same text.
    """
    texts = {language: c.val[:max_val_chars] for language, c in bilingual_corpus(dialogs=False).languages.items()}
    scores = {}
    for language, text in texts.items():
        score = slice_loss(model, tokenizer, text, "causal-lm", block_size)
        scores[language] = {**score, "chars": len(text), "tokens_per_char": score["tokens"] / len(text)}
    return scores


def _language_scores(model: nn.Module, tok: ByteLevelBPETokenizer, recipe: PretrainRecipe) -> dict[str, Any]:
    """metrics.json's per-language part of a bilingual checkpoint: scores, a Russian slice, Cyrillic cost."""
    russian = bilingual_corpus(dialogs=False).languages["russian"].val[: recipe.val_slice_chars]
    return {
        "validation_by_language": language_scores(model, tok, recipe.block_size, recipe.max_val_chars),
        "val_slice_russian": {"text": russian, "chars": len(russian), "start": 0,
                              **slice_loss(model, tok, russian, "causal-lm", recipe.block_size)},
        "cyrillic_token_cost": cyrillic_token_cost(tok),
    }


# --------------------------------------------------------------------------------------------
# Re-scoring a checkpoint
# --------------------------------------------------------------------------------------------


def evaluate_checkpoint(name_or_path: str | os.PathLike, task: ZooTask | None = None) -> dict[str, Any]:
    """Re-score a zoo checkpoint's weights on the text its metrics.json recorded. Chapter 04.

    Returns ``{"name", "kind", "recorded", "measured", "abs_diff"}`` for the validation slice loss (they
    agree to ~1e-5 for unchanged weights), plus ``"validation"``: the metrics on this machine's
    docs validation split (the same as recorded when the Python version is, since the docs corpus comes
    from the standard library). A tuned checkpoint is re-scored on its held-out examples by ``task``, its
    application's ``ZooTask`` (as for ``train_checkpoint``).
    """
    text = os.fspath(name_or_path)
    folder = checkpoint_dir(text) if text in ZOO else Path(text)
    model, tok = load_pretrained(folder)
    metrics = read_metrics(folder)
    if not ("val_slice" in metrics or "held_out" in metrics):
        raise FileNotFoundError(f"{folder} has no metrics.json with a val_slice; was it made by train_checkpoint?")
    recipe = read_recipe(folder)["recipe"]
    kind = recipe["kind"]
    if "task" in recipe:  # a TunedRecipe: re-score its held-out examples
        tuned = TunedRecipe(**recipe)
        recorded = metrics["held_out"]["loss"]
        measured_loss = _check_task(task, tuned).held_out_loss(model, tok, tuned)
        return {"name": text, "kind": kind, "recorded": recorded, "measured": measured_loss,
                "abs_diff": abs(recorded - measured_loss), "held_out": metrics["held_out"]}
    sl = metrics["val_slice"]
    measured = slice_loss(model, tok, sl["text"], kind, recipe["block_size"], recipe["mlm_probability"])
    val_text = docs_corpus().val[: recipe.get("max_val_chars")]  # [:None] is all of it
    if kind == "causal-lm":
        validation = slice_loss(model, tok, val_text, kind, recipe["block_size"])
    else:
        validation = slice_loss(model, tok, val_text, kind, recipe["block_size"], recipe["mlm_probability"])
    result = {"name": text, "kind": kind, "recorded": sl["loss"], "measured": measured["loss"],
              "abs_diff": abs(sl["loss"] - measured["loss"]), "validation": validation,
              "recorded_validation": metrics.get("validation")}
    if "val_slice_russian" in metrics:  # a bilingual checkpoint: its Russian slice too
        ru = metrics["val_slice_russian"]
        ru_loss = slice_loss(model, tok, ru["text"], kind, recipe["block_size"])["loss"]
        result["russian"] = {"recorded": ru["loss"], "measured": ru_loss, "abs_diff": abs(ru["loss"] - ru_loss)}
    return result
