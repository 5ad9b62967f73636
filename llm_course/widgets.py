"""The attention explorer: look inside a transformer's attention, one head at a time.

Chapter 03 (attention). Every attention head turns its input into a matrix of weights:
row ``i`` says how much query token ``i`` looks at each key token ``j`` (softmax, so each
row sums to 1). This module shows those matrices for the course's own models (GPT, BERT,
T5) and for Hugging Face models alike. It has three layers, each usable on its own:

1. ``collect_attentions(model, tokenizer, text)`` runs the model once and returns an
   ``AttentionData``: readable token labels and, for every kind of attention the model has,
   a NumPy array of shape ``(layers, heads, q_len, k_len)``.
2. Plotting functions that draw on a Matplotlib ``Axes``/``Figure`` you give them:
   ``plot_heatmap`` (one head), ``plot_head_grid`` (every head of a layer),
   ``plot_token_attention`` (one query token as a bar chart) and ``highlight_html``
   (the same row as highlighted text).
3. ``AttentionExplorer``, an ipywidgets UI on top of 1 and 2. It renders figures to PNG
   bytes inside an ``ipywidgets.Image`` (no JavaScript, no CDN: works offline, on Colab's
   ipywidgets 7.7 and on ipywidgets 8), and every change is synchronous, so what it shows
   can be checked from Python: ``explorer.current_weights``, ``explorer.png``.

Kinds of attention (the keys of ``AttentionData.attentions``), named after the Hugging Face
output fields they come from:

=========  =========================  ==========================================
kind       output field               queries -> keys
=========  =========================  ==========================================
self       ``.attentions``            input tokens -> input tokens (GPT, BERT)
encoder    ``.encoder_attentions``    input tokens -> input tokens (T5 encoder)
decoder    ``.decoder_attentions``    decoder tokens -> decoder tokens (causal)
cross      ``.cross_attentions``      decoder tokens -> input (encoder) tokens
=========  =========================  ==========================================
"""

from __future__ import annotations

import base64
import html
import inspect
import io
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from llm_course.tokenizer import bytes_to_unicode

__all__ = [
    "AttentionData",
    "AttentionExplorer",
    "KINDS",
    "EXAMPLE_TEXTS",
    "collect_attentions",
    "context_length",
    "figure_to_png",
    "head_grid_figure",
    "heatmap_figure",
    "highlight_html",
    "plot_head_grid",
    "plot_heatmap",
    "plot_token_attention",
    "png_to_html",
    "token_figure",
    "token_label",
]

# kind -> (the output field it is read from, a label for people)
KINDS: dict[str, tuple[str, str]] = {
    "self": ("attentions", "self-attention"),
    "encoder": ("encoder_attentions", "encoder self-attention"),
    "decoder": ("decoder_attentions", "decoder self-attention"),
    "cross": ("cross_attentions", "cross-attention (decoder → encoder)"),
}

EXAMPLE_TEXTS: tuple[str, ...] = (
    "The animal didn't cross the street because it was too tired.",
    "The cat sat on the mat, and then the cat slept.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "Кошка сидит на ковре.",
)

# For models without a fixed context (T5's relative positions): the attention maps of a
# longer text would take (layers x heads x T x T) floats of memory and be unreadable anyway.
NO_CONTEXT_LIMIT_CAP = 512

# Config fields that hold a model's context length, in the order they are tried
# (Hugging Face names first, then nanoGPT-style names).
_CONTEXT_FIELDS = (
    "n_positions",
    "max_position_embeddings",
    "block_size",
    "max_seq_len",
    "context_length",
    "n_ctx",
)


# --------------------------------------------------------------------------------------
# Token labels
# --------------------------------------------------------------------------------------


# GPT-2's byte alphabet read backwards: 'Ġ' -> 0x20 (see llm_course.tokenizer.bytes_to_unicode).
_UNICODE_TO_BYTE: dict[str, int] = {c: b for b, c in bytes_to_unicode().items()}

# Characters that are invisible or break a plot label, and what we show instead.
_VISIBLE = {" ": "·", "▁": "·", "\n": "↵", "\t": "→", "\r": "\\r"}


def _visible(text: str) -> str:
    """Apply ``_VISIBLE`` and escape other control characters (no font has glyphs for them)."""
    return "".join(_VISIBLE.get(c, f"\\x{ord(c):02x}" if ord(c) < 32 or ord(c) == 127 else c) for c in text)


