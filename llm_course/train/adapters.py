"""Bottleneck adapters: train small layers inside a frozen model. Chapter 06 (parameter-efficient fine-tuning).

Houlsby et al. 2019 ("Parameter-Efficient Transfer Learning for NLP") keep every weight of a pretrained
transformer frozen and insert, in every block, two small **adapters**. An adapter is a bottleneck MLP
with its own residual connection:

    adapter(h) = h + up(act(down(h)))        down: d -> m,  up: m -> d,  m << d (the "bottleneck")

One goes right after the attention output projection and one right after the feed-forward output, i.e.
at the end of each residual branch, *before* the block adds the branch to the residual stream. For the
course's pre-LayerNorm GPT a block becomes

    x = x + adapter_attn(out_proj(attention(ln_1(x))))
    x = x + adapter_mlp(down_proj(act(up_proj(ln_2(x)))))

Only the adapters train (Houlsby also trains the LayerNorms: ``train_layer_norms=True``). Each adapter
has 2*d*m + m + d parameters (two weight matrices and two biases), so L blocks add 2*L*(2*d*m + m + d):
for the shipped course-gpt (d = 160, L = 5) with m = 16 that is 52,960 trainable parameters, 2.3% of the
adapted model (tests/test_adapters.py checks the formula on it).

**The up-projection starts at zero** (weight and bias), so every adapter starts as the identity and
the adapted model computes exactly what the base model computed: fine-tuning starts from the
pretrained model, not from a damaged one. (The down-projection keeps PyTorch's usual random init; at the
very first step its gradient is exactly zero, because it flows back through the zero up-projection, and
it becomes non-zero once the first optimizer step has moved ``up``.)

What the manual gets wrong (ERRATA section 6): it assigns the adapters as attributes
(``layer.attn_adapter = ...``) but never calls them in any forward pass, so they train nothing. Here an
adapter is put in the forward pass by **wrapping the sub-layer** it follows: ``attn.out_proj`` becomes
``AdaptedLayer(out_proj, adapter)``, whose forward is ``adapter(out_proj(x))``. Neither the blocks'
classes nor their forward change, so everything that calls the sub-layers itself uses the adapters too,
for example the lean decode loop of chapter 07 (``llm_course.infer.static_cache``) behind ``generate``.

Adapters versus LoRA (``llm_course.train.lora``): LoRA adds a low-rank update *in parallel* to a weight,
W + B A, which can be merged into W after training: zero extra cost at inference. Adapters are extra
*sequential*, non-linear layers: they cannot be merged away, and every token pays two small matrix
products per adapter (a little latency, most visible when decoding one token at a time). In exchange an
adapter works after any layer, whatever computes it (a quantized layer, for instance: a frozen 4-bit
model with float adapters on top, in the spirit of QLoRA).

Like Houlsby's, the adapter sees the sub-layer's output before the block's dropout and residual add
(for dropout-free models such as the course's, the order does not matter).

Supported models: the course's ``GPT`` and ``BERT`` (blocks with ``attn.out_proj`` and
``mlp.down_proj``) and GPT-2-style transformers models (``GPT2LMHeadModel``, ``GPT2Model``... blocks with
``attn.c_proj`` and ``mlp.c_proj``, GPT-2's ``Conv1D`` layers).

    names = add_adapters(model, bottleneck=16)      # wraps, freezes the rest; returns the wrapped layers
    ... train: only parameters with requires_grad are updated ...
    save_file(adapter_state_dict(model), "adapters.safetensors")   # from safetensors.torch
    remove_adapters(model)                          # back to the base model

While adapters are in, the state-dict names of the wrapped layers change (``h.0.attn.out_proj.weight``
is now ``h.0.attn.out_proj.layer.weight``): save only the adapters, or remove them before
``save_pretrained`` / ``to_hf``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from llm_course.core.checks import check_bool, check_choice, check_int
from llm_course.nn.attention import ACTIVATIONS

__all__ = [
    "BottleneckAdapter",
    "AdaptedLayer",
    "add_adapters",
    "remove_adapters",
    "adapter_state_dict",
    "load_adapter_state_dict",
    "PLACES",
    "LAYOUTS",
]

# Where adapters can go in a block: after the attention output, after the feed-forward output.
PLACES = ("attention", "mlp")

# Supported block layouts: for each, the sub-layer (path inside a block) that ends each residual branch.
# A "block" is any module that has both paths; they are found by name, so GPT2Model, GPT2LMHeadModel and
# GPT-2's relatives with the same layout work alike.
LAYOUTS: dict[str, dict[str, str]] = {
    "course GPT / BERT (llm_course.models.gpt.GPT, llm_course.models.bert.BERT)":
        {"attention": "attn.out_proj", "mlp": "mlp.down_proj"},
    "GPT-2-style transformers model (GPT2LMHeadModel, GPT2Model, ...)":
        {"attention": "attn.c_proj", "mlp": "mlp.c_proj"},
}


# --------------------------------------------------------------------------------------------
# The adapter and the wrapper that puts it in the forward pass
# --------------------------------------------------------------------------------------------


class BottleneckAdapter(nn.Module):
    """``x + up(act(down(x)))``: a bottleneck MLP with its own residual. Chapter 06 (parameter-efficient fine-tuning).

    dim: the model width d (input and output size). bottleneck: the hidden size m, 1 <= m < d.
    activation: a name from ``llm_course.nn.attention.ACTIVATIONS`` ("gelu", "gelu_tanh", "relu", "silu").
    ``up`` starts at zero (weight and bias), so a new adapter is exactly the identity.
    """

    def __init__(self, dim: int, bottleneck: int, activation: str = "gelu") -> None:
        super().__init__()
        check_int("dim", dim, minimum=2)
        check_int("bottleneck", bottleneck, 1, dim - 1, hint=f"narrower than the model's dim={dim}")
        check_choice("activation", activation, sorted(ACTIVATIONS))
        self.activation = activation
        self.down = nn.Linear(dim, bottleneck)  # d -> m (PyTorch's default init)
        self.act = ACTIVATIONS[activation]
        self.up = nn.Linear(bottleneck, dim)  # m -> d, zero: the adapter starts as the identity
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d) -> (..., d)."""
        return x + self.up(self.act(self.down(x)))  # (..., d) -> (..., m) -> (..., d), plus the skip

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


