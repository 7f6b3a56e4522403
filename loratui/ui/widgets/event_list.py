"""Alerts and events, newest first: step, time, what happened and the suggested fix's key.

Enter on an alert opens its details (the app handles `AlertChosen`).
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.message import Message
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from loratui.ui import format as fmt
from loratui.ui.run_model import Entry

SEVERITY = {"critical": ("✗", "bold red"), "warning": ("!", "bold yellow"), "info": ("·", ""),
            "good": ("✓", "green")}


class EventList(OptionList):
    DEFAULT_CSS = """
    EventList {
        height: 1fr;
        min-height: 3;
        border: round $primary-darken-1;
        padding: 0;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    EventList:focus {
        border: round $accent;
    }
    """

    @dataclass
    class AlertChosen(Message):
        alert: dict

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._entries: dict[str, Entry] = {}
        self._newest_seq = 0

    def on_mount(self) -> None:
        self.border_title = "Alerts & events · newest first"

    def show_entries(self, entries: tuple[Entry, ...]) -> None:
        """Replace the list when it changed, keeping the highlighted entry highlighted."""
        newest = entries[0].seq if entries else 0
        if newest == self._newest_seq and len(entries) == len(self._entries):
            return
        self._newest_seq = newest
        highlighted = self.highlighted_option.id if self.highlighted_option is not None else None
        self._entries = {str(entry.seq): entry for entry in entries}
        self.set_options(Option(_line(entry), id=str(entry.seq)) for entry in entries)
        if highlighted in self._entries:
            self.highlighted = self.get_option_index(highlighted)
        alerts = sum(1 for e in entries if e.alert is not None)
        self.border_subtitle = f"{alerts} alert{'s' if alerts != 1 else ''} · Enter: details" if alerts else ""

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        entry = self._entries.get(event.option.id or "")
        event.stop()
        if entry is not None and entry.alert is not None:
            self.post_message(self.AlertChosen(entry.alert))


def _line(entry: Entry) -> Text:
    mark, style = SEVERITY.get(entry.severity, ("·", ""))
    line = Text(no_wrap=True, overflow="ellipsis")
    line.append(f"{mark} ", style=style)
    line.append(f"{'' if entry.step is None else entry.step:>5} ", style="bold")
    line.append(f"{fmt.clock(entry.time)} ", style="dim")
    line.append(entry.text, style=style if entry.severity in ("critical", "warning") else "")
    return line
