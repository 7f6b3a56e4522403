"""A scrollable log whose lines can be searched: matches highlighted, the current one marked.

Textual's `Log` draws only the lines on screen, so a long file scrolls
smoothly; this adds a query (case-insensitive, plain text) and a cursor
over the matching lines. `search` moves to the next or previous match from
where the view is and keeps it in sight.
"""

from __future__ import annotations

from rich.highlighter import Highlighter
from rich.text import Text
from textual.widgets import Log

MATCH_STYLE = "reverse"
CURRENT_STYLE = "bold reverse underline"


class QueryHighlighter(Highlighter):
    """Styles every occurrence of the query; the line being shown as the current match more so."""

    def __init__(self, log: SearchableLog):
        self.log = log

    def highlight(self, text: Text) -> None:
        query = self.log.query.lower()
        if not query:
            return
        plain = text.plain.lower()
        style = CURRENT_STYLE if text.plain == self.log.current_line_text else MATCH_STYLE
        start = plain.find(query)
        while start >= 0:
            text.stylize(style, start, start + len(query))
            start = plain.find(query, start + len(query))


class SearchableLog(Log):
    DEFAULT_CSS = """
    SearchableLog {
        height: 1fr;
    }
    """

    def __init__(self, **kwargs):
        super().__init__(highlight=True, auto_scroll=False, **kwargs)
        self.highlighter = QueryHighlighter(self)
        self.query = ""
        self.current: int | None = None  # the line of the current match

    @property
    def current_line_text(self) -> str | None:
        return self.lines[self.current] if self.current is not None and self.current < self.line_count else None

    def matches(self) -> list[int]:
        query = self.query.lower()
        return [index for index, line in enumerate(self.lines) if query in line.lower()] if query else []

    def search(self, query: str, *, backwards: bool = False) -> tuple[int, int]:
        """Move to the next (or previous) line holding `query`; returns (its number among the matches, 1-based,
        and how many there are), (0, 0) when none holds it."""
        if query != self.query:
            self.query, self.current = query, None
        found = self.matches()
        if not found:
            self.current = None
            self._restyle()
            return 0, 0
        if self.current is None:
            top = self.scroll_offset.y
            after = [line for line in found if line >= top]
            self.current = (after[0] if after else found[0]) if not backwards else \
                ([line for line in found if line <= top + self.size.height] or found)[-1]
        else:
            later = [line for line in found if (line < self.current if backwards else line > self.current)]
            self.current = (later[-1] if backwards else later[0]) if later else (found[-1] if backwards else found[0])
        self.scroll_to(y=max(0, self.current - self.size.height // 2), animate=False)
        self._restyle()
        return found.index(self.current) + 1, len(found)

    def _restyle(self) -> None:
        self.notify_style_update()
        self.refresh()