class AdaptedLayer(nn.Module):
    """A layer followed by its adapter: ``adapter(layer(x))``. Chapter 06 (parameter-efficient fine-tuning).

    ``layer`` is the original module (``nn.Linear``, GPT-2's ``Conv1D``, a quantized layer...), kept
    unchanged and reachable as ``.layer``. To remove the adapter put the layer back where the wrapper is,
    e.g. ``block.attn.out_proj = block.attn.out_proj.layer``; ``remove_adapters(model)`` does that for
    every wrapped layer.
    """

    def __init__(self, layer: nn.Module, adapter: BottleneckAdapter) -> None:
        super().__init__()
        if not isinstance(layer, nn.Module) or not isinstance(adapter, BottleneckAdapter):
            raise TypeError(
                f"AdaptedLayer(layer, adapter) needs an nn.Module and a BottleneckAdapter, got "
                f"{type(layer).__name__} and {type(adapter).__name__}"
            )
        self.layer = layer
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Whatever ``layer`` takes -> (..., d): the layer's output, then the adapter."""
        return self.adapter(self.layer(x))


# --------------------------------------------------------------------------------------------
# Adding, removing, saving
# --------------------------------------------------------------------------------------------


def _find_targets(model: nn.Module) -> list[tuple[str, str]]:
    """(place, module name) of every sub-layer that can take an adapter, block by block, in order."""
    for paths in LAYOUTS.values():
        targets = []
        for name, module in model.named_modules():
            if all(_has_submodule(module, path) for path in paths.values()):
                prefix = f"{name}." if name else ""
                targets += [(place, prefix + path) for place, path in paths.items()]
        if targets:
            return targets
    layouts = "; ".join(f"{k}: blocks with {' and '.join(v.values())}" for k, v in LAYOUTS.items())
    raise ValueError(
        f"add_adapters does not know where to put adapters in a {type(model).__name__}: it supports {layouts}"
    )


