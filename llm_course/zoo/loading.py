"""The zoo's checkpoints on disk: where they are, what they recorded, and loading one. Chapter 04 (pretraining).

The shipped checkpoints are Hugging Face folders inside the package (``llm_course/checkpoints/<name>``:
config.json, model.safetensors, tokenizer.json) plus the zoo's own recipe.json (how it was made) and
metrics.json (what it scored). ``load_pretrained`` loads a zoo name, a local folder or (online) a Hub
id as the course's ``GPT`` / ``BERT`` / ``T5`` or as the transformers model, only from safetensors;
``zoo_recipe``, ``checkpoint_dir``, ``read_recipe`` and ``read_metrics`` find a checkpoint and its records.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from llm_course.core.checks import check_choice
from llm_course.core.paths import CHECKPOINTS_DIR
from llm_course.core.runtime import quiet_loading
from llm_course.models.bert import BERT
from llm_course.models.gpt import GPT
from llm_course.text.tokenizer import ByteLevelBPETokenizer
from llm_course.train.recipe import PretrainRecipe
from llm_course.zoo.recipes import KINDS, PICKLE_SUFFIXES, ZOO, TunedRecipe

__all__ = ["shipped_names", "zoo_recipe", "checkpoint_dir", "read_recipe", "read_metrics", "list_checkpoints",
           "load_pretrained"]


# --------------------------------------------------------------------------------------------
# Where checkpoints are
# --------------------------------------------------------------------------------------------


def shipped_names() -> list[str]:
    """The zoo names whose files are present in this installation. Chapter 04."""
    return [n for n in ZOO if (CHECKPOINTS_DIR / n / "config.json").is_file()]


def checkpoint_dir(name: str) -> Path:
    """The folder of shipped checkpoint ``name`` (``FileNotFoundError`` if it is not shipped). Chapter 04."""
    zoo_recipe(name)
    folder = CHECKPOINTS_DIR / name
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{name!r} is in the zoo but its files are not in this installation ({folder}); make them with "
            f"`llm-course zoo train {name} --out DIR` and load DIR"
        )
    return folder


def zoo_recipe(name: str) -> PretrainRecipe | TunedRecipe:
    """The recipe of zoo checkpoint ``name``; an unknown name is a ``ValueError`` that lists the zoo. Chapter 04."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a zoo name (str), e.g. 'course-gpt', got {type(name).__name__}")
    if name in ZOO:
        return ZOO[name]
    close = difflib.get_close_matches(name, list(ZOO), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown zoo checkpoint {name!r}.{hint} The zoo has: {', '.join(ZOO)} "
                     f"(shipped here: {', '.join(shipped_names()) or 'none'})")


def _folder(name_or_folder: str | os.PathLike) -> Path:
    """A zoo name's shipped folder, or the folder itself."""
    text = os.fspath(name_or_folder)
    return checkpoint_dir(text) if text in ZOO else Path(text)


def read_recipe(name_or_folder: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's recipe.json: ``{"name", "recipe", "model_config", "data", "steps", ...}``. Chapter 04.

    ``name_or_folder``: a zoo name ("course-gpt") or a folder made by ``train_checkpoint``. ``"recipe"``
    is ``dataclasses.asdict`` of the ``PretrainRecipe`` or ``TunedRecipe`` it was made from; the rest
    records the data, the run and the software (``FileNotFoundError`` if the folder has none).
    """
    path = _folder(name_or_folder) / "recipe.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the folder was not made by the zoo's train_checkpoint")
    return _read_json(path)


def read_metrics(name_or_folder: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's metrics.json: the scores measured when it was made (``{}`` if it has none). Chapter 04.

    A pretrained checkpoint records ``validation`` and ``val_slice`` (the text ``zoo eval`` re-scores),
    a tuned one ``held_out``; both record ``parameters`` and ``weights_dtype``.
    """
    path = _folder(name_or_folder) / "metrics.json"
    return _read_json(path) if path.is_file() else {}


def list_checkpoints() -> list[dict[str, Any]]:
    """One row per zoo recipe: name, kind, shipped?, parameters, size on disk, validation metrics. Chapter 04."""
    rows = []
    for name, recipe in ZOO.items():
        folder = CHECKPOINTS_DIR / name
        row: dict[str, Any] = {"name": name, "kind": recipe.kind, "shipped": (folder / "config.json").is_file(),
                               "description": recipe.description}
        if row["shipped"]:
            metrics = read_metrics(folder)
            row["parameters"] = metrics.get("parameters")
            row["size_mb"] = round(sum(f.stat().st_size for f in folder.iterdir()) / 1e6, 2)
            row["val_loss"] = metrics.get("validation", {}).get("loss")
            row["val_bits_per_char"] = metrics.get("validation", {}).get("bits_per_char")
            row["held_out_loss"] = metrics.get("held_out", {}).get("loss")
        rows.append(row)
    return rows


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
        raise TypeError(f"name_or_path must be a zoo name, a folder or a Hub id (str), "
                        f"got {type(name_or_path).__name__}")
    if kind is not None:
        check_choice("kind", kind, KINDS, hint="or None: read it from the checkpoint")
    text = os.fspath(name_or_path)
    if text in ZOO:
        folder: Path | None = checkpoint_dir(text)
    elif Path(text).exists():
        folder = Path(text)
    elif text.startswith("course-"):
        zoo_recipe(text)  # raises: unknown zoo name, with the list
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
                f"machine is offline (HF_HUB_OFFLINE=1). Use a shipped checkpoint: "
                f"{', '.join(shipped_names()) or 'none'}"
                " (llm_course.zoo.loading.load_pretrained('course-gpt')), or a local folder"
            )
        source = text
        kind = kind or "causal-lm"
    model = _load_hf_model(source, kind, text, local=folder is not None)
    from transformers import AutoTokenizer

    if as_course_model:
        from llm_course.models.t5 import T5

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
    import transformers
    from packaging.version import Version
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoModelForSeq2SeqLM,
    )

    auto = {"causal-lm": AutoModelForCausalLM, "masked-lm": AutoModelForMaskedLM,
            "seq2seq-lm": AutoModelForSeq2SeqLM}[kind]
    # transformers 4.56 renamed from_pretrained's torch_dtype= to dtype=; before it, dtype= is taken for a config
    # attribute (and a torch.dtype in the config breaks its JSON form), so the older name is used there.
    new_name = Version(transformers.__version__).release >= (4, 56)
    as_float32 = {"dtype" if new_name else "torch_dtype": torch.float32}
    try:
        with quiet_loading(local):  # a local file loads in milliseconds: no progress bar
            return auto.from_pretrained(source, **as_float32, use_safetensors=True, local_files_only=local)
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
# Small file helpers
# --------------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-save or re-train the checkpoint") from e
