"""The precision health checks: one row per check with its status, current figure and a short reason.

Status is spelled out (OK, WARN, ALERT) as well as coloured, so the panel
reads the same with NO_COLOR.
"""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from loratui.ui import format as fmt

CHECK_LABELS = {
    "fp16_headroom": "fp16 headroom", "underflow": "underflow", "fidelity": "grad fidelity",
    "stale_update": "stale updates", "loss_scale": "loss scale", "skip_rate": "skip rate",
    "loss_trend": "loss trend",
}
STATUS = {"ok": ("✓ OK", "green"), "warn": ("! WARN", "bold yellow"), "alert": ("✗ ALERT", "bold white on red"),
          "n/a": ("· n/a", "dim")}


WRAP_WIDTH = 70


class HealthPanel(Widget):
    DEFAULT_CSS = """
    HealthPanel {
        height: auto;
        border: round $primary-darken-1;
        border-title-color: $text;
        padding: 0 1;
    }
    HealthPanel.-alert {
        border: round $error;
    }
    """

    checks: reactive[dict] = reactive(dict, always_update=True, layout=True)
    step: reactive[int | None] = reactive(None)

    def on_mount(self) -> None:
        self.border_title = "Health"

    def watch_checks(self, checks: dict) -> None:
        self.set_class(any(c.get("status") == "alert" for c in checks.values() if isinstance(c, dict)), "-alert")
        self.border_title = f"Health · step {self.step}" if self.step is not None else "Health"

    def render(self) -> Table | Text:
        if not self.checks:
            return Text("waiting for the first health probe", style="dim")
        table = Table.grid(padding=(0, 1), expand=True)
        table.add_column(no_wrap=True)
        table.add_column(no_wrap=True)
        table.add_column(no_wrap=True, justify="right")
        # A wide panel (a wide terminal) wraps each reason under itself: read whole, not cut.
        wrap = self.size.width >= WRAP_WIDTH
        table.add_column(ratio=1, no_wrap=not wrap, overflow="fold" if wrap else "ellipsis")
        for name, check in self.checks.items():
            check = check if isinstance(check, dict) else {"status": str(check)}
            label, style = STATUS.get(check.get("status", "n/a"), (str(check.get("status")), ""))
            table.add_row(CHECK_LABELS.get(name, name.replace("_", " ")), Text(label, style=style),
                          _figure(check.get("value")), Text(str(check.get("summary") or ""), style="dim"))
        return table


def _figure(value) -> str:
    if isinstance(value, (int, float, str)) or value is None:
        return fmt.number(value, 3) if not isinstance(value, str) else value
    return str(value)


def health_text(checks: dict) -> Text:
    """Every check in full, its whole reason wrapped (the panel cuts reasons to one line)."""
    if not checks:
        return Text("no health probe yet", style="dim")
    text = Text()
    for name, check in checks.items():
        check = check if isinstance(check, dict) else {"status": str(check)}
        label, style = STATUS.get(check.get("status", "n/a"), (str(check.get("status")), ""))
        text.append(f"{CHECK_LABELS.get(name, name.replace('_', ' '))}  ", style="bold")
        text.append(label, style=style)
        text.append(f"  {_figure(check.get('value'))}\n")
        text.append(f"  {check.get('summary') or ''}\n\n")
    text.rstrip()
    return text
