"""Attention data: run a model once and keep its attention weights with readable token labels. Chapter 03.

``collect_attentions(model, tokenizer, text)`` works with the course's GPT, BERT and T5 and with
transformers models: it tokenizes the text (``llm_course.viz.tokens``), runs the model once in eval mode
with ``output_attentions=True`` (switching 'sdpa' attention to 'eager' for the call, since only eager
attention returns its weights) and returns an ``AttentionData``: per kind of attention (``KINDS``: GPT's
and BERT's "self", T5's "encoder", "decoder" and "cross"), a (layers, heads, q_len, k_len) array, with
the labels of the rows and columns. A T5 decoder is fed its text shifted right, as in training.

The figures drawn from it are in ``llm_course.viz.figures``; the widget that browses it is
``llm_course.widgets.attention_explorer``. No ipywidgets here.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from llm_course.core.checks import check_index
from llm_course.core.i18n import Message
from llm_course.core.runtime import eval_mode
from llm_course.models.modeling import context_length, is_encoder_decoder
from llm_course.viz.tokens import is_byte_level, readable_labels, token_strings, tokenize

__all__ = ["AttentionData", "KINDS", "NO_CONTEXT_LIMIT_CAP", "collect_attentions"]

# kind -> (the output field it is read from, a label for people)
KINDS: dict[str, tuple[str, str]] = {
    "self": ("attentions", "self-attention"),
    "encoder": ("encoder_attentions", "encoder self-attention"),
    "decoder": ("decoder_attentions", "decoder self-attention"),
    "cross": ("cross_attentions", "cross-attention (decoder → encoder)"),
}

# The longest text shown for a model without a fixed context (T5's relative positions): the attention
# maps of a longer text would take (layers x heads x T x T) floats of memory and be unreadable anyway.
NO_CONTEXT_LIMIT_CAP = 512


# --------------------------------------------------------------------------------------
# Running the model
# --------------------------------------------------------------------------------------


def _decoder_start_id(model: torch.nn.Module, tokenizer: Any) -> int:
    """The token an encoder-decoder's decoder starts from (T5 uses its pad token)."""
    config = getattr(model, "config", None)
    generation = getattr(model, "generation_config", None)
    for value in (
        getattr(config, "decoder_start_token_id", None),
        getattr(generation, "decoder_start_token_id", None),
        getattr(config, "pad_token_id", None),
        getattr(tokenizer, "pad_token_id", None),
    ):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    raise ValueError(
        f"{type(model).__name__} is an encoder-decoder, but neither model.config."
        "decoder_start_token_id nor a pad token id is set, so the decoder has no start "
        "token; set model.config.decoder_start_token_id"
    )


@contextmanager
def _eager_attention(model: torch.nn.Module) -> Iterator[None]:
    """Switch a Hugging Face model to 'eager' attention for the duration of a call.

    transformers' default 'sdpa' (and flash) attention never materialises the weight
    matrix, so with it ``output_attentions=True`` returns an empty tuple. 'eager' computes
    softmax(QKᵀ/√d) explicitly. The model's own setting is restored afterwards.
    """
    config = getattr(model, "config", None)
    original = getattr(config, "_attn_implementation", None)
    switch = isinstance(original, str) and original != "eager" and hasattr(model, "set_attn_implementation")
    if switch:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(original)


def _field(output: Any, name: str) -> Any:
    """``output.name`` for ModelOutput objects, dataclasses and plain dicts alike."""
    if isinstance(output, Mapping):
        return output.get(name)
    return getattr(output, name, None)


def _stack(layers: Sequence[torch.Tensor], kind: str, q_len: int, k_len: int) -> np.ndarray:
    """One (1, heads, q, k) tensor per layer -> a (layers, heads, q, k) float32 array."""
    arrays = []
    for i, a in enumerate(layers):
        if not isinstance(a, torch.Tensor) or a.dim() != 4 or a.shape[0] != 1 or tuple(a.shape[2:]) != (q_len, k_len):
            shape = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
            raise ValueError(
                f"the model's {KINDS[kind][0]}[{i}] has shape {shape}; expected "
                f"(batch=1, heads, {q_len}, {k_len}), one tensor per layer"
            )
        arrays.append(a[0].detach().float().cpu().numpy())
    return np.stack(arrays)


