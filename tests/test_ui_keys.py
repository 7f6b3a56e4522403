"""Every key and dialog of the dashboard, driven with Textual's pilot on recorded real runs.

Each test attaches the app (as `loratui watch` does) to a copy of a recorded
run cut mid-run, presses keys, and checks the commands appended to
control.jsonl and what the screen shows. The trainer's acknowledgements are
appended to events.jsonl by the test, as the trainer would write them.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
from test_ui_support import (DATA, append_event, caught_up, commands, overflow_alert,
                             recorded_run, run_async, screen_text, wait_for)

from loratui.run_dir import RunDir
from loratui.ui import format as fmt
from loratui.ui.app import DashboardApp
from loratui.ui.launch import report_exit
from loratui.ui.screens.alert_details import AlertDetails
from loratui.ui.screens.help_screen import HelpScreen
from loratui.ui.screens.learning_rate_dialog import LearningRateDialog
from loratui.ui.screens.precision_dialog import PrecisionDialog
from loratui.ui.screens.quit_dialog import QuitDialog
from loratui.ui.screens.rollback_dialog import RollbackDialog
from loratui.ui.widgets.event_list import EventList


pytestmark = pytest.mark.usefixtures("utc")  # the clock shown in rows (tests/conftest.py)


@run_async
async def test_history_and_state_shown(live_run):
    app = DashboardApp(live_run)
    async with app.run_test(size=(160, 48)) as pilot:
        await caught_up(app, pilot)
        header = app.view.header
        assert (header.state, header.step, header.max_steps, header.precision) == ("running", 45, 60, "fp16")
        assert header.eta_s is not None and header.eta_s > 0
        texts = [entry.text for entry in app.view.entries]
        assert any(text.startswith("checkpoint at step 40") for text in texts)
        assert app.view.charts.fp16_seen and app.query_one("#chart-scale").display


@run_async
async def test_s_saves(live_run):
    app = DashboardApp(live_run)
    async with app.run_test() as pilot:
        await caught_up(app, pilot)
        await pilot.press("s")
        assert [c["cmd"] for c in commands(live_run)] == ["save"]


@run_async
async def test_space_pauses_then_resumes(live_run):
    app = DashboardApp(live_run)
    async with app.run_test() as pilot:
        await caught_up(app, pilot)
        await pilot.press("space")
        assert commands(live_run)[-1]["cmd"] == "pause"
        append_event(live_run, {"type": "control", "step": 45, "cmd": "pause", "accepted": True, "message": "paused"})
        await wait_for(pilot, lambda: app.view.header.state == "paused", "the paused state")
        await pilot.pause()
        assert "Resume" in screen_text(app)  # the footer offers the other half of the toggle
        await pilot.press("space")
        assert commands(live_run)[-1]["cmd"] == "resume"


@run_async
async def test_p_switches_precision_through_the_dialog(live_run):
    app = DashboardApp(live_run)
    async with app.run_test(size=(120, 40)) as pilot:
        await caught_up(app, pilot)
        await pilot.press("p")
        dialog = app.screen
        assert isinstance(dialog, PrecisionDialog)
        # fp16 in use on a CPU: bf16 (fp32's range, no loss scaling) is suggested first, fp16 is not selectable.
        assert dialog.ordered() == ["bf16", "fp32", "fp16"]
        choices = dialog.query_one("#choices")
        assert choices.highlighted_option.id == "bf16"
        assert choices.get_option("fp16").disabled
        assert "emulated" in str(choices.get_option("bf16").prompt)
        await pilot.press("enter")  # choose bf16
        assert commands(live_run) == []  # nothing happens before the confirmation
        await pilot.press("enter")  # confirm
        restart = commands(live_run)[-1]
        assert (restart["cmd"], restart["precision"]) == ("restart", "bf16")
        await wait_for(pilot, lambda: app.view.header.state == "restarting", "the restarting state")


@run_async
async def test_precision_dialog_shows_advice_figures(live_run):
    """advice.json as `loratui advise --json` writes it (recorded by scripts/record_event_logs.py advice)."""
    shutil.copy(DATA / "advice_cpu.json", live_run / "advice.json")
    advice = json.loads((live_run / "advice.json").read_text())
    app = DashboardApp(live_run)
    async with app.run_test(size=(120, 48)) as pilot:
        await caught_up(app, pilot)
        await pilot.press("p")
        dialog = app.screen
        assert dialog.ordered()[0] == advice["recommendation"]  # the advice's recommendation comes first
        shown = screen_text(app)
        assert "suggested: measured by loratui advise" in shown
        assert f"loratui advise recommends {advice['recommendation']}" in shown
        for figure in ("verdict", "tokens_per_s", "final_loss", "skipped_after_calibration", "peak_memory_mib"):
            cells = [advice["trials"][trial][figure] for trial in ("fp32", "bf16", "fp16")]  # the columns' order
            row = re.escape(figure.replace("_", " ")) + "".join(
                r" +" + re.escape(cell if isinstance(cell, str) else fmt.number(cell, 3)) for cell in cells)
            assert re.search(row, shown), (figure, cells)
        assert advice["reasons"][0][:60] in shown.replace("\n", " ")
        await pilot.press("escape")
        assert not isinstance(app.screen, PrecisionDialog)
        assert commands(live_run) == []


@run_async
async def test_l_lowers_the_learning_rate_with_an_editable_factor(live_run):
    app = DashboardApp(live_run)
    async with app.run_test(size=(120, 40)) as pilot:
        await caught_up(app, pilot)
        await pilot.press("l")
        dialog = app.screen
        assert isinstance(dialog, LearningRateDialog)
        assert dialog.current == pytest.approx(2e-3)  # the config's peak rate
        factor, rate = dialog.query_one("#factor"), dialog.query_one("#rate")
        assert (factor.value, rate.value) == ("0.5", "0.001")  # train.lr_factor, and the rate it gives
        assert factor.has_focus

        await pilot.press("end", "backspace")  # "0.": half typed, not a number yet
        assert factor.value == "0." and factor.has_class("-invalid")
        assert "factor: enter a positive number" in screen_text(app)
        assert dialog.query_one("#confirm").disabled
        await pilot.press("enter")  # refused: the dialog stays, nothing is sent
        await pilot.click("#confirm")
        assert app.screen is dialog and commands(live_run) == []

        await pilot.press("2", "5")
        assert factor.value == "0.25" and not factor.has_class("-invalid")
        assert rate.value == "0.0005"  # the rate follows the factor
        assert "enter a positive number" not in screen_text(app)
        assert "Restart with lr 0.002 → 5.0e-04" in screen_text(app)

        await pilot.press("tab", "backspace")  # the rate field, its text selected on focus, then cleared
        assert rate.value == "" and rate.has_class("-invalid")
        assert "new rate: enter a positive number" in screen_text(app)
        await pilot.press("enter")
        assert app.screen is dialog and commands(live_run) == []
        await pilot.press(*"0.0004")
        assert factor.value == "0.2"  # the factor follows the rate
        await pilot.press("enter")
        assert app.screen is not dialog
        restart = commands(live_run)[-1]
        assert restart["cmd"] == "restart" and restart["learning_rate"] == pytest.approx(4e-4)


@run_async
async def test_r_rolls_back_to_a_chosen_checkpoint(live_run):
    app = DashboardApp(live_run)
    async with app.run_test(size=(120, 40)) as pilot:
        await caught_up(app, pilot)
        await pilot.press("r")
        dialog = app.screen
        assert isinstance(dialog, RollbackDialog)
        assert [c.step for c in dialog.checkpoints] == [40, 20]  # checkpoint.keep = 3 removed step 0 at 60
        row = str(dialog.query_one("#choices").get_option("20").prompt)
        assert "fp16" in row and " ok" in row  # precision and health at that checkpoint
        await pilot.press("down", "enter")  # step 20
        assert commands(live_run) == []
        await pilot.press("enter")
        restart = commands(live_run)[-1]
        assert (restart["cmd"], restart["from_step"]) == ("restart", 20)


@run_async
async def test_alert_details_and_its_fix_key(live_run):
    app = DashboardApp(live_run)
    async with app.run_test(size=(120, 40)) as pilot:
        await caught_up(app, pilot)
        append_event(live_run, overflow_alert(45))
        await wait_for(pilot, lambda: app.view.active_alerts, "the alert")
        await pilot.pause()
        shown = screen_text(app)
        assert "press p to switch precision" in shown  # the banner names the fix's key
        events = app.query_one(EventList)
        events.focus()
        events.highlighted = 0
        await pilot.press("enter")
        details = app.screen
        assert isinstance(details, AlertDetails)
        shown = screen_text(app)
        for text in ("fp16 tops out at 65504", "model.layers.1.mlp.down_proj", "1.2e+05", "press p"):
            assert text in shown
        await pilot.press("l")  # not this alert's fix: nothing happens
        assert isinstance(app.screen, AlertDetails)
        await pilot.press("p")
        assert isinstance(app.screen, PrecisionDialog)
        assert app.screen.suggested == "bf16" and "overflow" in app.screen.suggested_because


@run_async
async def test_q_stop_sends_stop_and_waits_for_the_run_to_end(live_run):
    app = DashboardApp(live_run)
    async with app.run_test() as pilot:
        await caught_up(app, pilot)
        await pilot.press("q")
        assert isinstance(app.screen, QuitDialog)
        await pilot.press("s")
        assert commands(live_run)[-1]["cmd"] == "stop"
        await wait_for(pilot, lambda: app.view.header.state == "stopping", "the stopping state")
        assert app.is_running
        append_event(live_run, {"type": "checkpoint", "step": 45, "path": "x", "reason": "stop", "loss": 2.5})
        append_event(live_run, {"type": "run_finished", "step": 45, "reason": "stopped from the dashboard"})
        await wait_for(pilot, lambda: not app.is_running, "the app to exit after the run ended")
    assert app.return_value == 0


@run_async
async def test_q_detach_and_cancel(live_run):
    app = DashboardApp(live_run)
    async with app.run_test() as pilot:
        await caught_up(app, pilot)
        await pilot.press("q", "c")
        assert app.is_running and not isinstance(app.screen, QuitDialog)
        await pilot.press("q", "d")
    assert app.detached and app.return_value == 0
    assert commands(live_run) == []  # detaching leaves the training alone


@run_async
async def test_d_detaches(live_run, capsys):
    app = DashboardApp(live_run)
    async with app.run_test() as pilot:
        await caught_up(app, pilot)
        await pilot.press("d")
    assert app.detached and app.return_value == 0 and commands(live_run) == []
    assert app.state == "detached" and app.view.header.state == "detached"  # the last frame says so
    with app.model.lock:  # a step read while the dashboard exits does not bring "running" back
        app.model.apply_events([{"type": "step", "step": 46, "attempt": 0, "loss": 2.0, "lr": 1e-3}])
    assert app.state == "detached"
    assert report_exit(app, RunDir(live_run), app.return_value) == 0
    assert capsys.readouterr().err == f"loratui: detached; training goes on. Re-attach with: loratui watch {live_run}\n"


@run_async
async def test_d_on_a_finished_run_is_a_plain_quit(tmp_path, capsys):
    run_dir = recorded_run("healthy_fp16", tmp_path)
    app = DashboardApp(run_dir)
    async with app.run_test() as pilot:
        await caught_up(app, pilot)
        await pilot.press("d")
    assert app.state == "finished" and app.return_value == 0
    assert report_exit(app, RunDir(run_dir), app.return_value) == 0
    err = capsys.readouterr().err
    assert "training goes on" not in err  # nothing goes on
    assert err.startswith("loratui: run ended at step 60")  # the way-out summary (test_ui_defects)


@run_async
async def test_question_mark_lists_every_key(live_run):
    app = DashboardApp(live_run)
    async with app.run_test(size=(120, 40)) as pilot:
        await caught_up(app, pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        shown = screen_text(app)
        for key, does in (("p", "switch precision"), ("l", "lower the learning rate"), ("r", "roll back"),
                          ("s", "save a checkpoint"), ("space", "pause"), ("enter", "alert's details"),
                          ("d", "detach"), ("q", "quit"), ("?", "these keys")):
            assert does in shown, key
        assert "loratui watch" in shown and live_run.name in shown  # how to re-attach
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


@run_async
async def test_a_finished_run_shows_history_and_quits_at_once(tmp_path):
    run_dir = recorded_run("healthy_fp16", tmp_path)
    app = DashboardApp(run_dir)
    async with app.run_test() as pilot:
        await caught_up(app, pilot)
        assert (app.view.header.state, app.view.header.step) == ("finished", 60)
        await pilot.press("p", "s", "space")
        assert not isinstance(app.screen, PrecisionDialog) and commands(run_dir) == []
        await pilot.press("q")
    assert app.return_value == 0


@run_async
async def test_a_failed_run_shows_its_error_and_quits_with_1(tmp_path):
    run_dir = recorded_run("healthy_fp16", tmp_path, until_step=30)
    append_event(run_dir, {"type": "run_failed", "step": 30, "error": "RuntimeError: CUDA error: out of memory",
                           "traceback": "Traceback (most recent call last):\n  ...\nRuntimeError: CUDA error"})
    app = DashboardApp(run_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await caught_up(app, pilot)
        assert app.view.header.state == "failed"
        shown = screen_text(app)
        assert "Training failed" in shown and "CUDA error: out of memory" in shown
        assert "trainer.log" not in shown  # a headless run has none: its output went to its own terminal
        await pilot.press("q")
    assert app.return_value == 1


@run_async
async def test_watch_on_a_failed_run_started_by_the_dashboard_shows_its_trainer_log(tmp_path, capsys):
    run_dir = recorded_run("healthy_fp16", tmp_path, until_step=30)
    (run_dir / "trainer.log").write_text("".join(f"log line {n}\n" for n in range(40)) + "RuntimeError: CUDA error\n")
    append_event(run_dir, {"type": "run_failed", "step": 30, "error": "RuntimeError: CUDA error: out of memory",
                           "traceback": "Traceback (most recent call last):\n  ...\nRuntimeError: CUDA error"})
    app = DashboardApp(run_dir)  # as `loratui watch` makes it: no trainer of its own
    async with app.run_test(size=(120, 48)) as pilot:
        await caught_up(app, pilot)
        await wait_for(pilot, lambda: (app.view.failure or {}).get("log_tail"), "the trainer.log tail")
        await pilot.pause()
        shown = screen_text(app)
        assert f"last lines of {run_dir / 'trainer.log'}" in shown.replace("\n", "")
        assert "log line 39" in shown and "log line 20" not in shown  # the tail only
        await pilot.press("q")
    assert report_exit(app, RunDir(run_dir), app.return_value) == 1
    err = capsys.readouterr().err
    assert "training failed: RuntimeError: CUDA error: out of memory" in err and str(run_dir / "trainer.log") in err


@run_async
async def test_resizing_collapses_and_expands_the_layout(live_run):
    app = DashboardApp(live_run)
    async with app.run_test(size=(80, 24)) as pilot:
        await caught_up(app, pilot)
        assert app.screen.has_class("compact")
        assert app.query_one("#body").styles.layout.name == "vertical"  # charts above health and events
        await pilot.resize_terminal(160, 48)
        await pilot.pause()
        assert not app.screen.has_class("compact")
        assert app.query_one("#body").styles.layout.name == "horizontal"  # charts beside them


@run_async
async def test_resizing_under_a_dialog_relayouts_the_dashboard_not_the_dialog(live_run):
    app = DashboardApp(live_run)
    async with app.run_test(size=(160, 48)) as pilot:
        await caught_up(app, pilot)
        dashboard = app.screen
        await pilot.press("p")
        dialog = app.screen
        assert isinstance(dialog, PrecisionDialog)
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        assert dashboard.has_class("compact") and not dialog.has_class("compact")
        assert app.query_one("#body").styles.layout.name == "vertical"
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is dashboard
        assert re.search(r"loss +grad norm \(log\)", screen_text(app))  # the charts side by side, as at 80x24
        await pilot.press("r")
        await pilot.resize_terminal(160, 48)
        await pilot.pause()
        assert not dashboard.has_class("compact") and not app.screen.has_class("compact")
        assert app.query_one("#body").styles.layout.name == "horizontal"


@run_async
async def test_no_color_marks_the_highlighted_choice_by_its_style(live_run, monkeypatch):
    """NO_COLOR drops every colour (tmux test), so a list's highlighted row needs a text style of its own."""
    monkeypatch.setenv("NO_COLOR", "1")
    app = DashboardApp(live_run)
    async with app.run_test(size=(120, 40)) as pilot:
        await caught_up(app, pilot)
        await pilot.press("p")
        highlighted = app.screen.query_one("#choices").get_component_rich_style("option-list--option-highlighted")
        assert highlighted.underline and highlighted.bold