def token_label(token: str | bytes, byte_level: bool = False) -> str:
    """Turn a raw token into a label a person can read. Chapter 03 (attention).

    * ``bytes`` (a byte-level token kept as raw bytes) are decoded as UTF-8.
    * With ``byte_level=True`` the token is in GPT-2's byte alphabet ('Ġthe' is the bytes
      b' the') and is first mapped back to its bytes.
    * A space, or SentencePiece's '▁', is shown as '·' so that ' the' and 'the' differ
      on a plot axis; a newline as '↵', a tab as '→', other control characters as escapes
      ('\\r', '\\x0c': no font has glyphs for them).
    * Bytes that are not valid UTF-8 on their own (a byte-level BPE token often holds half
      of a Cyrillic letter) are shown as escapes, e.g. '\\xd0'.
    """
    if isinstance(token, (bytes, bytearray)):
        raw = bytes(token)
    elif isinstance(token, str):
        if not byte_level:
            return _visible(token)
        # Characters outside the byte alphabet (special tokens such as '<｜end｜>') keep
        # their own UTF-8 bytes.
        raw = b"".join(
            bytes([_UNICODE_TO_BYTE[c]]) if c in _UNICODE_TO_BYTE else c.encode("utf-8")
            for c in token
        )
    else:
        raise TypeError(f"a token must be str or bytes, got {type(token).__name__}")
    text = raw.decode("utf-8", errors="backslashreplace")
    return _visible(text)


def _is_byte_level(tokenizer: Any) -> bool:
    """Guess whether a tokenizer's tokens are written in GPT-2's byte alphabet."""
    flag = getattr(tokenizer, "byte_level", None)
    if isinstance(flag, bool):
        return flag
    if "ByteLevel" in type(tokenizer).__name__:
        return True
    if hasattr(tokenizer, "byte_encoder"):  # slow GPT2Tokenizer in transformers 4.x
        return True
    # A Hugging Face fast tokenizer, or a raw ``tokenizers.Tokenizer``.
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    parts = (getattr(backend, "decoder", None), getattr(backend, "pre_tokenizer", None))
    return any(part is not None and "ByteLevel" in repr(part) for part in parts)


def _tokenize(tokenizer: Any, text: str) -> tuple[list[int], list[str | bytes]]:
    """Token ids and raw token strings for ``text`` with any tokenizer the course uses.

    Hugging Face tokenizers (``__call__`` + ``convert_ids_to_tokens``) add their special
    tokens ([CLS] ... [SEP] for BERT, </s> for T5), as the model saw them in training.
    The course's tokenizer and raw ``tokenizers.Tokenizer`` objects use
    ``encode`` + ``id_to_token``.
    """
    if hasattr(tokenizer, "convert_ids_to_tokens") and callable(tokenizer):
        ids = tokenizer(text)["input_ids"]
    elif hasattr(tokenizer, "encode") and hasattr(tokenizer, "id_to_token"):
        encoded = tokenizer.encode(text)
        ids = getattr(encoded, "ids", encoded)  # a tokenizers.Encoding keeps them in .ids
    else:
        raise TypeError(
            f"unsupported tokenizer {type(tokenizer).__name__}: pass a Hugging Face tokenizer "
            "(callable, with convert_ids_to_tokens) or one with encode(text) and id_to_token(id), "
            "such as llm_course.tokenizer.ByteLevelBPETokenizer"
        )
    ids = [int(i) for i in ids]
    return ids, _token_strings(tokenizer, ids)


def _token_strings(tokenizer: Any, ids: Sequence[int]) -> list[str | bytes]:
    """The tokenizer's own string for each id ('Ġthe'), with either tokenizer flavour."""
    if hasattr(tokenizer, "convert_ids_to_tokens"):
        tokens = list(tokenizer.convert_ids_to_tokens(list(ids)))
    else:
        tokens = [tokenizer.id_to_token(i) for i in ids]
    return [t if t is not None else f"<{i}>" for i, t in zip(ids, tokens)]


def _labels(tokenizer: Any, tokens: Sequence[str | bytes], byte_level: bool) -> list[str]:
    """Readable labels; special tokens ('<|endoftext|>', '[CLS]') are shown as they are."""
    # Hugging Face tokenizers list them in all_special_tokens, the course's in special_tokens.
    special = set(getattr(tokenizer, "all_special_tokens", None) or getattr(tokenizer, "special_tokens", None) or [])
    return [
        t if isinstance(t, str) and t in special else token_label(t, byte_level)
        for t in tokens
    ]


# --------------------------------------------------------------------------------------
# Running the model
# --------------------------------------------------------------------------------------


def context_length(model: torch.nn.Module) -> int | None:
    """The longest input a model accepts, read from its config (None if it has no limit).

    Chapter 03 (attention). Looks for ``n_positions`` / ``max_position_embeddings``
    (Hugging Face) and ``block_size`` / ``max_seq_len`` (nanoGPT style). T5's relative
    positions have no hard limit, so a Hugging Face T5 gives None.
    """
    config = getattr(model, "config", None)
    for name in _CONTEXT_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _is_encoder_decoder(model: torch.nn.Module) -> bool:
    """True for T5-style models, whose forward takes ``decoder_input_ids``."""
    return "decoder_input_ids" in inspect.signature(model.forward).parameters


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
        _check_index("layer", layer, self.num_layers(kind), f"{KINDS[kind][1]} layers")
        if head is None:
            return self.attentions[kind][layer]
        _check_index("head", head, self.num_heads(kind), "heads per layer")
        return self.attentions[kind][layer, head]