@dataclass
class AttentionData:
    """Token labels and attention weights of one forward pass. Chapter 03 (attention).

    ``attentions`` maps a kind ('self', 'encoder', 'decoder', 'cross', see ``KINDS``) to a
    float32 array of shape ``(layers, heads, q_len, k_len)``. ``tokens`` label the input
    (encoder) sequence, ``decoder_tokens`` the decoder's input (T5 only); ``raw_tokens`` are
    the tokenizer's own strings ('Ġthe') behind the readable ``tokens`` ('·the').
    """

    text: str
    token_ids: list[int]
    tokens: list[str]
    attentions: dict[str, np.ndarray]
    decoder_text: str | None = None
    decoder_token_ids: list[int] | None = None
    decoder_tokens: list[str] | None = None
    model_name: str = ""
    byte_level: bool = False
    raw_tokens: list[Any] = field(default_factory=list)

    def __repr__(self) -> str:
        shapes = {k: tuple(v.shape) for k, v in self.attentions.items()}
        return f"AttentionData(model={self.model_name!r}, tokens={self.tokens!r}, attentions={shapes})"

    @property
    def nbytes(self) -> int:
        """Memory held by the attention arrays, in bytes."""
        return sum(int(a.nbytes) for a in self.attentions.values())

    @property
    def kinds(self) -> list[str]:
        """The kinds of attention this model has, in ``KINDS`` order."""
        return [k for k in KINDS if k in self.attentions]

    def check_kind(self, kind: str) -> None:
        """Raise a ValueError naming the valid kinds unless this data has ``kind``."""
        if kind not in self.attentions:
            raise ValueError(
                f"unknown attention kind {kind!r} for {self.model_name or 'this model'}: "
                f"choose one of {self.kinds}"
            )

    def num_layers(self, kind: str) -> int:
        """How many layers have attention of this kind."""
        self.check_kind(kind)
        return int(self.attentions[kind].shape[0])

    def num_heads(self, kind: str) -> int:
        """How many heads each layer of this kind has."""
        self.check_kind(kind)
        return int(self.attentions[kind].shape[1])

    def query_tokens(self, kind: str) -> list[str]:
        """Labels of the rows (the tokens doing the looking)."""
        self.check_kind(kind)
        return list(self.decoder_tokens or []) if kind in ("decoder", "cross") else list(self.tokens)

    def key_tokens(self, kind: str) -> list[str]:
        """Labels of the columns (the tokens being looked at)."""
        self.check_kind(kind)
        return list(self.decoder_tokens or []) if kind == "decoder" else list(self.tokens)

    def weights(self, kind: str, layer: int, head: int | None = None) -> np.ndarray:
        """Weights of one layer: ``(heads, q, k)``, or ``(q, k)`` for one ``head``.

        An index out of range is a ValueError that names the valid range.
        """
        check_index("layer", layer, self.num_layers(kind), hint=f"the model has {self.num_layers(kind)} "
                    f"{KINDS[kind][1]} layers")
        if head is None:
            return self.attentions[kind][layer]
        check_index("head", head, self.num_heads(kind), hint=f"the model has {self.num_heads(kind)} heads per layer")
        return self.attentions[kind][layer, head]


