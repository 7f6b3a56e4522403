"""Quit: stop the training (it saves a checkpoint first), detach (it goes on), or cancel.

Keys:
| key    | does                                             |
|--------|--------------------------------------------------|
| s      | stop: checkpoint, end the trainer, then quit     |
| d      | detach: quit the dashboard, training goes on     |
| c, esc | cancel                                           |
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Static

from loratui.ui.screens.dialog_base import Dialog


class QuitDialog(Dialog):
    """Dismisses with "stop", "detach" or None."""

    DEFAULT_CSS = """
    QuitDialog > #box {
        width: 76;
    }
    QuitDialog Horizontal {
        height: auto;
    }
    """

    BINDINGS = [
        Binding("s", "choose('stop')", "Stop", id="quit.stop"),
        Binding("d", "choose('detach')", "Detach", id="quit.detach"),
        Binding("c", "cancel", "Cancel", id="quit.cancel"),
    ]

    def __init__(self, run_dir: str):
        super().__init__()
        self.run_dir = run_dir

    def compose(self) -> ComposeResult:
        with Vertical(id="box"):
            yield Static("[b]Quit the dashboard[/b] · the trainer is still running")
            yield Static("[b]s[/b]  stop training: save a checkpoint, end the run, then quit")
            yield Static(f"[b]d[/b]  detach: training goes on; re-attach with\n   "
                         f"loratui watch {self.run_dir}", markup=True)
            yield Static("[b]c[/b]  cancel", classes="hint")
            with Horizontal():
                yield Button("Stop training", id="stop", variant="error")
                yield Button("Detach", id="detach", variant="primary")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#detach", Button).focus()

    def action_choose(self, choice: str) -> None:
        self.dismiss(choice)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(None if event.button.id == "cancel" else event.button.id)
