"""Attention figures with Matplotlib alone (no pyplot, no ipywidgets). Chapter 03 (attention).

* ``plot_heatmap`` / ``plot_head_grid`` / ``plot_token_attention``: draw one head's (q, k) weights, every
  head of a layer, or one query token's row as bars, on Axes or a Figure you give them (use them in
  your own figures);
* ``heatmap_figure`` / ``head_grid_figure`` / ``token_figure``: the same as ready figures, laid out by
  hand in inches (``axes_at``), so that a widget can redraw them fast;
* ``highlight_html``: a query token's row as text shaded by weight;
* ``figure_to_png`` / ``png_to_html``: a figure as PNG bytes (for an ``ipywidgets.Image``) or an
  inline ``<img>`` (for HTML reports); the training live plot (chapter 04) uses them too.

The data they draw comes from ``llm_course.viz.attention_data``.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from llm_course.core.i18n import tr

__all__ = [
    "axes_at",
    "figure_to_png",
    "head_grid_figure",
    "heatmap_figure",
    "highlight_html",
    "plot_head_grid",
    "plot_heatmap",
    "plot_token_attention",
    "png_to_html",
    "token_figure",
]


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
        ax.set_xlabel(tr("key (attended to)"))
        ax.set_ylabel(tr("query (attending)"))
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
    ax.set_ylabel(tr("attention weight"))
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


def axes_at(fig: Figure, left: float, bottom: float, width: float, height: float) -> Axes:
    """A new Axes of ``fig`` at a position given in inches from its bottom-left corner. Chapter 03.

    Laying a figure out by hand costs nothing; ``bbox_inches="tight"`` measures every label and draws the
    figure twice. The explorers' figures (chapters 03 and 07) are placed this way.
    """
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
    image = plot_heatmap(axes_at(fig, left, bottom, width, height), w, q_tokens, k_tokens,
                         title=title, colorbar=False)
    fig.colorbar(image, cax=axes_at(fig, left + width + 0.15, bottom, 0.15, height))
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
    plot_token_attention(axes_at(fig, left, bottom, width, height), row, k_tokens,
                         query_index=query_index, title=title)
    return fig
