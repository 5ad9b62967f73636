"""Watching a run in a notebook: the loss curve of a ``train`` run, live and afterwards. Chapter 04.

``LossPlot`` is the callback ``train`` uses to redraw the training and held-out loss in place while it
runs (one image, updated through a display handle; a no-op outside a notebook, see ``in_notebook``).
``plot_history(result)`` draws the same curves from a finished ``TrainResult`` on a Matplotlib Axes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for annotations only: train.loop imports this module
    from llm_course.train.loop import TrainResult

__all__ = ["LossPlot", "in_notebook", "plot_history"]


# --------------------------------------------------------------------------------------------
# Watching the run: a loss plot that updates in place in a notebook
# --------------------------------------------------------------------------------------------


def in_notebook() -> bool:
    """True inside a Jupyter (or Colab) kernel, False in a terminal, a script or pytest. Chapter 04."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ in ("ZMQInteractiveShell", "Shell")  # Jupyter, Colab


def plot_history(result: TrainResult, ax: Any = None) -> Any:
    """Training loss per step and held-out loss at each evaluation, on a Matplotlib Axes. Chapter 04.

    Draws on ``ax`` (a new ``Figure``'s axes if None, without pyplot) and returns the Axes.
    """
    if ax is None:
        from matplotlib.figure import Figure

        ax = Figure(figsize=(7, 3.5)).add_subplot()
    ax.plot([h["step"] for h in result.history], [h["loss"] for h in result.history],
            lw=1, alpha=0.8, label="train loss")
    if result.evals:
        ax.plot([e["step"] for e in result.evals], [e["loss"] for e in result.evals],
                "o-", label="held-out loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


class LossPlot:
    """A live loss curve for ``train``: redrawn in place in a notebook, a no-op elsewhere. Chapter 04.

    Called like a callback, ``plot(record, result)``; it redraws every ``every`` steps and after each
    evaluation. The figure is rendered to PNG and shown with ``IPython.display.display(...,
    display_id=True)``; later frames replace it through the display handle's ``update``, so the notebook
    keeps one image instead of hundreds.
    """

    def __init__(self, every: int = 10, enabled: bool | None = None) -> None:
        self.every = max(1, every)
        self.enabled = in_notebook() if enabled is None else enabled
        self.handle: Any = None  # IPython's DisplayHandle, once the first frame is shown

    def __call__(self, record: dict, result: TrainResult) -> None:
        if self.enabled and (record["step"] % self.every == 0 or "eval" in record):
            self.update(result)

    def update(self, result: TrainResult) -> None:
        """Draw ``result``'s history now (first call: show it; later calls: replace it)."""
        if not self.enabled or not result.history:
            return
        from IPython.display import Image, display

        from llm_course.viz.figures import figure_to_png

        ax = plot_history(result)
        ax.set_title(f"step {result.step}: train loss {result.history[-1]['loss']:.3f}")
        image = Image(data=figure_to_png(ax.figure, dpi=80))
        if self.handle is None:
            self.handle = display(image, display_id=True)
        else:
            self.handle.update(image)