def _check_index(name: str, value: Any, size: int, what: str) -> None:
    """Raise a clear error unless ``0 <= value < size``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if not 0 <= value < size:
        raise ValueError(f"{name}={value} is out of range: the model has {size} {what}, so use 0..{size - 1}")


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
    * ``max_length`` defaults to the model's context (``context_length``), or 512 tokens
      for a model without one (T5); a longer text is a ValueError.
    * ``byte_level`` says whether the tokens are written in GPT-2's byte alphabet, so that
      'Ġthe' is shown as '·the' (None: detect it from the tokenizer).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, value in (("text", text), ("decoder_text", decoder_text)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if not text:
        raise ValueError("the text is empty: type a sentence to see its attention")
    name = model_name or type(model).__name__
    byte_level = _is_byte_level(tokenizer) if byte_level is None else byte_level
    limit = max_length if max_length is not None else (context_length(model) or NO_CONTEXT_LIMIT_CAP)

    ids, raw = _tokenize(tokenizer, text)
    if not ids:
        raise ValueError(f"the tokenizer turned {text!r} into no tokens: type some text")
    if len(ids) > limit:
        raise ValueError(
            f"the text is {len(ids)} tokens long but {name} reads at most {limit} tokens "
            f"({'max_length' if max_length is not None else 'its context length'}): shorten the text"
        )
    data = AttentionData(
        text=text,
        token_ids=ids,
        tokens=_labels(tokenizer, raw, byte_level),
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

    encoder_decoder = _is_encoder_decoder(model)
    if encoder_decoder:
        target = text if decoder_text is None else decoder_text
        target_ids, _ = _tokenize(tokenizer, target)
        # Teacher forcing: decoder input = [start] + target[:-1] (the labels shifted right).
        dec_ids = [_decoder_start_id(model, tokenizer)] + target_ids[:-1]
        if len(dec_ids) > limit:
            raise ValueError(
                f"the decoder text is {len(dec_ids)} tokens long but {name} reads at most "
                f"{limit} tokens: shorten it"
            )
        dec_raw = _token_strings(tokenizer, dec_ids)
        data.decoder_text = target
        data.decoder_token_ids = dec_ids
        data.decoder_tokens = _labels(tokenizer, dec_raw, byte_level)
        inputs["decoder_input_ids"] = torch.tensor([dec_ids], dtype=torch.long, device=device)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _eager_attention(model):
            output = model(**inputs)
    finally:
        model.train(was_training)

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



# --------------------------------------------------------------------------------------
# Plotting (pure Matplotlib: draws on the Axes/Figure it is given)
# --------------------------------------------------------------------------------------


# More tick labels than this overlap even at 5pt on an 8-inch axis: past it, every k-th
# token is labelled.
_MAX_LABELS = 96


def _font_size(n: int) -> float:
    """Tick label size that keeps ``n`` labels readable: 10pt for short texts, down to 5."""
    return float(max(5.0, min(10.0, 260.0 / max(n, 1))))


def _token_ticks(ax: Axes, axis: str, tokens: Sequence[str], fontsize: float | None = None) -> None:
    """Label the 'x' (keys, written vertically) or 'y' (queries) axis with token labels."""
    step = -(-len(tokens) // _MAX_LABELS)  # ceil: 1 for any text of up to 96 tokens
    positions = list(range(0, len(tokens), step))
    labels = [tokens[i] for i in positions]
    size = fontsize or _font_size(len(labels))
    if axis == "x":
        ax.set_xticks(positions)
        ax.set_xticklabels(labels, rotation=90, fontsize=size)
    else:
        ax.set_yticks(positions)
        ax.set_yticklabels(labels, fontsize=size)


def _check_matrix(weights: Any, q_tokens: Sequence[str], k_tokens: Sequence[str]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"weights must be a (q_len, k_len) matrix, got shape {w.shape}")
    if w.shape != (len(q_tokens), len(k_tokens)):
        raise ValueError(
            f"weights have shape {w.shape} but there are {len(q_tokens)} query and "
            f"{len(k_tokens)} key labels: they must match (rows = queries, columns = keys)"
        )
    return w


def plot_heatmap(
    ax: Axes,
    weights: Any,
    q_tokens: Sequence[str],
    k_tokens: Sequence[str],
    *,
    title: str | None = None,
    vmax: float | None = None,
    cmap: str = "viridis",
    colorbar: bool = True,
    labels: bool = True,
) -> Any:
    """Draw one head's attention matrix on ``ax``. Chapter 03 (attention).

    Rows are queries (the token that looks), columns are keys (the tokens it looks at),
    so row ``i`` is a probability distribution over the keys. The colour scale starts at
    0 and ends at ``vmax`` (default: the largest weight). Returns the ``AxesImage``.
    """
    w = _check_matrix(weights, q_tokens, k_tokens)
    top = float(w.max()) if vmax is None else float(vmax)
    image = ax.imshow(w, cmap=cmap, vmin=0.0, vmax=max(top, 1e-9), aspect="auto", interpolation="nearest")
    if labels:
        _token_ticks(ax, "x", k_tokens)
        _token_ticks(ax, "y", q_tokens)
        ax.set_xlabel("key (attended to)")
        ax.set_ylabel("query (attending)")
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=10)
    if colorbar and ax.figure is not None:
        ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return image


def plot_head_grid(
    fig: Figure,
    layer_weights: Any,
    q_tokens: Sequence[str],
    k_tokens: Sequence[str],
    *,
    selected_head: int | None = None,
    ncols: int | None = None,
    cmap: str = "viridis",
) -> list[Axes]:
    """Draw every head of one layer as a grid of small heatmaps on ``fig``. Chapter 03.

    ``layer_weights`` has shape ``(heads, q_len, k_len)``. Each head gets its own colour
    scale (so a diffuse head is visible too); ``selected_head`` gets a red frame. Token
    labels are drawn on the left column and bottom row while there are at most 16 tokens.
    Returns the heads' Axes, in head order.
    """
    w = np.asarray(layer_weights, dtype=np.float32)
    if w.ndim != 3:
        raise ValueError(f"layer_weights must have shape (heads, q_len, k_len), got {w.shape}")
    _check_matrix(w[0], q_tokens, k_tokens)
    n_heads = w.shape[0]
    ncols = ncols or min(n_heads, 4)
    nrows = -(-n_heads // ncols)  # ceil
    show_labels = max(len(q_tokens), len(k_tokens)) <= 16
    axes = fig.subplots(nrows, ncols, squeeze=False)
    heads: list[Axes] = []
    for h, ax in enumerate(axes.flat):
        if h >= n_heads:
            ax.set_axis_off()
            continue
        plot_heatmap(ax, w[h], q_tokens, k_tokens, title=f"head {h}", cmap=cmap, colorbar=False, labels=False)
        if show_labels and h % ncols == 0:  # left column
            _token_ticks(ax, "y", q_tokens, fontsize=6)
        if show_labels and h >= n_heads - ncols:  # bottom row
            _token_ticks(ax, "x", k_tokens, fontsize=6)
        if h == selected_head:
            for spine in ax.spines.values():
                spine.set_edgecolor("red")
                spine.set_linewidth(2.5)
        heads.append(ax)
    return heads


def plot_token_attention(
    ax: Axes,
    row: Any,
    k_tokens: Sequence[str],
    *,
    query_index: int | None = None,
    title: str | None = None,
) -> Any:
    """Bar chart of one query token's attention over the keys. Chapter 03 (attention).

    ``row`` is one row of a head's matrix (length ``k_len``); ``query_index`` (self-attention
    only) marks the query's own position in orange. Returns the ``BarContainer``.
    """
    r = np.asarray(row, dtype=np.float32)
    if r.ndim != 1 or r.shape[0] != len(k_tokens):
        raise ValueError(f"row must have one weight per key token ({len(k_tokens)}), got shape {r.shape}")
    colors = ["tab:blue"] * len(k_tokens)
    if query_index is not None and 0 <= query_index < len(k_tokens):
        colors[query_index] = "tab:orange"
    bars = ax.bar(range(len(k_tokens)), r, color=colors)
    _token_ticks(ax, "x", k_tokens)
    ax.set_ylim(0.0, max(1e-9, float(r.max())) * 1.1)
    ax.set_ylabel("attention weight")
    if title:
        ax.set_title(title, fontsize=10)
    return bars


def highlight_html(row: Any, k_tokens: Sequence[str], *, query_index: int | None = None) -> str:
    """The key tokens as HTML text, each shaded by its attention weight. Chapter 03.

    The strongest weight is fully orange, zero is white; hovering a token shows its weight.
    ``query_index`` underlines the query token itself (self-attention).
    """
    r = np.asarray(row, dtype=np.float64)
    if r.ndim != 1 or r.shape[0] != len(k_tokens):
        raise ValueError(f"row must have one weight per key token ({len(k_tokens)}), got shape {r.shape}")
    top = max(float(r.max()), 1e-12)
    spans = []
    for j, (token, weight) in enumerate(zip(k_tokens, r)):
        alpha = float(weight) / top
        style = f"background: rgba(255, 140, 0, {alpha:.3f}); padding: 1px 2px; margin: 1px; border-radius: 3px;"
        if j == query_index:
            style += " border-bottom: 2px solid black;"
        spans.append(f'<span title="{weight:.4f}" style="{style}">{html.escape(token)}</span>')
    return '<div style="line-height: 1.9; font-family: monospace;">' + "".join(spans) + "</div>"


def figure_to_png(fig: Figure, dpi: int = 100, tight: bool = True) -> bytes:
    """Render a Matplotlib figure to PNG bytes (no pyplot, no display needed). Chapter 03.

    ``tight=True`` trims the margins to the drawn content (it costs a second draw; the
    explorer's own figures are laid out by hand and pass ``tight=False``).
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    return buffer.getvalue()


def png_to_html(png: bytes) -> str:
    """An inline ``<img>`` tag for PNG bytes (for HTML reports and HTML widgets). Chapter 03."""
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}"/>'


