"""Alerts and events, newest first: step, time, what happened and the suggested fix's key.

Enter opens the highlighted row in full: an alert's details (the app handles
`AlertChosen`), any other row's whole text (`EntryChosen`). With no row
highlighted yet, Enter opens the newest open alert. An alert's row says when it
was resolved (or left behind by a restart); only open alerts are counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.segment import Segment
from rich.style import Style as RichStyle
from rich.text import Text
from textual.geometry import Size
from textual.message import Message
from textual.reactive import Reactive
from textual.strip import Strip
from textual.style import Style as VisualStyle
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from loratui.ui import format as fmt
from loratui.ui.run_model import Entry


NARROW = 60  # columns, borders included: below this a row leaves out its clock time (its details have it)


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

    # A new row changes only the list's scrollable height; the list's own size comes from the
    # layout (1fr), not from its rows. Widget.virtual_size would lay out the whole screen for it
    # (a new row per checkpoint, about once a second in config.example.toml on a small model:
    # 16 ms of CPU each in a profile beside a training run); here the list only repaints. The
    # scrollbar appearing or going still lays out (show_vertical_scrollbar is a layout reactive).
    virtual_size = Reactive(Size(0, 0), layout=False)

    @dataclass
    class AlertChosen(Message):
        alert: dict

    @dataclass
    class EntryChosen(Message):
        entry: Entry

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._entries: dict[str, Entry] = {}
        self._drawn: tuple[int, bool] = (-1, False)  # the entries' revision and the width they were laid out for
        self._shown: tuple[Entry, ...] = ()
        # Rows kept from one change of the list to the next (a new event rebuilds the list's
        # options, and OptionList would turn every row's text into strips again): the Option of
        # each row by what it shows, and each row's strips by its Option, style and width, with
        # the index their mouse meta was made for. A row whose text changes (an alert resolved)
        # gets a new Option, so it is drawn anew.
        self._row_options: dict[tuple, Option] = {}
        self._row_strips: dict[tuple, tuple[int, list[Strip]]] = {}

    def on_mount(self) -> None:
        self.border_title = "Alerts & events · newest first"

    def show_entries(self, entries: tuple[Entry, ...], revision: int) -> None:
        """Replace the list when it changed (or its width crossed NARROW), keeping the highlighted entry."""
        narrow = self.size.width < NARROW  # the clock goes first: the row's text needs the room more
        if (revision, narrow) == self._drawn:
            return
        self._drawn = (revision, narrow)
        self._shown = entries
        highlighted = self.highlighted_option.id if self.highlighted_option is not None else None
        self._entries = {str(entry.seq): entry for entry in entries}
        options = {}
        for entry in entries:
            key = (*_shown_fields(entry), narrow)
            options[key] = self._row_options.get(key) or Option(_line(entry, narrow), id=str(entry.seq))
        self._row_options = options
        shown = set(options.values())
        self._row_strips = {key: value for key, value in self._row_strips.items() if key[0] in shown}
        self.set_options(options.values())
        if highlighted in self._entries:
            self.highlighted = self.get_option_index(highlighted)
        open_alerts = sum(1 for e in entries if e.open_alert)
        self.border_subtitle = (f"{open_alerts} open alert{'s' if open_alerts != 1 else ''} · Enter: details"
                                if open_alerts else "")

    def _get_option_render(self, option: Option, style: VisualStyle) -> list[Strip]:
        """A row's strips, drawn once per text, style and width; when a new row on top moves it down, only
        the index its strips carry for the mouse is renewed."""
        index = self._option_to_index[option]
        key = (option, style, self.scrollable_content_region.width)
        drawn = self._row_strips.get(key)
        if drawn is None:
            drawn = (index, super()._get_option_render(option, style))
        elif drawn[0] != index:
            drawn = (index, [_for_option(strip, index) for strip in drawn[1]])
        self._row_strips[key] = drawn
        return drawn[1]

    def on_resize(self) -> None:
        self.show_entries(self._shown, self._drawn[0])

    def highlighted_entry(self) -> Entry | None:
        option = self.highlighted_option
        return self._entries.get(option.id or "") if option is not None else None

    def newest_open_alert(self) -> Entry | None:
        return next((entry for entry in self._entries.values() if entry.open_alert), None)

    def action_select(self) -> None:
        """Enter: the highlighted row, or with none highlighted yet the newest open alert."""
        if self.highlighted is None:
            newest = self.newest_open_alert()
            if newest is not None:
                self.highlighted = self.get_option_index(str(newest.seq))
                self.post_message(self.AlertChosen(newest.alert))
            return
        super().action_select()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        entry = self._entries.get(event.option.id or "")
        event.stop()
        if entry is None:
            return
        self.post_message(self.AlertChosen(entry.alert) if entry.alert is not None else self.EntryChosen(entry))


def _for_option(strip: Strip, index: int) -> Strip:
    """A row's strip with the mouse meta of another index (a click reads it to know the row); the rest of each
    segment's meta (its text offset, for selection) kept. Strip.apply_meta would not do: a segment's own meta
    wins over what is applied to it."""
    return Strip([Segment(text, style.clear_meta_and_links() + RichStyle.from_meta({**style.meta, "option": index})
                          if style else style, control) for text, style, control in strip], strip.cell_length)


def _shown_fields(entry: Entry) -> tuple:
    """What a row's text is made of (`_line`): a row whose fields are unchanged keeps its render."""
    return entry.seq, entry.time, entry.step, entry.severity, entry.text, entry.closed


def _line(entry: Entry, narrow: bool = False) -> Text:
    severity = "good" if entry.closed else entry.severity
    line = Text(no_wrap=True, overflow="ellipsis")
    line.append(f"{fmt.SEVERITY_MARKS.get(severity, '·')} ", style=fmt.SEVERITY_STYLES.get(severity, ""))
    step = "" if entry.step is None else entry.step
    if narrow:
        line.append(f"{step} " if step != "" else "", style="bold")
    else:
        line.append(f"{step:>5} ", style="bold")
        line.append(f"{fmt.clock(entry.time)} ", style="dim")
    if entry.closed:
        line.append(f"({entry.closed}) ", style="green")
        line.append(entry.text, style="dim")
    else:
        line.append(entry.text, style=fmt.SEVERITY_STYLES.get(severity, "")
                    if severity in ("critical", "warning") else "")
    return line
