"""The attention explorer: look inside a transformer's attention, one head at a time. Chapter 03.

``AttentionExplorer(model, tokenizer)`` (or ``models={name: (model, tokenizer)}`` to compare several) is an
ipywidgets UI over ``llm_course.viz.attention_data.collect_attentions`` and the figures of
``llm_course.viz.figures``: pick or type a text, the model, the kind of attention (self, encoder,
decoder, cross), a layer and a head, and see one head's heatmap, every head of the layer, or what one
token attends to. Core ipywidgets only, figures as PNG bytes in an ``ipywidgets.Image``: it works
offline, on Colab (ipywidgets 7.7) and with ipywidgets 8, and can be driven and checked from code.
"""

from __future__ import annotations

import html
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.figure import Figure

from llm_course.core.checks import check_index
from llm_course.core.i18n import N_, localized, tr
from llm_course.viz.attention_data import KINDS, AttentionData, collect_attentions
from llm_course.viz.figures import (
    figure_to_png,
    head_grid_figure,
    heatmap_figure,
    highlight_html,
    token_figure,
)
from llm_course.widgets.base import Holdable

__all__ = ["AttentionExplorer", "EXAMPLE_TEXTS"]

EXAMPLE_TEXTS: tuple[str, ...] = (
    "The animal didn't cross the street because it was too tired.",
    "The cat sat on the mat, and then the cat slept.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "Кошка сидит на ковре.",
)

# --------------------------------------------------------------------------------------
# The widget
# --------------------------------------------------------------------------------------

# view -> its button label (English; shown through tr when the widget is built)
_VIEWS = {"head": N_("one head"), "grid": N_("all heads"), "token": N_("one token")}
# the kind buttons' labels: the people's labels of viz.attention_data.KINDS, marked for translation
_KIND_LABELS = {
    "self": N_("self-attention"),
    "encoder": N_("encoder self-attention"),
    "decoder": N_("decoder self-attention"),
    "cross": N_("cross-attention (decoder → encoder)"),
}
_CACHE_BYTES = 256 * 2**20  # attention weights the explorer keeps for texts seen recently


class AttentionExplorer(Holdable, widgets.VBox):
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
        self.model_choice = widgets.Dropdown(options=list(self.models), description=tr("model"), style=wide)
        self.text_choice = widgets.Dropdown(options=texts, value=texts[0], description=tr("example"),
                                            style=wide, layout=widgets.Layout(width="60%"))
        self.text = widgets.Textarea(value=texts[0], description=tr("text"), continuous_update=False,
                                     style=wide, layout=widgets.Layout(width="95%"))
        self.decoder_text = widgets.Textarea(value=decoder_text or "", description=tr("decoder text"),
                                             placeholder=tr("(empty: the text itself)"), continuous_update=False,
                                             style=wide, layout=widgets.Layout(width="95%"))
        self.kind = widgets.ToggleButtons(options=[(self._kind_label("self"), "self")],
                                          description=tr("attention"), style=wide)
        self.view = widgets.ToggleButtons(options=[(tr(label), key) for key, label in _VIEWS.items()],
                                          value="head", description=tr("view"), style=wide)
        self.layer = widgets.IntSlider(value=0, min=0, max=0, description=tr("layer"), continuous_update=False)
        self.head = widgets.IntSlider(value=0, min=0, max=0, description=tr("head"), continuous_update=False)
        self.query = widgets.Dropdown(options=[("0", 0)], value=0, description=tr("query token"), style=wide)
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
                n = reference.num_layers(kind_value)
                check_index("layer", layer, n, hint=f"the model has {n} {what} layers")
            if head is not None:
                n = reference.num_heads(kind_value)
                check_index("head", head, n, hint=f"the model has {n} heads per layer")
            if query is not None and data is not None:
                n = len(data.query_tokens(kind_value))
                check_index("query", query, n, hint=f"the text has {n} {what} query tokens")
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
            self.error = localized(exc)  # in the notebook's language where the message has a translation

    @staticmethod
    def _kind_label(kind: str) -> str:
        """The label of an attention kind, in the current language."""
        return tr(_KIND_LABELS[kind]) if kind in _KIND_LABELS else KINDS[kind][1]

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
                self.kind.options = [(self._kind_label(k), k) for k in data.kinds]
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
            self._kind_label(k),
            tr("layer {layer} (0..{last})", layer=self.layer.value, last=data.num_layers(k) - 1),
            tr("head {head} (0..{last})", head=self.head.value, last=data.num_heads(k) - 1),
            tr("{queries} query × {keys} key tokens", queries=q_len, keys=k_len),
        ]
        note = tr("Rows are queries (the token that looks), columns are keys (the tokens looked at); "
                  "each row sums to 1.")
        if q_len == k_len and q_len > 1 and not np.triu(weights, 1).any():
            note += " " + tr("Causal: every weight above the diagonal is 0, so no token sees the future.")
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
                f"<div style='color: #b00020;'><b>{html.escape(tr('Cannot show attention:'))}</b> "
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
