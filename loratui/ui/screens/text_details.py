"""Any row in full: a title and its whole text, wrapped and scrollable (for rows a panel cuts short).

Keys:
| key           | does   |
|---------------|--------|
| escape, enter | close  |
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Static

from loratui.ui.screens.dialog_base import Dialog


class TextDetails(Dialog):
    DEFAULT_CSS = """
    TextDetails > #box {
        width: 100;
    }
    TextDetails VerticalScroll {
        height: auto;
        max-height: 70vh;
    }
    """

    BINDINGS = [Binding("enter", "cancel", "Close", id="details.close")]

    def __init__(self, title: Text, body: Text):
        super().__init__()
        self.title_text = title
        self.body = body

    def compose(self) -> ComposeResult:
        with Vertical(id="box"):
            yield Static(self.title_text)
            with VerticalScroll():
                yield Static(self.body)
            yield Static("esc: close", classes="hint")
