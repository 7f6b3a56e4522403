"""The log view: trainer.log and every event, scrollable, searchable with `/`, followed while open.

Driven with real keys on a small app that opens the view over a recorded real
run; the dashboard's key that opens it is tested in test_ui_features_keys.py.
"""

from __future__ import annotations

from test_ui_support import append_event, recorded_run, run_async, screen_text, wait_for
from textual.app import App

from loratui.events.jsonl import read_events
from loratui.ui.screens.log_view import EVENTS, TRAINER_LOG, FollowedFile, LogView, event_line
from loratui.ui.widgets.searchable_log import SearchableLog


class Opener(App):
    def __init__(self, run_dir):
        super().__init__()
        self.run_dir = run_dir

    def on_mount(self) -> None:
        self.push_screen(LogView(self.run_dir))


def trainer_log(run_dir, lines: int) -> list[str]:
    text = [f"{index:04d} tokenizing row batch" for index in range(lines)] + ["RuntimeError: CUDA out of memory"]
    (run_dir / "trainer.log").write_text("\n".join(text) + "\n")
    return text


@run_async
async def test_trainer_log_opens_at_its_end_and_search_finds_each_match(tmp_path):
    run_dir = recorded_run("fp16_overflow", tmp_path)
    lines = trainer_log(run_dir, 300)
    app = Opener(run_dir)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        text = screen_text(app)
        assert "trainer.log · 301 lines · tab: events" in text
        assert "RuntimeError: CUDA out of memory" in text and "0000 tokenizing" not in text  # at the end
        await pilot.press("slash", *"012", "enter")
        await pilot.pause()
        view = app.screen
        log = view.query_one(f"#{TRAINER_LOG}", SearchableLog)
        expected = [i for i, line in enumerate(lines) if "012" in line]  # 0012 and 0120..0129
        assert log.current == expected[0] and "match 1 of 11, line 13" in screen_text(app), screen_text(app)
        assert lines[expected[0]] in screen_text(app)
        await pilot.press("n", "n")
        assert log.current == expected[2]
        await pilot.press("N")
        assert log.current == expected[1]
        await pilot.press("N", "N")  # before the first: wraps to the last
        assert log.current == expected[-1] and lines[expected[-1]] in screen_text(app)
        await pilot.press("slash", *"no such text", "enter")
        await pilot.pause()
        assert "'no such text': no match" in screen_text(app)


@run_async
async def test_events_are_listed_one_a_line_and_followed_while_open(tmp_path):
    run_dir = recorded_run("fp16_overflow", tmp_path, until_step=30)
    events = read_events(run_dir / "events.jsonl")
    app = Opener(run_dir)
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.press("tab")
        await pilot.pause()
        log = app.screen.query_one(f"#{EVENTS}", SearchableLog)
        assert log.display and log.line_count == len(events)
        assert f"events.jsonl · {len(events)} lines · tab: trainer.log" in screen_text(app)
        await pilot.press("slash", *"alert", "enter")
        await pilot.pause()
        alert = next(e for e in events if e["type"] == "alert")
        assert log.lines[log.current].split()[1:3] == ["alert", str(alert["step"])]
        assert alert["message"] in log.lines[log.current]
        append_event(run_dir, {"type": "notice", "step": 31, "message": "written while the view is open"})
        await wait_for(pilot, lambda: log.line_count == len(events) + 1, "the new event in the view")
        assert "written while the view is open" in log.lines[-1]
        await pilot.press("escape")
        assert not isinstance(app.screen, LogView)


def test_an_event_line_is_readable_and_keeps_every_field():
    line = event_line('{"type":"restart","time":1795836702.5,"attempt":1,"step":20,"from_step":20,'
                      '"precision":"bf16","fix":{"precision":"bf16"},"loss":"nan"}')
    assert line.split()[1:3] == ["restart", "20"]
    assert "attempt=1" in line and 'fix={"precision": "bf16"}' in line and "loss=nan" in line
    assert event_line("not json").startswith("(not an event) not json")


def test_a_long_file_is_read_from_its_tail_on_whole_lines(tmp_path, monkeypatch):
    from loratui.ui.screens import log_view

    monkeypatch.setattr(log_view, "FIRST_READ_BYTES", 1000)
    path = tmp_path / "trainer.log"
    path.write_text("".join(f"line {index:05d}\n" for index in range(1000)))  # 11 bytes a line
    followed = FollowedFile(path)
    lines = followed.new_lines()
    assert followed.skipped and lines[-1] == "line 00999" and len(lines) == 1000 // 11
    assert all(line.startswith("line ") and len(line) == 10 for line in lines)  # no torn first line
    with path.open("a") as file:
        file.write("line 01000\nline 010")  # the torn last line waits for its end
    assert followed.new_lines() == ["line 01000"]