# Figures for the explorer, laid out by hand: measuring every tick label
# (bbox_inches="tight") would draw each figure twice and make the widget ~2x slower.


def _label_inches(labels: Sequence[str], fontsize: float) -> float:
    """A generous estimate of the widest label's width in inches (0.65 em a character)."""
    return max((len(t) for t in labels), default=1) * fontsize * 0.65 / 72.0


def _place(fig: Figure, left: float, bottom: float, width: float, height: float) -> Axes:
    """An Axes at a position given in inches."""
    w, h = fig.get_size_inches()
    return fig.add_axes((left / w, bottom / h, width / w, height / h))


def heatmap_figure(weights: Any, q_tokens: Sequence[str], k_tokens: Sequence[str], *, title: str = "") -> Figure:
    """A figure holding one head's heatmap with its colour bar. Chapter 03 (attention)."""
    w = _check_matrix(weights, q_tokens, k_tokens)
    width = min(8.0, max(2.5, 0.25 * len(k_tokens)))
    height = min(8.0, max(2.0, 0.25 * len(q_tokens)))
    left = _label_inches(q_tokens, _font_size(len(q_tokens))) + 0.55
    bottom = _label_inches(k_tokens, _font_size(len(k_tokens))) + 0.55
    top, right = 0.45, 1.0
    fig = Figure(figsize=(left + width + right, bottom + height + top))
    image = plot_heatmap(_place(fig, left, bottom, width, height), w, q_tokens, k_tokens,
                         title=title, colorbar=False)
    fig.colorbar(image, cax=_place(fig, left + width + 0.15, bottom, 0.15, height))
    return fig


