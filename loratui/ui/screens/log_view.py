"""The run's logs in full: trainer.log and every event, scrollable and searchable with `/`.

Keys:
| key             | does                                             |
|-----------------|--------------------------------------------------|
| tab             | switch between trainer.log and the events        |
| /               | search (type, enter); n / N: next / previous     |
| up, down, pgup, pgdn, home, end | scroll                           |
| escape / q      | back to the dashboard                            |

Both files are followed while the view is open (once a second): new lines are
added, and the view stays at the end if it was there. Only the newest
MAX_LINES of each are kept: a long run's event log can be hundreds of MB,
which belongs in a pager; the title then says so.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Input, Static

from loratui.events.encode import decode_event
from loratui.ui.widgets.searchable_log import SearchableLog

MAX_LINES = 20_000
FIRST_READ_BYTES = 16 << 20  # a first read starts this far from the end at most
FOLLOW_SECONDS = 1.0
TRAINER_LOG, EVENTS = "trainer-log", "events"


class FollowedFile:
    """A text file read as it grows, whole lines only; the first read takes its tail."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.skipped = False  # the first read left out the file's start

    def new_lines(self) -> list[str]:
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            return []
        if size < self.offset:  # replaced or truncated: read again
            self.offset, self.skipped = 0, False
        from_the_middle = self.offset == 0 and size > FIRST_READ_BYTES
        if from_the_middle:
            self.offset, self.skipped = size - FIRST_READ_BYTES, True
        with open(self.path, "rb") as file:
            file.seek(self.offset)
            chunk = file.read(size - self.offset)
        if from_the_middle:  # the first line read is the end of one cut in two
            cut = chunk.find(b"\n") + 1
            self.offset, chunk = self.offset + cut, chunk[cut:]
        end = chunk.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        return chunk[: end + 1].decode("utf-8", "replace").splitlines()


def event_line(line: str) -> str:
    """An event as one readable line: clock time, type, step, then its other fields as JSON."""
    try:
        event = decode_event(line)
    except ValueError:
        return f"(not an event) {line}"
    when = event.pop("time", None)
    clock = time.strftime("%H:%M:%S", time.localtime(when)) if isinstance(when, (int, float)) else "--:--:--"
    kind, step = event.pop("type", "?"), event.pop("step", None)
    if event.get("attempt") == 0:
        del event["attempt"]  # the usual case; a restart's attempts stay visible
    rest = " ".join(f"{key}={json.dumps(value) if isinstance(value, (dict, list)) else value}"
                    for key, value in event.items())
    return f"{clock} {kind:<13} {'' if step is None else step:>6}  {rest}"


class LogView(Screen):
    DEFAULT_CSS = """
    LogView #log-title {
        height: 1;
        padding: 0 1;
        text-style: bold;
        background: $panel;
    }
    LogView #search {
        dock: bottom;
        display: none;
    }
    LogView #search.-open {
        display: block;
    }
    LogView #search-status {
        height: 1;
        padding: 0 1;
        color: $text-muted;
    }
    """
    BINDINGS = [
        Binding("tab", "switch_file", "trainer.log / events", id="switch_file", priority=True),
        Binding("slash", "open_search", "Search", key_display="/", id="search"),
        Binding("n", "next_match", "Next", id="next_match"),
        Binding("N", "previous_match", "Previous", key_display="N", id="previous_match"),
        Binding("escape", "close", "Back", id="close"),
        Binding("q", "close", "Back", show=False, id="close_q"),
    ]

    def __init__(self, run_dir: Path, *, show: str = TRAINER_LOG, search: bool = False):
        super().__init__()
        self.run_dir = run_dir
        self.search_at_once = search
        self.files = {TRAINER_LOG: FollowedFile(run_dir / "trainer.log"),
                      EVENTS: FollowedFile(run_dir / "events.jsonl")}
        self.shown = show

    def compose(self) -> ComposeResult:
        yield Static("", id="log-title", markup=False)
        yield SearchableLog(id=TRAINER_LOG, max_lines=MAX_LINES)
        yield SearchableLog(id=EVENTS, max_lines=MAX_LINES)
        yield Static("", id="search-status", markup=False)
        yield Input(placeholder="search (enter: find; escape: close)", id="search")
        yield Footer()

    def on_mount(self) -> None:
        self.follow()
        for log in self.query(SearchableLog):
            log.scroll_end(animate=False)
        self.show(self.shown)
        self.set_interval(FOLLOW_SECONDS, self.follow)
        if self.search_at_once:
            self.action_open_search()

    def follow(self) -> None:
        for name, followed in self.files.items():
            lines = followed.new_lines()
            if not lines:
                continue
            log = self.query_one(f"#{name}", SearchableLog)
            at_end = log.scroll_offset.y >= log.max_scroll_y
            log.write_lines([event_line(line) for line in lines] if name == EVENTS else lines,
                            scroll_end=at_end)
        self.update_title()

    def show(self, name: str) -> None:
        self.shown = name
        for log in self.query(SearchableLog):
            log.display = log.id == name
        self.query_one(f"#{name}", SearchableLog).focus()
        self.update_title()

    def update_title(self) -> None:
        followed, log = self.files[self.shown], self.query_one(f"#{self.shown}", SearchableLog)
        what = "trainer.log" if self.shown == TRAINER_LOG else "events.jsonl"
        missing = not followed.path.exists()
        cut = followed.skipped or log.line_count >= MAX_LINES
        detail = "not written yet" if missing else \
            f"{log.line_count} lines" + (f" (the newest; the whole file: {followed.path})" if cut else "")
        other = "events" if self.shown == TRAINER_LOG else "trainer.log"
        self.query_one("#log-title", Static).update(f"{what} · {detail} · tab: {other}")

    def action_switch_file(self) -> None:
        if self.query_one("#search", Input).has_focus:
            return
        self.show(EVENTS if self.shown == TRAINER_LOG else TRAINER_LOG)
        self.query_one("#search-status", Static).update("")

    def current_log(self) -> SearchableLog:
        return self.query_one(f"#{self.shown}", SearchableLog)

    def action_open_search(self) -> None:
        search = self.query_one("#search", Input)
        search.add_class("-open")
        search.value = self.current_log().query
        search.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.input.remove_class("-open")
        log = self.current_log()
        log.focus()
        self.report_search(*log.search(event.value))

    def action_next_match(self) -> None:
        log = self.current_log()
        if log.query:
            self.report_search(*log.search(log.query))

    def action_previous_match(self) -> None:
        log = self.current_log()
        if log.query:
            self.report_search(*log.search(log.query, backwards=True))

    def report_search(self, number: int, count: int) -> None:
        log = self.current_log()
        status = f"'{log.query}': no match" if not count else \
            f"'{log.query}': match {number} of {count}, line {log.current + 1} · n: next, N: previous"
        self.query_one("#search-status", Static).update(status)

    def action_close(self) -> None:
        search = self.query_one("#search", Input)
        if search.has_focus:
            search.remove_class("-open")
            self.current_log().focus()
            return
        self.dismiss()
