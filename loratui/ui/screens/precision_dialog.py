"""Switch precision: fp32, bf16 and fp16 with what this machine does for each, the suggested one first.

Choosing one asks for confirmation, then the app writes a restart command
with that precision to control.jsonl. When `loratui advise` left advice.json
in the run directory, its measured figures are shown beside the choices.

Keys:
| key    | does                                      |
|--------|-------------------------------------------|
| ↑ ↓    | move between precisions                   |
| enter  | choose the highlighted one, then confirm  |
| escape | cancel                                    |
"""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, OptionList, Static
from textual.widgets.option_list import Option

from loratui.ui import format as fmt
from loratui.ui.screens.dialog_base import Dialog

PRECISIONS = ("fp32", "bf16", "fp16")
SUPPORT_STYLES = {"native": "green", "emulated": "yellow", "unsupported": "red"}


class PrecisionDialog(Dialog):
    """Dismisses with the restart arguments ({"precision": ..., ...}) or None."""

    def __init__(self, *, current: str | None, support: dict, notes: dict, suggested: str | None,
                 suggested_because: str, advice: dict | None, restart_from: str, fix: dict | None = None):
        super().__init__()
        self.current = current
        self.support = support
        self.notes = notes
        self.suggested = suggested
        self.suggested_because = suggested_because
        self.advice = advice
        self.restart_from = restart_from
        self.fix = fix or {}
        self.choice: str | None = None

    def ordered(self) -> list[str]:
        """The suggested precision first, then the others in their usual order."""
        rest = [p for p in PRECISIONS if p != self.suggested]
        return ([self.suggested] if self.suggested in PRECISIONS else []) + rest

    def compose(self) -> ComposeResult:
        with Vertical(id="box"):
            yield Static(Text.assemble(("Switch precision", "bold"),
                                       f" · now {self.current or '?'} · restarts from {self.restart_from}"),
                         id="title")
            options = []
            for precision in self.ordered():
                support = self.support.get(precision, "unknown")
                line = Text(no_wrap=True, overflow="ellipsis")
                line.append(f"{precision:<5}", style="bold")
                line.append(f" {support:<11}", style=SUPPORT_STYLES.get(support, ""))
                if precision == self.suggested:
                    line.append(" suggested", style="bold")
                    if self.suggested_because:
                        line.append(f": {self.suggested_because}")
                elif precision == self.current:
                    line.append(" (in use now)", style="dim")
                elif self.notes.get(precision):
                    line.append(f" {self.notes[precision]}", style="dim")
                options.append(Option(line, id=precision,
                                      disabled=support == "unsupported" or precision == self.current))
            yield OptionList(*options, id="choices")
            if self.advice:
                yield Static(_advice_table(self.advice), id="advice")
            yield Static("enter: choose · esc: cancel", classes="hint", id="hint")
            with Horizontal(id="confirm-row"):
                yield Button("Restart", id="confirm", variant="warning")
                yield Button("Back", id="back")

    def on_mount(self) -> None:
        choices = self.query_one("#choices", OptionList)
        choices.focus()
        for index, option in enumerate(choices.options):
            if not option.disabled:
                choices.highlighted = index
                break

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.choice = event.option.id
        confirm = self.query_one("#confirm", Button)
        confirm.label = f"Restart in {self.choice} from {self.restart_from}"
        self.query_one("#confirm-row").add_class("-shown")
        self.query_one("#hint", Static).update("enter: restart · esc: cancel")
        confirm.focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "confirm" and self.choice:
            args = {"precision": self.choice}
            if isinstance(self.fix.get("from_step"), int):
                args["from_step"] = self.fix["from_step"]
            self.dismiss(args)
        else:
            self.query_one("#confirm-row").remove_class("-shown")
            self.query_one("#choices", OptionList).focus()


def _advice_table(advice: dict) -> Group:
    """advice.json's trials, figure by figure (whatever figures `loratui advise` recorded)."""
    trials = advice.get("trials") or {}
    names = [p for p in PRECISIONS if p in trials] + [p for p in trials if p not in PRECISIONS]
    figures: list[str] = []
    for name in names:
        for key, value in (trials[name] or {}).items() if isinstance(trials[name], dict) else ():
            if key not in figures and not isinstance(value, (dict, list)):
                figures.append(key)
    table = Table(title=f"loratui advise recommends {advice.get('recommendation', '?')}", title_justify="left",
                  box=None, padding=(0, 1), show_edge=False)
    table.add_column("", style="bold")
    for name in names:
        table.add_column(name, justify="right")
    for key in figures[:10]:
        table.add_row(key.replace("_", " "), *[_cell((trials[n] or {}).get(key)) for n in names])
    reasons = [Text(f"· {reason}", style="dim") for reason in (advice.get("reasons") or [])[:3]]
    return Group(table, *reasons)


def _cell(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return fmt.number(value, 3)
    return "-" if value is None else str(value)
