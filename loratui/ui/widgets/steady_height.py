"""Panels whose height follows their text: a new layout only when the number of lines changes.

A `layout=True` reactive asks Textual to lay out the whole screen again on every
update, about 30 ms of the dashboard's CPU each time on 2 cores (profiled with
cProfile under bench/bench_dashboard_cost.py), and the GPU and Host panels
update with nearly every redraw. Their figures change, their line count almost
never does, so a plain repaint is enough until it does.
"""

from __future__ import annotations


class SteadyHeight:
    """Mixin for an auto-height widget whose `render()` returns a rich renderable (Text, Table)."""

    _drawn_lines: int | None = None

    def refresh_content(self) -> None:
        width = self.content_size.width
        lines = self.line_count(width) if width > 0 else None
        relayout = lines is None or lines != self._drawn_lines
        self._drawn_lines = lines
        self.refresh(layout=relayout)

    def line_count(self, width: int) -> int:
        """Lines as laid out at the panel's width: a figure that grows by a digit can wrap a line."""
        console = self.app.console
        return len(console.render_lines(self.render(), console.options.update(width=width, height=None), pad=False))
