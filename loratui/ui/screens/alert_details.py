"""An alert in full: the evidence, what it means in plain words, and the fix with its key.

Pressing the fix's key here opens that fix's dialog, filled in from the alert.

Keys:
| key      | does                                  |
|----------|---------------------------------------|
| p, l, r  | the suggested fix (only its own key)  |
| escape   | close                                 |
"""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Static

from loratui.ui import format as fmt
from loratui.ui.run_model import FIX_KEYS, FIX_NAMES
from loratui.ui.screens.dialog_base import Dialog


class AlertDetails(Dialog):
    """Dismisses with the fix's key ("p", "l" or "r") to apply it, or None."""

    DEFAULT_CSS = """
    AlertDetails > #box {
        width: 100;
    }
    AlertDetails VerticalScroll {
        height: auto;
        max-height: 70vh;  /* the title and the hint line stay on screen at 80x24 */
    }
    """

    BINDINGS = [
        Binding("p", "fix('p')", "Switch precision", id="details.switch_precision"),
        Binding("l", "fix('l')", "Lower LR", id="details.lower_lr"),
        Binding("r", "fix('r')", "Roll back", id="details.rollback"),
        Binding("a", "fix('a')", "Loss scaling on", id="details.loss_scaling"),
    ]

    def __init__(self, alert: dict, *, loss_scaling_fix: bool = False):
        super().__init__()
        self.alert = alert
        self.fix_key = FIX_KEYS.get(alert.get("suggestion") or "")
        self.loss_scaling_fix = loss_scaling_fix  # fp16 with loss scaling off: `a` turns it on

    def compose(self) -> ComposeResult:
        alert = self.alert
        with Vertical(id="box"):
            severity = "critical" if alert.get("severity") == "critical" else "warning"
            title = Text()
            title.append(f"{fmt.SEVERITY_MARKS[severity]} {severity.upper()} ", style=fmt.SEVERITY_STYLES[severity])
            title.append(f"{alert.get('kind')} at step {alert.get('step')}", style="bold")
            title.append(f" · {fmt.clock(alert.get('time'))}", style="dim")
            yield Static(title)
            with VerticalScroll():
                yield Static(Text(str(alert.get("message", "")), style="bold"))
                if alert.get("explanation"):
                    yield Static(Text.assemble(("What it means\n", "bold underline"), str(alert["explanation"])))
                evidence = alert.get("evidence") or {}
                if evidence:
                    yield Static(Text("Evidence", style="bold underline"))
                    yield Static(_evidence_table(evidence))
                yield Static(self._fix_text())
            yield Static("esc: close" + (f" · {self.fix_key}: apply the fix" if self.fix_key else "")
                         + (" · a: loss scaling on" if self.loss_scaling_fix else ""), classes="hint")

    def _fix_text(self) -> Text:
        suggestion = self.alert.get("suggestion") or "none"
        text = Text()
        text.append("Fix\n", style="bold underline")
        if self.loss_scaling_fix:
            text.append("loss scaling is off: turn it on (amp.loss_scaling = true)")
            text.append(" · press a", style="bold")
            if self.fix_key is None:
                text.append(" · applied as a restart from a checkpoint")
                return text
            text.append(" · applied as a restart from a checkpoint\nor ")
        if self.fix_key is None:
            text.append("No automatic fix: read the evidence above.", style="")
            return text
        fix = self.alert.get("fix") or {}
        details = fmt.plain(fix)
        text.append(f"{FIX_NAMES[suggestion]}" + (f" ({details})" if details else ""), style="")
        text.append(f" · press {self.fix_key}", style="bold")
        text.append(" · applied as a restart from a checkpoint")
        return text

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if action == "fix":
            return parameters[0] == self.fix_key or (parameters[0] == "a" and self.loss_scaling_fix)
        return True

    def action_fix(self, key: str) -> None:
        self.dismiss(key)


def _evidence_table(evidence: dict) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    for key, value in _flatten(evidence):
        table.add_row(key.replace("_", " "), fmt.plain(value))
    return table


def _flatten(value, prefix: str = ""):
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _flatten(inner, f"{prefix}{key}." if isinstance(inner, dict) else f"{prefix}{key}")
    else:
        yield prefix.rstrip("."), value
