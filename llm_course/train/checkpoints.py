"""Training checkpoints that resume exactly: one safetensors file per save. Chapter 04 (pretraining).

``save_checkpoint`` writes the weights (tied ones once), AdamW's state and the random generators'
states as tensors, and the step, the optimizer's hyper-parameters and any JSON-able ``extra`` (``train``
keeps its history there) as JSON in the file's header; the write is atomic (a temporary file renamed over
the old one). ``load_checkpoint`` checks the whole file (missing, truncated, a pickle, another model's
names or shapes: clear errors) before restoring anything, and returns a ``Checkpoint`` (step, extra,
path). No pickle anywhere: loading a checkpoint cannot run code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from llm_course.core.checks import check_int

__all__ = ["Checkpoint", "CHECKPOINT_NAME", "save_checkpoint", "load_checkpoint"]

CHECKPOINT_NAME = "checkpoint.safetensors"  # the file train() writes inside cfg.checkpoint_dir
_FORMAT_KEY = "llm_course.checkpoint"  # safetensors metadata key holding the checkpoint's JSON part
_FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------
# Checkpoints: safetensors for the tensors, JSON (in the safetensors header) for everything else
# --------------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """What ``load_checkpoint`` returns besides the restored objects. Chapter 04 (pretraining).

    step: updates done when it was saved. extra: the JSON-able dict given to ``save_checkpoint``
    (``train`` keeps its history there). path: the file it was read from.
    """

    step: int
    extra: dict[str, Any]
    path: Path


def _model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with each tensor once: a tied weight is stored under its first name only."""
    out, seen = {}, set()
    for name, t in model.state_dict(keep_vars=True).items():  # keep_vars: the Parameter objects themselves
        if id(t) not in seen:
            seen.add(id(t))
            out[name] = t.detach()
    return out


