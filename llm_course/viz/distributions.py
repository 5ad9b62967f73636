"""Next-token distributions as a figure: what each sampling filter does to them. Chapter 07.

Sampling does not draw the next token from the model's distribution as it is: the repetition penalty,
the temperature, top-k and top-p reshape it first, in that order (``STAGES``;
``llm_course.infer.logits_processors.next_token_distributions`` returns the distribution after each).
This module draws them, with Matplotlib alone (no ipywidgets), one row of bars per stage on the same
tokens, so that every change can be seen:

* ``entropy(probs)``: the uncertainty of a distribution in bits (how many fair coin flips it is worth);
* ``distributions_figure(...)``: the rows of bar charts, as a Matplotlib ``Figure``.

The sampling explorer (``llm_course.widgets.sampling_explorer``) shows this figure and updates it as the
sliders move.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure

from llm_course.core.i18n import tr
from llm_course.viz.figures import axes_at

__all__ = ["STAGES", "SamplingSettings", "entropy", "distributions_figure"]

# The processing stages, in the order they are applied (the keys of next_token_distributions).
STAGES: tuple[str, ...] = ("model", "repetition penalty", "temperature", "top-k", "top-p")

# Colours: a token that survives every filter, one that some filter removes, the nucleus marks.
_KEPT, _REMOVED, _NUCLEUS = "tab:blue", "#c8c8c8", "tab:red"


class SamplingSettings(Protocol):
    """The settings a ``distributions_figure`` names in its row titles. Chapter 07.

    ``llm_course.infer.logits_processors.GenerationConfig`` has them (a figure needs nothing else of it).
    """

    temperature: float
    top_k: int | None
    top_p: float
    repetition_penalty: float


def entropy(probs: torch.Tensor | np.ndarray | Sequence[float]) -> float:
    """The entropy of a probability vector, in bits: ``-sum p log2 p`` (zeros count 0). Chapter 07.

    1 bit is a fair coin; a uniform choice among n tokens is log2(n) bits; a sure token is 0 bits.
    Sampling at low temperature, or after top-k/top-p, lowers it: fewer, more certain candidates.
    """
    p = torch.as_tensor(probs, dtype=torch.float64).reshape(-1)
    p = p[p > 0]
    return max(0.0, float(-(p * p.log2()).sum()))  # max: a sure token is 0 bits, not -0.0


# --------------------------------------------------------------------------------------
# The figure
# --------------------------------------------------------------------------------------


def _stage_title(stage: str, config: SamplingSettings) -> str:
    """What a stage did with these settings, for the row's title."""
    off = tr(" (off)")
    if stage == "model":
        return tr("model (softmax of the logits)")
    if stage == "repetition penalty":
        penalty = config.repetition_penalty
        return tr("repetition penalty {penalty}", penalty=f"{penalty:g}") + (off if penalty == 1 else "")
    if stage == "temperature":
        return tr("temperature T = {t}", t=f"{config.temperature:g}") + (off if config.temperature == 1 else "")
    if stage == "top-k":
        return f"top-k, k = {config.top_k}" if config.top_k else "top-k" + off
    return f"top-p, p = {config.top_p:g}" + (off if config.top_p == 1 else "")


def _plot_label(label: str) -> str:
    """A token label Matplotlib can draw: control characters as escapes ('\\x0c'), '$' escaped (or a
    token such as '$x$' would be read as a formula), '␍' as '\\r' (the default font lacks it)."""
    label = "".join(f"\\x{ord(c):02x}" if unicodedata.category(c) == "Cc" else c for c in label)
    return label.replace("$", r"\$").replace("␍", "\\r")


