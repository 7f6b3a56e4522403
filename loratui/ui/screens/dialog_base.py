"""What every dashboard dialog shares: a centred box, Escape to cancel, a two-step confirm."""

from __future__ import annotations

from textual.binding import Binding
from textual.screen import ModalScreen


class Dialog(ModalScreen):
    """A centred, bordered box over the dashboard. Escape cancels (dismisses with None)."""

    DEFAULT_CSS = """
    Dialog {
        align: center middle;
        background: $background 60%;
    }
    Dialog > #box {
        width: 90;
        max-width: 100%;
        height: auto;
        max-height: 100%;
        border: thick $accent;
        background: $surface;
        padding: 0 1;
    }
    Dialog .hint {
        color: $text-muted;
    }
    Dialog #confirm-row {
        height: auto;
        display: none;
    }
    Dialog #confirm-row.-shown {
        display: block;
    }
    Dialog Button {
        margin: 0 1 0 0;
    }
    Dialog OptionList {
        height: auto;
        max-height: 12;
    }
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="dialog.cancel")]

    def action_cancel(self) -> None:
        self.dismiss(None)
