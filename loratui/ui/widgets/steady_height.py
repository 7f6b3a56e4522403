"""Panels whose height follows their text, without jumping: a new layout only when the height they hold changes.

A `layout=True` reactive asks Textual to lay out the whole screen again on every
update, 10 to 20 ms of the dashboard's CPU each time on 2 cores (profiled under
bench/bench_dashboard_cost.py), and the GPU and Host panels update with nearly
every redraw. Their figures change, their line count rarely does, so a plain
repaint is enough until it does.

The Health panel's reasons wrap at its width, so a figure that gains or loses a
digit can add or drop a line from one probe to the next: the panel would grow
and shrink by a line every few seconds, moving the panels below it each time
(and laying out the screen each time). A panel grows at once, but keeps its
height while its text is shorter, and shrinks only once the text has stayed
shorter for SHRINK_AFTER_SECONDS; the rows it holds stay blank.
"""

from __future__ import annotations

import time

from rich.text import Text

SHRINK_AFTER_SECONDS = 30.0


class SteadyHeight:
    """Mixin for an auto-height widget: subclasses write `content()` (a rich Text); `render()` pads it to the
    height the panel holds."""

    _content_lines: int | None = None  # the content's lines at the width last measured
    _held_lines: int | None = None  # the panel's height in lines (>= the content's)
    _held_width: int | None = None
    _shorter_since: float | None = None  # since when the content has had fewer lines than the panel holds
    clock = staticmethod(time.monotonic)

    def content(self) -> Text:
        raise NotImplementedError

    def render(self) -> Text:
        text = self.content()
        blank = (self._held_lines or 0) - (self._content_lines or 0)
        if blank <= 0:
            return text
        text = text.copy()
        text.append("\n" * blank)
        return text

    def refresh_content(self) -> None:
        width = self.content_size.width
        lines = self.line_count(width) if width > 0 else None
        held = self._hold(lines, width, self.clock())
        relayout = lines is None or held != self._held_lines
        self._content_lines, self._held_lines, self._held_width = lines, held, width
        self.refresh(layout=relayout)

    def _hold(self, lines: int | None, width: int, now: float) -> int | None:
        """The height to hold for content of `lines` lines (None: not measured yet)."""
        held = self._held_lines
        if lines is None or held is None or width != self._held_width or lines >= held:
            self._shorter_since = None
            return lines
        if self._shorter_since is None:
            self._shorter_since = now
        if now - self._shorter_since >= SHRINK_AFTER_SECONDS:
            self._shorter_since = None
            return lines
        return held

    def line_count(self, width: int) -> int:
        """Lines as laid out at the panel's width: a figure that grows by a digit can wrap a line."""
        console = self.app.console
        return len(console.render_lines(self.content(), console.options.update(width=width, height=None), pad=False))