def head_grid_figure(layer_weights: Any, q_tokens: Sequence[str], k_tokens: Sequence[str], *,
                     selected_head: int | None = None, title: str = "") -> Figure:
    """A figure holding every head of a layer (``plot_head_grid``). Chapter 03 (attention)."""
    n_heads = int(np.shape(layer_weights)[0])
    ncols = min(n_heads, 4)
    nrows = -(-n_heads // ncols)  # ceil
    labelled = max(len(q_tokens), len(k_tokens)) <= 16
    left = _label_inches(q_tokens, 6) + 0.2 if labelled else 0.2
    bottom = _label_inches(k_tokens, 6) + 0.2 if labelled else 0.2
    size = 2.0
    fig = Figure(figsize=(left + ncols * (size + 0.2), bottom + nrows * (size + 0.35) + 0.35))
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=left / width, right=0.98, bottom=bottom / height,
                        top=1 - 0.6 / height, wspace=0.1, hspace=0.3)
    plot_head_grid(fig, layer_weights, q_tokens, k_tokens, selected_head=selected_head, ncols=ncols)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def token_figure(row: Any, k_tokens: Sequence[str], *, query_index: int | None = None, title: str = "") -> Figure:
    """A figure holding one query token's bar chart (``plot_token_attention``). Chapter 03."""
    left, top, right, height = 0.75, 0.45, 0.2, 2.2
    # Wide enough for the bars and for the title (10pt, about 0.55 em a character).
    width = min(11.0, max(3.0, 0.3 * len(k_tokens), len(title) * 10 * 0.55 / 72 - left))
    bottom = _label_inches(k_tokens, _font_size(len(k_tokens))) + 0.2
    fig = Figure(figsize=(left + width + right, bottom + height + top))
    plot_token_attention(_place(fig, left, bottom, width, height), row, k_tokens,
                         query_index=query_index, title=title)
    return fig


# --------------------------------------------------------------------------------------
# The widget
# --------------------------------------------------------------------------------------

_VIEWS = {"head": "one head", "grid": "all heads", "token": "one token"}
_CACHE_BYTES = 256 * 2**20  # attention weights the explorer keeps for texts seen recently