def _has_submodule(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def _output_size(layer: nn.Module, name: str) -> int:
    """d, the number of features ``layer`` outputs (nn.Linear and quantized layers: out_features; Conv1D: nf)."""
    for attribute in ("out_features", "nf"):
        value = getattr(layer, attribute, None)
        if isinstance(value, int):
            return value
    raise TypeError(
        f"cannot tell the output size of {name} ({type(layer).__name__}): it has neither out_features "
        "(nn.Linear) nor nf (GPT-2's Conv1D)"
    )


def _float_dtype_and_device(layer: nn.Module) -> tuple[torch.dtype, torch.device]:
    """The dtype and device the adapter should use: those of the layer's first floating-point tensor."""
    for tensor in list(layer.parameters()) + list(layer.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype, tensor.device
    return torch.get_default_dtype(), torch.device("cpu")


def add_adapters(
    model: nn.Module,
    bottleneck: int = 16,
    where: tuple[str, ...] | list[str] | str = PLACES,
    train_layer_norms: bool = False,
    activation: str = "gelu",
) -> list[str]:
    """Insert a ``BottleneckAdapter`` in every block and freeze the rest. Chapter 06 (parameter-efficient fine-tuning).

    Changes ``model`` in place and returns the names of the wrapped layers (e.g. ``"h.0.attn.out_proj"``).
    bottleneck: the adapters' hidden size m, 1 <= m < d (d: the model width).
    where: which branches get an adapter, any of ("attention", "mlp") (Houlsby: both).
    train_layer_norms: also train the LayerNorms (as Houlsby et al. do); otherwise only the adapters train.
    activation: the adapters' non-linearity (a name from ``llm_course.nn.attention.ACTIVATIONS``).

    Every parameter except the adapters' (and the LayerNorms' when asked) gets ``requires_grad=False``.
    Raises TypeError/ValueError, before changing anything, for a bad argument, a model whose layout is not
    supported, or a model that already has adapters.
    """
    # ---- check everything first: a failed call leaves the model as it was
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}")
    if isinstance(where, str):
        where = (where,)
    if not isinstance(where, (tuple, list)) or not all(isinstance(w, str) for w in where):
        raise TypeError(f"where must be a tuple of names from {PLACES}, got {where!r}")
    if not where:
        raise ValueError(f"where is empty: name at least one place from {PLACES}")
    unknown = [w for w in where if w not in PLACES]
    if unknown:
        raise ValueError(f"unknown place(s) {unknown} in where; choose from {PLACES}")
    check_bool("train_layer_norms", train_layer_norms)
    check_choice("activation", activation, sorted(ACTIVATIONS))
    check_int("bottleneck", bottleneck)
    if any(isinstance(m, AdaptedLayer) for m in model.modules()):
        raise ValueError(
            "this model already has adapters; call remove_adapters(model) first to replace them, or keep training these"
        )
    targets = [(place, name) for place, name in _find_targets(model) if place in where]
    sizes = {name: _output_size(model.get_submodule(name), name) for _, name in targets}
    for name, dim in sizes.items():
        if not 1 <= bottleneck < dim:
            raise ValueError(
                f"bottleneck must be in [1, {dim}) for this model (width d = {dim} at {name}): the adapter "
                f"squeezes d features into m < d, got {bottleneck}"
            )

    # ---- wrap each target layer: parent.<attr> = AdaptedLayer(layer, adapter)
    for _, name in targets:
        parent_name, _, attribute = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        layer = getattr(parent, attribute)
        dtype, device = _float_dtype_and_device(layer)
        adapter = BottleneckAdapter(sizes[name], bottleneck, activation).to(device=device, dtype=dtype)
        setattr(parent, attribute, AdaptedLayer(layer, adapter).train(model.training))

    # ---- freeze everything, then unfreeze what trains
    for p in model.parameters():
        p.requires_grad_(False)
    for module in model.modules():
        if isinstance(module, BottleneckAdapter) or (train_layer_norms and isinstance(module, nn.LayerNorm)):
            for p in module.parameters():
                p.requires_grad_(True)
    return [name for _, name in targets]


def remove_adapters(model: nn.Module) -> list[str]:
    """Put every wrapped layer back in place of its ``AdaptedLayer``. Chapter 06 (parameter-efficient fine-tuning).

    Returns the names of the layers unwrapped ([] if the model had no adapters). The adapters are
    discarded (save them first with ``adapter_state_dict``); unlike LoRA they cannot be merged into the
    weights, because they are non-linear. Every parameter of the model becomes trainable again
    (``requires_grad=True``), as in a freshly built model.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}")
    names = [name for name, m in model.named_modules() if isinstance(m, AdaptedLayer)]
    for name in names:
        parent_name, _, attribute = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, attribute, getattr(parent, attribute).layer)
    if names:
        for p in model.parameters():
            p.requires_grad_(True)
    return names


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors (and trainable LayerNorms'). Chapter 06 (parameter-efficient fine-tuning).

    That is everything fine-tuning changed, so all that needs saving. Keys are the model's own parameter
    names (``"h.0.attn.out_proj.adapter.down.weight"``...); the tensors are detached and share memory with
    the model, like ``state_dict()``. LayerNorm weights are included when they train
    (``add_adapters(..., train_layer_norms=True)``). Save it with ``safetensors.torch.save_file``; load it
    into a model adapted the same way with ``load_adapter_state_dict``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}")
    if not any(isinstance(m, BottleneckAdapter) for m in model.modules()):
        raise ValueError("this model has no adapters; call add_adapters(model) first")
    state: dict[str, torch.Tensor] = {}
    for module_name, module in model.named_modules():
        is_adapter = isinstance(module, BottleneckAdapter)
        is_trained_norm = isinstance(module, nn.LayerNorm) and any(p.requires_grad for p in module.parameters())
        if is_adapter or is_trained_norm:
            for name, p in module.named_parameters():
                state[f"{module_name}.{name}" if module_name else name] = p.detach()
    return state


def load_adapter_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy saved adapter tensors into an adapted model. Chapter 06 (parameter-efficient fine-tuning).

    ``model`` must have been adapted the same way (same bottleneck, places and ``train_layer_norms``) as
    the one ``state`` came from; missing or unexpected names and wrong shapes raise a ValueError before
    anything is copied.
    """
    expected = adapter_state_dict(model)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"the saved adapters do not match this model's: missing {missing[:4]}{'...' if len(missing) > 4 else ''}, "
            f"unexpected {unexpected[:4]}{'...' if len(unexpected) > 4 else ''}; call add_adapters with the settings "
            "used when they were saved (bottleneck, where, train_layer_norms)"
        )
    wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}"
             for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        raise ValueError(f"shape mismatch (saved vs model) for {wrong[:4]}; was a different bottleneck used?")
    with torch.no_grad():
        for k, v in expected.items():
            v.copy_(state[k])