def _optimizer_param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    """The model's name of every parameter in the optimizer, group by group."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    groups = []
    for group in optimizer.param_groups:
        if any(id(p) not in name_of for p in group["params"]):
            raise ValueError("the optimizer holds a parameter that is not in the model; build it with "
                             "configure_optimizer(model, ...) for this model")
        groups.append([name_of[id(p)] for p in group["params"]])
    return groups


def _json_safe(value: Any) -> Any:
    """Tuples to lists, tensors and NumPy numbers to Python numbers, paths to str (for a checkpoint's JSON)."""
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return value


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    step: int,
    extra: dict[str, Any] | None = None,
    generator: torch.Generator | None = None,
) -> Path:
    """Save everything needed to resume training, as one safetensors file. Chapter 04 (pretraining).

    Tensors: ``model.<name>`` (weights; tied ones once), ``optimizer.<param name>.<key>`` (AdamW's
    ``exp_avg``, ``exp_avg_sq``, ``step``), ``rng.torch_cpu``, ``rng.torch_cuda.<i>`` and ``rng.generator``
    (the state of the ``generator`` that batches are drawn from). The rest is JSON in the file's header:
    the step, the optimizer's hyper-parameters, Python's and NumPy's RNG states and ``extra``.
    The file is written beside ``path`` under a temporary name and renamed over it with ``os.replace``
    (atomic): a crash in the middle of a save leaves the previous checkpoint intact.
    """
    from safetensors.torch import save_file

    path = Path(path)
    check_int("step", step, minimum=0)
    tensors = {f"model.{k}": v for k, v in _model_tensors(model).items()}
    meta: dict[str, Any] = {"version": _FORMAT_VERSION, "step": step, "extra": _json_safe(extra or {})}
    config = getattr(model, "config", None)
    if dataclasses.is_dataclass(config):
        meta["model_config"] = _json_safe(dataclasses.asdict(config))  # for information only

    if optimizer is not None:
        names = _optimizer_param_names(model, optimizer)
        state = optimizer.state_dict()  # {"state": {index: {key: value}}, "param_groups": [...]}
        flat_names = [n for group in names for n in group]  # the optimizer numbers parameters in this order
        scalars: dict[str, dict[str, Any]] = {}
        for index, values in state["state"].items():
            for key, value in values.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optimizer.{flat_names[index]}.{key}"] = value
                else:
                    scalars.setdefault(flat_names[index], {})[key] = _json_safe(value)
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": group_names}
                  for g, group_names in zip(state["param_groups"], names)]
        meta["optimizer"] = {"class": type(optimizer).__name__, "param_groups": _json_safe(groups),
                             "scalars": scalars}

    # Random number generators: the dropout masks and the batches of the next step depend on them.
    tensors["rng.torch_cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.torch_cuda.{i}"] = s
    if generator is not None:
        tensors["rng.generator"] = generator.get_state()
    version, mt_state, gauss = random.getstate()
    np_state = np.random.get_state()
    meta["rng"] = {"python": [version, list(mt_state), gauss],
                   "numpy": [np_state[0], np_state[1].tolist(), *(_json_safe(x) for x in np_state[2:])]}

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    metadata = {"format": "pt", _FORMAT_KEY: json.dumps(meta)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # on disk before the rename, so a power cut cannot leave an empty file
        os.replace(tmp, path)  # atomic: readers see the old checkpoint or the new one, never half of one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


_PICKLE_HELP = (
    "It looks like a pickle file (torch.save). This course never unpickles: loading a pickle can run "
    "arbitrary code hidden in the file. To convert a file you trust: "
    "state = torch.load(path, weights_only=True); safetensors.torch.save_file(state, 'model.safetensors')"
)


def _read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the JSON header of a checkpoint, with clear errors for everything else."""
    from safetensors import safe_open

    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; pass the file (or the checkpoint_dir) that "
                                "save_checkpoint()/train() wrote")
    with open(path, "rb") as f:
        head = f.read(8)
    # torch.save writes a zip archive ("PK\x03\x04") or, in old versions, a raw pickle (0x80, protocol)
    if head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
        raise ValueError(f"{path} is not a safetensors checkpoint. {_PICKLE_HELP}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error type for truncated or corrupt files
        raise ValueError(f"{path} is not a valid safetensors file ({e}): it is truncated or corrupt (an "
                         "interrupted copy?); use an earlier checkpoint") from e
    if _FORMAT_KEY not in metadata:
        raise ValueError(f"{path} is a safetensors file but not a training checkpoint (no {_FORMAT_KEY!r} "
                         "header); model weights saved with save_pretrained() load with from_pretrained()")
    try:
        meta = json.loads(metadata[_FORMAT_KEY])
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: the checkpoint's JSON header is corrupt ({e})") from e
    return tensors, meta


def _load_optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module, tensors: dict[str, torch.Tensor],
                          meta: dict[str, Any]) -> None:
    """Rebuild ``optimizer.state_dict()`` from the flat tensors (named by parameter) and load it."""
    saved = meta["optimizer"]  # load_checkpoint has checked that it exists and matches the optimizer
    names = _optimizer_param_names(model, optimizer)
    per_param: dict[str, dict[str, Any]] = {}  # "optimizer.h.0.ln_1.weight.exp_avg" -> [name][exp_avg]
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            name, state_key = key[len("optimizer."):].rsplit(".", 1)
            per_param.setdefault(name, {})[state_key] = value
    for name, values in saved["scalars"].items():
        per_param.setdefault(name, {}).update(values)
    flat_names = [n for group in names for n in group]  # the optimizer numbers parameters in this order
    state = {index: per_param[name] for index, name in enumerate(flat_names) if name in per_param}
    groups, start = [], 0
    for g in saved["param_groups"]:
        n = len(g["params"])
        hyper = {k: tuple(v) if isinstance(v, list) else v for k, v in g.items()}  # JSON made betas a list
        groups.append({**hyper, "params": list(range(start, start + n))})
        start += n
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Put every random number generator back where it was when the checkpoint was saved."""
    torch.set_rng_state(tensors["rng.torch_cpu"])
    cuda = [tensors[f"rng.torch_cuda.{i}"] for i in range(torch.cuda.device_count())
            if f"rng.torch_cuda.{i}" in tensors] if torch.cuda.is_available() else []
    if cuda:
        torch.cuda.set_rng_state_all(cuda)
    version, mt_state, gauss = meta["rng"]["python"]
    random.setstate((version, tuple(mt_state), gauss))
    name, keys, pos, has_gauss, cached = meta["rng"]["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
    restore_rng: bool = True,
) -> Checkpoint:
    """Restore a ``save_checkpoint`` file into ``model`` (and ``optimizer``, ``generator``). Chapter 04.

    ``path``: the file, or the directory holding ``checkpoint.safetensors``. With ``restore_rng`` the
    torch, Python and NumPy random generators are set back too, so training continues exactly as if it
    had never stopped. Clear errors (FileNotFoundError / ValueError) for a missing file, a truncated or
    corrupt one, a pickle file (refused: unpickling can run code), or a checkpoint of another model
    (names or shapes that do not match). Nothing is changed unless the whole file checks out.
    """
    path = Path(path)
    tensors, meta = _read_checkpoint(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    expected = _model_tensors(model)
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path} is a checkpoint of a different model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}; build the model with the config it was trained with")
    wrong = [f"{k}: {tuple(weights[k].shape)} in the file vs {tuple(v.shape)} in the model"
             for k, v in expected.items() if weights[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{path} has tensors whose shapes do not match the model ({'; '.join(wrong[:3])}); "
                         "build the model with the config it was trained with (see its 'model_config')")
    if generator is not None and "rng.generator" not in tensors:
        raise ValueError(f"{path} holds no data-generator state (it was saved without generator=...)")

    if optimizer is not None and meta.get("optimizer") is None:
        raise ValueError(f"{path} holds no optimizer state (saved with optimizer=None); pass optimizer=None")
    if optimizer is not None and _optimizer_param_names(model, optimizer) != [
            g["params"] for g in meta["optimizer"]["param_groups"]]:
        raise ValueError(f"{path}: the optimizer's parameter groups do not match the checkpoint's (trainable "
                         "parameters or weight-decay groups differ); build it with configure_optimizer()")

    model.load_state_dict(weights, strict=False)  # strict=False: a tied weight comes back through its twin
    if optimizer is not None:
        _load_optimizer_state(optimizer, model, tensors, meta)
    if restore_rng:
        _restore_rng(tensors, meta)
    if generator is not None:
        generator.set_state(tensors["rng.generator"])
    return Checkpoint(step=int(meta["step"]), extra=meta.get("extra", {}), path=path)
