"""Lower the learning rate: the current peak rate, a factor (train.lr_factor by default) and the new rate.

Either field can be edited; the other follows. Enter restarts the run with
the new peak rate (a restart command in control.jsonl).

Keys:
| key    | does                                   |
|--------|----------------------------------------|
| tab    | move between the factor and the rate   |
| enter  | restart with the new learning rate     |
| escape | cancel                                 |
"""

from __future__ import annotations

import math

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Input, Label, Static

from loratui.ui import format as fmt
from loratui.ui.screens.dialog_base import Dialog


class LearningRateDialog(Dialog):
    """Dismisses with {"learning_rate": new, ...} or None."""

    DEFAULT_CSS = """
    LearningRateDialog Horizontal {
        height: auto;
    }
    LearningRateDialog Label {
        width: 22;
        padding: 1 0 0 0;
    }
    LearningRateDialog Input {
        width: 24;
    }
    LearningRateDialog #error {
        color: $error;
    }
    """

    def __init__(self, *, current: float, factor: float, restart_from: str, fix: dict | None = None):
        super().__init__()
        self.current = current
        self.factor = factor
        self.restart_from = restart_from
        self.fix = fix or {}
        suggested = self.fix.get("learning_rate")
        self.initial = float(suggested) if _positive(suggested) else current * factor
        self._syncing = False

    def compose(self) -> ComposeResult:
        with Vertical(id="box"):
            yield Static(Text.assemble(("Lower the learning rate", "bold"),
                                       f" · restarts from {self.restart_from}"))
            yield Static(f"current peak learning rate: {fmt.number(self.current)}")
            with Horizontal():
                yield Label("factor (train.lr_factor)")
                yield Input(_plain(self.initial / self.current), id="factor")
            with Horizontal():
                yield Label("new peak learning rate")
                yield Input(_plain(self.initial), id="rate")
            yield Static("", id="error")
            yield Static("enter: restart with the new rate · tab: switch field · esc: cancel", classes="hint")
            with Horizontal():
                yield Button("Restart", id="confirm", variant="warning")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#factor", Input).focus()
        self._show_summary()

    def on_input_changed(self, event: Input.Changed) -> None:
        if self._syncing:
            return
        value = _parse(event.value)
        other_id, other_value = ("rate", value * self.current) if event.input.id == "factor" else \
            ("factor", value / self.current if value else None)
        if value is not None and other_value is not None:
            self._syncing = True
            self.query_one(f"#{other_id}", Input).value = _plain(other_value)
            self._syncing = False
        self._show_summary()

    def new_rate(self) -> float | None:
        return _parse(self.query_one("#rate", Input).value)

    def _show_summary(self) -> None:
        rate = self.new_rate()
        error = self.query_one("#error", Static)
        confirm = self.query_one("#confirm", Button)
        if rate is None:
            error.update("enter a positive number")
            confirm.disabled = True
        else:
            error.update("")
            confirm.disabled = False
            confirm.label = f"Restart with lr {fmt.number(self.current)} → {fmt.number(rate)}"

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "confirm":
            self._submit()
        else:
            self.dismiss(None)

    def _submit(self) -> None:
        rate = self.new_rate()
        if rate is None:
            return
        args = {"learning_rate": rate}
        if isinstance(self.fix.get("from_step"), int):
            args["from_step"] = self.fix["from_step"]
        self.dismiss(args)


def _parse(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if _positive(value) else None


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _plain(value: float) -> str:
    return f"{value:.6g}"