class _Holdable:
    """Batch several control changes into one redraw: ``with self._hold(): ...`` (both explorers)."""

    _holding = 0  # > 0 while several controls change at once

    @contextmanager
    def _hold(self) -> Iterator[None]:
        """Change several controls without redrawing after each one."""
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1


class AttentionExplorer(_Holdable, widgets.VBox):
    """Interactive view of a model's attention: pick text, model, kind, layer and head.

    Chapter 03 (attention). Build it with one model or several::

        AttentionExplorer(model, tokenizer)
        AttentionExplorer(models={"GPT": (gpt, gpt_tok), "BERT": (bert, bert_tok)})

    and display it (it is an ``ipywidgets.VBox``). Three views: ``"head"`` (one head's
    heatmap), ``"grid"`` (all heads of the layer) and ``"token"`` (what one query token
    attends to: bar chart plus highlighted text). Only core ipywidgets are used, and the
    figure is a PNG in an ``ipywidgets.Image``, so it works offline, on Colab (ipywidgets
    7.7) and with ipywidgets 8.

    Every control change redraws synchronously, so it can be driven and checked from code:
    ``explorer.layer.value = 1`` or ``explorer.show(layer=1, head=0)``, then read
    ``current_weights`` (the head's ``(q, k)`` matrix), ``current_layer_weights``
    ``(heads, q, k)``, ``current_row`` (the query token's row), ``png`` (the image shown)
    and ``error`` (the message shown instead, e.g. for a text longer than the context).
    ``figure()`` returns the current view as a Matplotlib figure (to save it, say).
    """

    def __init__(
        self,
        model: torch.nn.Module | None = None,
        tokenizer: Any = None,
        *,
        models: Mapping[str, tuple[torch.nn.Module, Any]] | None = None,
        texts: Sequence[str] | None = None,
        decoder_text: str | None = None,
        max_length: int | None = None,
        dpi: int = 80,
    ) -> None:
        if models is not None and model is not None:
            raise ValueError("pass either model and tokenizer, or models={name: (model, tokenizer)}, not both")
        if models is None:
            if model is None or tokenizer is None:
                raise ValueError("pass a model and its tokenizer, or models={name: (model, tokenizer)}")
            models = {type(model).__name__: (model, tokenizer)}
        if not models:
            raise ValueError("models is empty: give at least one {name: (model, tokenizer)}")
        for name, pair in models.items():
            if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], torch.nn.Module)):
                raise TypeError(f"models[{name!r}] must be a (model, tokenizer) pair")
        texts = [texts] if isinstance(texts, str) else list(EXAMPLE_TEXTS if texts is None else texts)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be a non-empty list of example strings")
        texts = list(dict.fromkeys(texts))  # a dropdown needs distinct options

        self.models: dict[str, tuple[torch.nn.Module, Any]] = dict(models)
        self.max_length = max_length
        self.dpi = dpi
        self.data: AttentionData | None = None  # what the current model made of the current text
        self.error: str | None = None  # why there is no data, shown in place of the figure
        self._cache: OrderedDict[tuple[str, str, str | None], AttentionData] = OrderedDict()
        self._holding = 0  # > 0 while several controls change at once (redraw once, at the end)
        self._kind_keys: list[str] = []
        self._query_labels: list[str] = []

        wide = {"description_width": "initial"}
        self.model_choice = widgets.Dropdown(options=list(self.models), description="model", style=wide)
        self.text_choice = widgets.Dropdown(options=texts, value=texts[0], description="example",
                                            style=wide, layout=widgets.Layout(width="60%"))
        self.text = widgets.Textarea(value=texts[0], description="text", continuous_update=False,
                                     style=wide, layout=widgets.Layout(width="95%"))
        self.decoder_text = widgets.Textarea(value=decoder_text or "", description="decoder text",
                                             placeholder="(empty: the text itself)", continuous_update=False,
                                             style=wide, layout=widgets.Layout(width="95%"))
        self.kind = widgets.ToggleButtons(options=[("self-attention", "self")], description="attention",
                                          style=wide)
        self.view = widgets.ToggleButtons(options=[(label, key) for key, label in _VIEWS.items()],
                                          value="head", description="view", style=wide)
        self.layer = widgets.IntSlider(value=0, min=0, max=0, description="layer", continuous_update=False)
        self.head = widgets.IntSlider(value=0, min=0, max=0, description="head", continuous_update=False)
        self.query = widgets.Dropdown(options=[("0", 0)], value=0, description="query token", style=wide)
        self.message = widgets.HTML(value="")
        self.image = widgets.Image(value=b"", format="png")
        self.token_html = widgets.HTML(value="")

        super().__init__(children=[
            widgets.HBox([self.model_choice, self.text_choice]),
            self.text,
            self.decoder_text,
            self.kind,
            self.view,
            widgets.HBox([self.layer, self.head, self.query]),
            self.message,
            self.image,
            self.token_html,
        ])

        self.text_choice.observe(self._on_example, names="value")
        for control in (self.model_choice, self.text, self.decoder_text):
            control.observe(self._on_source, names="value")
        self.kind.observe(self._on_kind, names="value")
        for control in (self.view, self.layer, self.head, self.query):
            control.observe(self._on_display, names="value")

        self._load()
        self._sync_controls()
        self._render()

    # ---- what is shown --------------------------------------------------------------

    @property
    def current_layer_weights(self) -> np.ndarray | None:
        """The selected layer's weights, ``(heads, q_len, k_len)`` (None while in error)."""
        if self.data is None:
            return None
        return self.data.weights(self.kind.value, self.layer.value)

    @property
    def current_weights(self) -> np.ndarray | None:
        """The selected head's matrix, ``(q_len, k_len)`` (None while in error)."""
        if self.data is None:
            return None
        return self.data.weights(self.kind.value, self.layer.value, self.head.value)

    @property
    def current_row(self) -> np.ndarray | None:
        """What the selected query token attends to: one row of ``current_weights``."""
        weights = self.current_weights
        return None if weights is None else weights[self.query.value]

    @property
    def png(self) -> bytes:
        """The PNG bytes the image widget shows (empty while in error)."""
        return bytes(self.image.value)

    def figure(self) -> Figure | None:
        """The current view as a new Matplotlib figure (None while in error)."""
        data = self.data
        if data is None:
            return None
        k, layer, head = self.kind.value, self.layer.value, self.head.value
        q_tokens, k_tokens = data.query_tokens(k), data.key_tokens(k)
        where = f"{KINDS[k][1]}, layer {layer}"
        if self.view.value == "head":
            return heatmap_figure(self.current_weights, q_tokens, k_tokens, title=f"{where}, head {head}")
        if self.view.value == "grid":
            return head_grid_figure(self.current_layer_weights, q_tokens, k_tokens, selected_head=head,
                                    title=f"{where}: all {data.num_heads(k)} heads (head {head} framed)")
        qi = self.query.value
        return token_figure(self.current_row, k_tokens, query_index=self._own_position(),
                            title=f"{where}, head {head}: what “{q_tokens[qi]}” (position {qi}) attends to")

    # ---- programmatic control ---------------------------------------------------------

    def show(
        self,
        *,
        model: str | None = None,
        text: str | None = None,
        decoder_text: str | None = None,
        kind: str | None = None,
        layer: int | None = None,
        head: int | None = None,
        view: str | None = None,
        query: int | None = None,
    ) -> AttentionExplorer:
        """Set several controls at once, redraw once, and return the explorer.

        An invalid choice (an unknown model, view or kind, a layer/head/query index out of
        range) raises a ValueError naming what is valid, and nothing changes. A text the
        model cannot read (too long, empty) is not raised: the widget shows the error, as
        it does when a student types it.
        """
        if model is not None and model not in self.models:
            raise ValueError(f"unknown model {model!r}: choose one of {list(self.models)}")
        if view is not None and view not in _VIEWS:
            raise ValueError(f"unknown view {view!r}: choose one of {list(_VIEWS)}")
        model_name = self.model_choice.value if model is None else model
        new_text = self.text.value if text is None else text
        new_decoder = self.decoder_text.value if decoder_text is None else decoder_text
        try:
            data: AttentionData | None = self._collect(model_name, new_text, new_decoder)
        except ValueError:
            data = None  # _load() below shows the message in the widget
        # Check the choices against the new data; if the text cannot be read, against the
        # model's last readable text (layers and heads do not depend on the text).
        reference = data or next((d for key, d in reversed(self._cache.items()) if key[0] == model_name), None)
        if reference is not None:
            kind_value = self._default_kind(reference, self.kind.value) if kind is None else kind
            reference.check_kind(kind_value)
            what = KINDS[kind_value][1]
            if layer is not None:
                _check_index("layer", layer, reference.num_layers(kind_value), f"{what} layers")
            if head is not None:
                _check_index("head", head, reference.num_heads(kind_value), "heads per layer")
            if query is not None and data is not None:
                _check_index("query", query, len(data.query_tokens(kind_value)), f"{what} query tokens")
        with self._hold():
            self.model_choice.value = model_name
            self.text.value = new_text
            self.decoder_text.value = new_decoder
            self._load()
            self._sync_controls(kind=kind)
            if data is not None:
                for control, value in ((self.layer, layer), (self.head, head), (self.query, query)):
                    if value is not None:
                        control.value = int(value)
            if view is not None:
                self.view.value = view
        self._render()
        return self

    # ---- internals ------------------------------------------------------------------

    def _collect(self, model_name: str, text: str, decoder_text: str) -> AttentionData:
        """collect_attentions with a small cache, so a layer/head change never reruns the model."""
        key = (model_name, text, decoder_text or None)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        model, tokenizer = self.models[model_name]
        data = collect_attentions(model, tokenizer, text, decoder_text=decoder_text or None,
                                  max_length=self.max_length, model_name=model_name)
        self._cache[key] = data
        # Keep a few recent texts, but never more than _CACHE_BYTES of weights (a long text
        # in a big model is layers x heads x T x T floats): the newest always stays.
        while len(self._cache) > 1 and (
            len(self._cache) > 4 or sum(d.nbytes for d in self._cache.values()) > _CACHE_BYTES
        ):
            self._cache.popitem(last=False)
        return data

    def _load(self) -> None:
        """Run the selected model on the current text; on a bad text, keep the reason."""
        try:
            self.data = self._collect(self.model_choice.value, self.text.value, self.decoder_text.value)
            self.error = None
        except ValueError as exc:
            self.data = None
            self.error = str(exc)

    @staticmethod
    def _default_kind(data: AttentionData, current: str) -> str:
        return current if current in data.kinds else data.kinds[0]

    def _own_position(self) -> int | None:
        """The query token's own column, where queries and keys are the same tokens."""
        return self.query.value if self.kind.value != "cross" else None

    def _sync_controls(self, kind: str | None = None) -> None:
        """Fit the kind buttons, sliders and query menu to the current data."""
        data = self.data
        if data is None:
            return
        with self._hold():
            self.decoder_text.layout.display = "" if data.decoder_tokens is not None else "none"
            self.model_choice.layout.display = "" if len(self.models) > 1 else "none"
            if data.kinds != self._kind_keys:
                self.kind.options = [(KINDS[k][1], k) for k in data.kinds]
                self._kind_keys = data.kinds
            self.kind.value = kind if kind is not None else self._default_kind(data, self.kind.value)
            k = self.kind.value
            self.layer.max = data.num_layers(k) - 1
            self.head.max = data.num_heads(k) - 1
            labels = [f"{i}: {t}" for i, t in enumerate(data.query_tokens(k))]
            if labels != self._query_labels:
                self.query.options = [(label, i) for i, label in enumerate(labels)]
                self._query_labels = labels
                # Start at the last token: in a causal model it is the one that sees everything.
                self.query.value = len(labels) - 1

    def _caption(self) -> str:
        """One line saying what is shown, and how to read it."""
        data, weights = self.data, self.current_weights
        assert data is not None and weights is not None
        k = self.kind.value
        q_len, k_len = weights.shape
        parts = [
            f"<b>{html.escape(data.model_name)}</b>",
            KINDS[k][1],
            f"layer {self.layer.value} (0..{data.num_layers(k) - 1})",
            f"head {self.head.value} (0..{data.num_heads(k) - 1})",
            f"{q_len} query × {k_len} key tokens",
        ]
        note = "Rows are queries (the token that looks), columns are keys (the tokens looked at); each row sums to 1."
        if q_len == k_len and q_len > 1 and not np.triu(weights, 1).any():
            note += " Causal: every weight above the diagonal is 0, so no token sees the future."
        return f"<div>{' · '.join(parts)}</div><div style='color: #555;'>{note}</div>"

    def _render(self) -> None:
        """Draw the current view into the image (and the highlighted text)."""
        if self._holding:
            return
        token_view = self.view.value == "token"
        self.query.layout.display = "" if token_view else "none"
        self.token_html.layout.display = "" if token_view else "none"
        fig = self.figure()
        if fig is None:
            self.message.value = (
                "<div style='color: #b00020;'><b>Cannot show attention:</b> "
                f"{html.escape(self.error or '')}</div>"
            )
            self.image.value = b""
            self.token_html.value = ""
            return
        self.message.value = self._caption()
        if token_view:
            keys = self.data.key_tokens(self.kind.value) if self.data else []
            self.token_html.value = highlight_html(self.current_row, keys, query_index=self._own_position())
        self.image.value = figure_to_png(fig, dpi=self.dpi, tight=False)

    def _on_example(self, change: dict) -> None:
        self.text.value = change["new"]

    def _on_source(self, change: dict) -> None:
        if self._holding:
            return
        self._load()
        self._sync_controls()
        self._render()

    def _on_kind(self, change: dict) -> None:
        if self._holding:
            return
        self._sync_controls(kind=change["new"])
        self._render()

    def _on_display(self, change: dict) -> None:
        self._render()


def __getattr__(name: str) -> Any:
    """``llm_course.widgets.SamplingExplorer``: chapter 07's explorer, imported on first use (its module
    imports this one, so a plain import here would be circular)."""
    if name == "SamplingExplorer":
        from llm_course.sampling_explorer import SamplingExplorer

        return SamplingExplorer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