def collect_attentions(
    model: torch.nn.Module,
    tokenizer: Any,
    text: str,
    *,
    decoder_text: str | None = None,
    max_length: int | None = None,
    byte_level: bool | None = None,
    model_name: str | None = None,
) -> AttentionData:
    """Run ``model`` on ``text`` once and return its attention weights. Chapter 03 (attention).

    Works with any model whose forward takes ``input_ids`` and ``output_attentions=True``
    and returns ``.attentions`` (GPT/BERT style) or ``.encoder_attentions``,
    ``.decoder_attentions``, ``.cross_attentions`` (T5 style) with one
    ``(batch, heads, q_len, k_len)`` tensor per layer, as Hugging Face models do.

    * A T5-style model also needs decoder input. Its decoder is fed ``decoder_text``
      (default: ``text`` itself) the way it is in training with ``labels``: shifted right
      behind the decoder-start token, so position ``t`` sees target tokens ``< t``.
    * Hugging Face models that use 'sdpa' attention are switched to 'eager' for the call
      (and back): only eager attention returns its weights.
    * The model runs in eval mode (dropout off, so every row sums to 1) without gradients;
      its train/eval mode is restored afterwards.
    * ``max_length`` defaults to the model's context (``llm_course.models.modeling.context_length``),
      or ``NO_CONTEXT_LIMIT_CAP`` (512) tokens for a model without one (T5); a longer text is a ValueError.
    * ``byte_level`` says whether the tokens are written in GPT-2's byte alphabet, so that
      'Ġthe' is shown as '·the' (None: detect it from the tokenizer).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, value in (("text", text), ("decoder_text", decoder_text)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if not text:
        raise ValueError(Message("the text is empty: type a sentence to see its attention"))
    name = model_name or type(model).__name__
    byte_level = is_byte_level(tokenizer) if byte_level is None else byte_level
    limit = max_length if max_length is not None else (context_length(model) or NO_CONTEXT_LIMIT_CAP)

    ids, raw = tokenize(tokenizer, text)
    if not ids:
        raise ValueError(Message("the tokenizer turned {text} into no tokens: type some text", text=repr(text)))
    if len(ids) > limit:
        if max_length is not None:
            raise ValueError(Message("the text is {n} tokens long but {name} reads at most {limit} tokens "
                                     "(max_length): shorten the text", n=len(ids), name=name, limit=limit))
        raise ValueError(Message("the text is {n} tokens long but {name} reads at most {limit} tokens (its "
                                 "context length): shorten the text", n=len(ids), name=name, limit=limit))
    data = AttentionData(
        text=text,
        token_ids=ids,
        tokens=readable_labels(tokenizer, raw, byte_level),
        attentions={},
        model_name=name,
        byte_level=byte_level,
        raw_tokens=list(raw),
    )

    params = inspect.signature(model.forward).parameters
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if "output_attentions" not in params and not takes_kwargs:
        raise TypeError(
            f"{name}.forward does not take output_attentions=True, so its attention "
            "weights cannot be read"
        )
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)  # (batch=1, T)
    inputs: dict[str, Any] = {"input_ids": input_ids, "output_attentions": True}
    if "attention_mask" in params:
        inputs["attention_mask"] = torch.ones_like(input_ids)  # one text, no padding
    if "use_cache" in params:
        inputs["use_cache"] = False

    encoder_decoder = is_encoder_decoder(model)
    if encoder_decoder:
        target = text if decoder_text is None else decoder_text
        target_ids, _ = tokenize(tokenizer, target)
        # Teacher forcing: decoder input = [start] + target[:-1] (the labels shifted right).
        dec_ids = [_decoder_start_id(model, tokenizer)] + target_ids[:-1]
        if len(dec_ids) > limit:
            raise ValueError(
                f"the decoder text is {len(dec_ids)} tokens long but {name} reads at most "
                f"{limit} tokens: shorten it"
            )
        dec_raw = token_strings(tokenizer, dec_ids)
        data.decoder_text = target
        data.decoder_token_ids = dec_ids
        data.decoder_tokens = readable_labels(tokenizer, dec_raw, byte_level)
        inputs["decoder_input_ids"] = torch.tensor([dec_ids], dtype=torch.long, device=device)

    with eval_mode(model):
        with torch.no_grad(), _eager_attention(model):
            output = model(**inputs)

    n_enc = len(ids)
    n_dec = len(data.decoder_token_ids or [])
    wanted = ("encoder", "decoder", "cross") if encoder_decoder else ("self",)
    sizes = {"self": (n_enc, n_enc), "encoder": (n_enc, n_enc), "decoder": (n_dec, n_dec), "cross": (n_dec, n_enc)}
    for kind in wanted:
        layers = _field(output, KINDS[kind][0])
        if layers:  # None or () when the model computed no weights
            data.attentions[kind] = _stack(layers, kind, *sizes[kind])
    if not data.attentions:
        fields = ", ".join(f".{KINDS[k][0]}" for k in wanted)
        raise ValueError(
            f"{name} returned no attention weights ({fields} empty). Attention kernels such "
            "as 'sdpa' and 'flash_attention_2' never build the weight matrix: load the model "
            "with attn_implementation='eager', e.g. "
            "AutoModel.from_pretrained(name, attn_implementation='eager'), "
            "or call model.set_attn_implementation('eager')"
        )
    return data