def distributions_figure(
    distributions: Mapping[str, torch.Tensor],
    token_ids: Sequence[int],
    labels: Sequence[str],
    config: SamplingSettings,
    *,
    title: str = "",
) -> Figure:
    """One row of bars per stage of ``next_token_distributions``, on the same tokens. Chapter 07.

    ``distributions``: stage -> (V,) probabilities, as ``llm_course.infer.logits_processors.
    next_token_distributions`` returns them; ``config``: the settings they were made with (a
    ``GenerationConfig``, or anything with the four ``SamplingSettings`` fields), for the row titles.

    ``token_ids`` are the tokens to draw (left to right) and ``labels`` their readable names. Blue bars
    are tokens that survive every filter (nonzero final probability), grey ones are removed by some
    filter; a grey x on a row's baseline marks a token whose probability is already 0 there. All rows
    share one probability scale (the tallest bar of each row is labelled), so flattening and sharpening
    can be compared; each row's title gives its entropy in bits and how many tokens of the whole
    vocabulary still have nonzero probability. On the last (top-p) row the red line is the running
    total of the probabilities top-p works on (those after top-k, most likely first) from 0 at the
    row's baseline to 1 at its top, the dashed line is ``top_p`` and the dotted line the nucleus
    boundary. The rows share one Matplotlib ``Axes`` (``fig.axes[0]``); each row's bars are one
    ``PolyCollection`` labelled with the stage's name, one rectangle per token.
    """
    missing = [s for s in STAGES if s not in distributions]
    if missing:
        raise ValueError(f"distributions lacks the stages {missing}: pass what next_token_distributions returns")
    ids = [int(i) for i in token_ids]
    if len(labels) != len(ids) or not ids:
        raise ValueError(f"give one label per token id ({len(ids)} ids, {len(labels)} labels), at least one")
    rows = {s: distributions[s].detach().double().cpu().numpy()[ids] for s in STAGES}  # stage -> (N,)
    kept = rows["top-p"] > 0  # (N,): survives every filter
    n, x = len(ids), np.arange(len(ids))
    colors = [_KEPT if k else _REMOVED for k in kept]

    # One Axes for all rows (an Axes costs more to build and draw than everything on it). Row i's
    # baseline is at height base[i]; a bar of probability p is p / scale high, so the tallest bar of
    # any row is 1 / 1.15 of a row.
    tick_labels = [_plot_label(t) for t in labels]
    row_inches, gap = 0.95, 0.45  # a row's height, and the room above it for its title (row units)
    width = max(5.5, 0.34 * n)
    left, right, top = 0.25, 0.25, 0.5 if title else 0.15
    bottom = max(len(t) for t in tick_labels) * 7 * 0.65 / 72 + 0.25  # the rotated token labels
    n_rows = len(STAGES)
    height = n_rows * (1 + gap) * row_inches
    fig = Figure(figsize=(left + width + right, bottom + height + top))
    if title:
        fig.suptitle(_plot_label(title), fontsize=10, y=1 - 0.12 / fig.get_size_inches()[1], va="top")
    ax = axes_at(fig, left, bottom, width, height)
    scale = max(1e-12, max(float(r.max()) for r in rows.values())) * 1.15
    base = {stage: (n_rows - 1 - i) * (1 + gap) for i, stage in enumerate(STAGES)}
    for i, stage in enumerate(STAGES):
        b, probs = base[stage], rows[stage]
        # the bars: one PolyCollection per row (20 Rectangle artists per row would draw 3x slower)
        tops = b + probs / scale
        ax.add_collection(PolyCollection([[(xi - 0.4, b), (xi - 0.4, t), (xi + 0.4, t), (xi + 0.4, b)]
                                          for xi, t in zip(x, tops)], facecolors=colors, label=stage))
        ax.axhline(b, color="#999999", linewidth=0.6)
        zero = probs == 0
        ax.plot(x[zero], np.full(int(zero.sum()), b), "x", color="#888888", markersize=4)
        best = int(np.argmax(probs))
        ax.text(best, b + probs[best] / scale, f"{100 * probs[best]:.0f}%", ha="center", va="bottom", fontsize=6)
        full = distributions[stage]
        ax.text(-0.5, b + 1.04, f"{i + 1}. {_stage_title(stage, config)}:  " + tr(
            "H = {h} bits, {n} tokens", h=f"{entropy(full):.2f}", n=int((full > 0).sum())), fontsize=8, va="bottom")
    b = base["top-p"]
    for xi in np.flatnonzero(kept):  # the final probabilities, written on the kept bars
        if xi != int(np.argmax(rows["top-p"])):
            ax.text(xi, b + rows["top-p"][xi] / scale, f"{100 * rows['top-p'][xi]:.0f}%", ha="center",
                    va="bottom", fontsize=6)
    _draw_nucleus(ax, b, rows["top-k"], kept, config.top_p, int((distributions["top-p"] > 0).sum()))
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(-0.05, base["model"] + 1 + gap)
    ax.set_xticks([])  # token labels as plain text: 20 tick objects would cost more than the rest
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    for xi, label in zip(x, tick_labels):
        ax.text(xi, -0.01, label, transform=ax.get_xaxis_transform(), rotation=90, ha="center", va="top",
                fontsize=7, gid="token label")
    return fig


def _draw_nucleus(ax: Any, b: float, before_top_p: np.ndarray, kept: np.ndarray, top_p: float, n_kept: int) -> None:
    """On the row at baseline ``b``: the running total of top-p's input (0..1 over the row's height),
    ``top_p`` and the nucleus boundary."""
    x = np.arange(len(before_top_p))
    ax.plot(x, b + np.cumsum(before_top_p), ".-", color=_NUCLEUS, linewidth=1, markersize=3)
    ax.text(len(x) - 0.45, b + 1.0, tr("running total 1"), color=_NUCLEUS, fontsize=6, ha="right", va="bottom")
    if top_p < 1:
        ax.plot([-0.5, len(x) - 0.5], [b + top_p, b + top_p], "--", color=_NUCLEUS, linewidth=0.8)
        ax.text(len(x) - 0.45, b + top_p, f"p = {top_p:g}", color=_NUCLEUS, fontsize=6, ha="right",
                va="top" if top_p > 0.5 else "bottom")  # clear of the "running total 1" label
    # The kept tokens are the first ones (the bars are in the order the filters rank them).
    boundary = int(np.flatnonzero(kept).max()) + 1 if kept.any() else 0
    if boundary < len(kept):
        ax.plot([boundary - 0.5] * 2, [b, b + 1.0], ":", color=_NUCLEUS, linewidth=1.2)
        ax.text(boundary - 0.4, b + 0.97, tr("{n} kept", n=n_kept), color=_NUCLEUS, fontsize=7, va="top")
