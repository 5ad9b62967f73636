"""What the course's widgets share: redrawing once when several controls change. Chapters 03 and 07.

An explorer redraws its figure whenever one of its controls changes. Setting several controls from code
(``explorer.show(layer=1, head=0)``) would then redraw once per control; ``Holdable`` gives a widget a
``_hold()`` context manager that counts nested holds in ``_holding``, and the widget's own ``_render``
does nothing while ``_holding > 0``. ``AttentionExplorer`` and ``SamplingExplorer`` are built on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Holdable"]


class Holdable:
    """Batch several control changes into one redraw: ``with self._hold(): ...``. Chapters 03 and 07.

    A mix-in for an ipywidgets container: the subclass checks ``self._holding`` in its redraw and
    observers, and redraws once after the ``with`` block.
    """

    _holding = 0  # > 0 while several controls change at once

    @contextmanager
    def _hold(self) -> Iterator[None]:
        """Change several controls without redrawing after each one."""
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1
