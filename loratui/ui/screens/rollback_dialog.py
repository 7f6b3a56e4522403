"""Roll back: the complete checkpoints with step, loss, precision and health at that step.

Choosing one asks for confirmation; the app then writes a restart command
with `from_step` to control.jsonl. The run goes on in its current precision:
the "saved in" column says what a checkpoint was trained in, not what a
rollback restores (that is the p key's job). Checkpoints after it are set aside by the
trainer (moved, never deleted).

Keys:
| key    | does                                      |
|--------|-------------------------------------------|
| ↑ ↓    | move between checkpoints                  |
| enter  | choose the highlighted one, then confirm  |
| escape | cancel                                    |
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, OptionList, Static
from textual.widgets.option_list import Option

from loratui.ui import format as fmt
from loratui.ui.run_files import CheckpointSummary
from loratui.ui.screens.dialog_base import Dialog

HEALTH_ORDER = ("alert", "warn", "ok", "n/a")


class RollbackDialog(Dialog):
    """Dismisses with {"from_step": N} or None."""

    def __init__(self, checkpoints: list[CheckpointSummary], *, current_step: int, preselect: int | None = None,
                 current_precision: str | None = None):
        super().__init__()
        self.checkpoints = checkpoints
        self.current_step = current_step
        self.current_precision = current_precision  # a rollback keeps it: a checkpoint's own is not restored
        self.preselect = preselect
        self.choice: int | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="box"):
            yield Static(Text.assemble(("Roll back", "bold"), f" · now at step {self.current_step}"))
            if not self.checkpoints:
                yield Static("No complete checkpoint yet: the first one is written when training starts.")
            else:
                header = Text(f"  {'step':>7}  {'loss':>8}  {'saved in':<9} {'peak lr':>8}  health", style="dim")
                yield Static(header)
                yield OptionList(*[Option(_line(c), id=str(c.step)) for c in self.checkpoints], id="choices")
            yield Static("enter: choose · esc: cancel", classes="hint", id="hint")
            with Horizontal(id="confirm-row"):
                yield Button("Restart", id="confirm", variant="warning")
                yield Button("Back", id="back")

    def on_mount(self) -> None:
        if self.checkpoints:
            choices = self.query_one("#choices", OptionList)
            choices.focus()
            steps = [c.step for c in self.checkpoints]
            choices.highlighted = steps.index(self.preselect) if self.preselect in steps else 0

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.choice = int(event.option.id)
        confirm = self.query_one("#confirm", Button)
        confirm.label = f"Restart from step {self.choice}" + (
            f" in {self.current_precision}" if self.current_precision else "")
        self.query_one("#confirm-row").add_class("-shown")
        self.query_one("#hint", Static).update(f"steps after {self.choice} are set aside · enter: restart · "
                                               f"esc: cancel")
        confirm.focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "confirm" and self.choice is not None:
            self.dismiss({"from_step": self.choice})
        else:
            self.query_one("#confirm-row").remove_class("-shown")
            self.query_one("#choices", OptionList).focus()


def _line(checkpoint: CheckpointSummary) -> Text:
    line = Text(no_wrap=True, overflow="ellipsis")
    line.append(f"{checkpoint.step:>7}  ", style="bold")
    line.append(f"{fmt.number(checkpoint.loss):>8}  ")
    # Step 0 is the untrained adapter: the same weights whatever precision the run had then.
    saved_in = "start" if checkpoint.step == 0 else checkpoint.precision or "?"
    line.append(f"{saved_in:<9} ")
    line.append(f"{fmt.number(checkpoint.learning_rate, 3):>8}  ")
    status, detail = health_summary(checkpoint.health)
    line.append(status, style={"alert": "bold red", "warn": "yellow", "ok": "green"}.get(status, "dim"))
    if detail:
        line.append(f" {detail}", style="dim")
    return line


def health_summary(health) -> tuple[str, str]:
    """The worst status in a checkpoint's stored health, and the checks that were not ok.

    The monitor owns the shape; this reads the common ones: {name: {status: ...}},
    {name: status}, or {"checks": {...}, "open_alerts": [...]}.
    """
    if not isinstance(health, dict) or not health:
        return "no probe", ""
    open_alerts = [str(kind) for kind in health.get("open_alerts") or []]
    if open_alerts:
        return "alert", "open: " + ", ".join(open_alerts)
    checks = health.get("checks", health)
    statuses = {}
    for name, check in checks.items() if isinstance(checks, dict) else ():
        status = check.get("status") if isinstance(check, dict) else check
        if isinstance(status, str):
            statuses[name] = status
    if not statuses:
        return "no probe", ""
    worst = min(statuses.values(), key=lambda s: HEALTH_ORDER.index(s) if s in HEALTH_ORDER else len(HEALTH_ORDER))
    bad = [name.replace("_", " ") for name, status in statuses.items() if status in ("alert", "warn")]
    return worst, ", ".join(bad)
