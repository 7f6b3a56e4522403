"""Lower the learning rate: the current peak rate, a factor (train.lr_factor by default) and the new rate.

Either field can be edited; the other follows. While either holds anything but
a positive number (half-typed "0." included), or a factor of 1 or more (this
key lowers the rate), the dialog names it and refuses to restart. Enter restarts the run with the new peak rate (a restart command
in control.jsonl).

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
from textual.validation import Function
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
        width: 25;
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

    def compose(self) -> ComposeResult:
        with Vertical(id="box"):
            yield Static(Text.assemble(("Lower the learning rate", "bold"),
                                       f" · restarts from {self.restart_from}"))
            yield Static(f"current peak learning rate: {fmt.number(self.current)}")
            with Horizontal():
                yield Label("factor (train.lr_factor)")
                yield Input(_plain(self.initial / self.current), id="factor", validators=[POSITIVE])
            with Horizontal():
                yield Label("new peak learning rate")
                yield Input(_plain(self.initial), id="rate", validators=[POSITIVE])
            yield Static("", id="error")
            yield Static("enter: restart with the new rate · tab: switch field · esc: cancel", classes="hint")
            with Horizontal():
                yield Button("Restart", id="confirm", variant="warning")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#factor", Input).focus()
        self._show_summary()

    def on_input_changed(self, event: Input.Changed) -> None:
        value = _parse(event.value)
        if value is not None:  # half-typed text ("0.", "") leaves the other field as it was
            other_id, other_value = ("rate", value * self.current) if event.input.id == "factor" else \
                ("factor", value / self.current)
            with self.prevent(Input.Changed):  # the other field follows; its change must not echo back
                self.query_one(f"#{other_id}", Input).value = _plain(other_value)
        self._show_summary()

    def invalid_fields(self) -> list[str]:
        return [name for name in ("factor", "rate") if _parse(self.query_one(f"#{name}", Input).value) is None]

    def new_rate(self) -> float | None:
        """The rate to restart with, or None while a field is not a positive number or does not lower it."""
        if self.invalid_fields():
            return None
        rate = _parse(self.query_one("#rate", Input).value)
        return rate if rate < self.current else None

    def _show_summary(self) -> None:
        invalid = self.invalid_fields()
        error = self.query_one("#error", Static)
        confirm = self.query_one("#confirm", Button)
        rate = self.new_rate()
        confirm.disabled = rate is None
        if invalid:
            names = " and ".join(FIELD_NAMES[name] for name in invalid)
            error.update(f"{names}: enter a positive number")
            confirm.label = "Restart"
        elif rate is None:  # a factor of 1 or more: this key lowers the rate, it never raises it
            factor = _parse(self.query_one("#factor", Input).value)
            error.update(f"factor {_plain(factor)} would not lower the rate: enter a factor below 1 "
                         f"(0.5 halves it); to raise it, edit train.learning_rate and resume")
            confirm.label = "Restart"
        else:
            error.update("")
            confirm.label = f"Restart with lr {fmt.number(self.current)} → {fmt.number(rate)}"
        confirm.refresh(layout=True)  # a Button keeps its width when only its label changes

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


POSITIVE = Function(lambda text: _parse(text) is not None, "not a positive number")  # marks the field -invalid
FIELD_NAMES = {"factor": "factor", "rate": "new rate"}


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
