"""The alerts and events list as it grows during a run: a new row costs a repaint of the list, not of the screen.

A row per checkpoint arrives about once a second in config.example.toml. The
list keeps each row's render from one change to the next and renews only the
row index its strips carry for the mouse: a click must still open the row under
the pointer, and a row whose text changes (an alert resolved) must be drawn
anew.
"""

from __future__ import annotations

from test_ui_support import run_async
from textual.app import App, ComposeResult
from textual.screen import Screen

from loratui.ui.run_model import Entry
from loratui.ui.widgets.event_list import EventList


def checkpoint(seq: int) -> Entry:
    return Entry(seq=seq, time=1.7e9 + seq, step=50 * seq, kind="checkpoint_saved", severity="info",
                 text=f"checkpoint saved: step {50 * seq}")


class Events(App):
    def __init__(self):
        super().__init__()
        self.chosen: list[Entry] = []
        self.alerts: list[dict] = []

    def compose(self) -> ComposeResult:
        yield EventList()

    def on_event_list_entry_chosen(self, message: EventList.EntryChosen) -> None:
        self.chosen.append(message.entry)

    def on_event_list_alert_chosen(self, message: EventList.AlertChosen) -> None:
        self.alerts.append(message.alert)


def newest_first(count: int) -> tuple[Entry, ...]:
    return tuple(checkpoint(seq) for seq in reversed(range(count)))


async def listed(app, pilot, count: int) -> EventList:
    """The list showing `count` checkpoint rows, newest first, drawn."""
    events = app.query_one(EventList)
    events.show_entries(newest_first(count), count)
    await pilot.pause()
    return events


@run_async
async def test_new_rows_repaint_the_list_without_laying_out_the_screen(monkeypatch):
    layouts = []
    original = Screen._refresh_layout
    monkeypatch.setattr(Screen, "_refresh_layout", lambda self, *a, **k: (layouts.append(1), original(self, *a, **k))[1])
    app = Events()
    async with app.run_test(size=(80, 12)) as pilot:
        events = await listed(app, pilot, 30)  # more rows than fit: the scrollbar is there
        layouts.clear()
        for count in range(31, 41):
            events.show_entries(newest_first(count), count)
            await pilot.pause()
        assert layouts == []
        assert "step 1950" in "".join(strip.text for strip in events.render_lines(events.region.reset_offset))


@run_async
async def test_the_scrollbar_appearing_still_lays_out():
    app = Events()
    async with app.run_test(size=(80, 12)) as pilot:
        events = await listed(app, pilot, 2)
        assert not events.show_vertical_scrollbar
        await listed(app, pilot, 30)
        assert events.show_vertical_scrollbar
        assert events.vertical_scrollbar.window_virtual_size == 30


@run_async
async def test_a_click_opens_the_row_under_the_pointer_after_rows_arrive_on_top():
    app = Events()
    async with app.run_test(size=(80, 12)) as pilot:
        await listed(app, pilot, 3)  # the rows are drawn, with their indexes
        events = await listed(app, pilot, 5)  # two rows on top: the old rows move down
        moved = [segment.style.meta for segment in events.render_line(3) if segment.style and segment.text.strip()]
        assert moved and all(meta["option"] == 3 and "offset" in meta for meta in moved)  # selection's offsets kept
        await pilot.click(EventList, offset=(10, 4))  # the fourth row (the border is row 0)
        await pilot.pause()
        assert [entry.seq for entry in app.chosen] == [1]


@run_async
async def test_a_row_whose_text_changes_is_drawn_anew():
    alert = {"type": "alert", "severity": "critical", "title": "fp16 overflow"}
    open_row = Entry(seq=7, time=1.7e9, step=12, kind="alert", severity="critical", text="fp16 overflow", alert=alert)
    app = Events()
    async with app.run_test(size=(80, 12)) as pilot:
        events = app.query_one(EventList)
        events.show_entries((open_row,), 1)
        await pilot.pause()
        assert "(resolved" not in events.render_line(0).text
        resolved = Entry(**{**open_row.__dict__, "closed": "resolved at step 20"})
        events.show_entries((resolved,), 2)
        await pilot.pause()
        assert "(resolved at step 20)" in events.render_line(0).text
