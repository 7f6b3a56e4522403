"""`?`: every key of the dashboard (read from the app's bindings, so it cannot drift) and how to come back."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Static

from loratui.ui.screens.dialog_base import Dialog


class HelpScreen(Dialog):
    BINDINGS = [Binding("question_mark", "cancel", "Close", id="help.close")]

    def __init__(self, bindings: list[Binding], run_dir: str):
        super().__init__()
        self.bindings = bindings
        self.run_dir = run_dir

    def compose(self) -> ComposeResult:
        table = Table(box=None, padding=(0, 2), show_header=True, header_style="bold")
        table.add_column("key", style="bold", no_wrap=True)
        table.add_column("does")
        rows: dict[str, list[str]] = {}  # one row per key: space pauses and resumes
        for binding in self.bindings:
            if binding.show or binding.tooltip:  # hidden from the footer but described: listed here
                rows.setdefault(binding.key_display or binding.key, []).append(binding.tooltip or binding.description)
        for key, does in rows.items():
            table.add_row(key, " / ".join(does))
        with VerticalScroll(id="box"):  # taller than 24 rows: it scrolls (arrows, pgdn)
            yield Static(Text("Keys", style="bold"))
            yield Static(table)
            yield Static(Text.assemble(
                "\nEvery fix is a restart from a checkpoint, written to control.jsonl; the charts mark it.\n"
                "Detaching (d, or a dropped SSH session) leaves training running; re-attach with\n",
                (f"  loratui watch {self.run_dir}", "bold")))
            yield Static("esc or ?: close", classes="hint")
