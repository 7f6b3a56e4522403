"""What a new user tripped over (issue 16's defects), each reproduced through real keys with Textual's pilot.

Each test attaches the dashboard (as `loratui watch` does) to a copy of a
recorded real run, appends the events the trainer would write, presses the
keys a user pressed and reads the screen. Terminal-level defects (Ctrl+C in a
real terminal, the shell summary on exit, sizes) are in test_e2e_tmux.py.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import time

import pytest
from test_ui_support import (append_event, caught_up, commands, overflow_alert,
                             recorded_run, run_async, screen_text, wait_for)

from loratui.run_dir import RunDir
from loratui.ui import format as fmt
from loratui.ui.app import DashboardApp
from loratui.ui.launch import report_exit
from loratui.ui.screens.alert_details import AlertDetails
from loratui.ui.screens.help_screen import HelpScreen
from loratui.ui.screens.precision_dialog import PrecisionDialog
from loratui.ui.screens.quit_dialog import QuitDialog
from loratui.ui.screens.text_details import TextDetails
from loratui.ui.widgets.event_list import EventList


pytestmark = pytest.mark.usefixtures("utc")  # the clock shown in rows (tests/conftest.py)


async def with_alert(app, pilot, run_dir, alert: dict) -> None:
    append_event(run_dir, alert)
    await wait_for(pilot, lambda: app.view.active_alerts, "the alert")
    await pilot.pause()


@run_async
async def test_1_enter_on_a_fresh_alert_opens_it_and_help_names_the_arrows(live_run):
    app = DashboardApp(live_run)
    async with app.run_test(size=(120, 40)) as pilot:
        await caught_up(app, pilot)
        await with_alert(app, pilot, live_run, overflow_alert(45))
        assert app.query_one(EventList).highlighted is None  # nothing picked: as the user found it
        await pilot.press("enter")
        assert isinstance(app.screen, AlertDetails) and app.screen.alert["kind"] == "overflow"
        await pilot.press("escape", "question_mark")
        assert isinstance(app.screen, HelpScreen)
        assert "↑ ↓ pick a row" in screen_text(app)


@run_async
async def test_2_a_resolved_alert_reads_as_resolved_and_is_not_counted(live_run):
    app = DashboardApp(live_run)
    async with app.run_test(size=(120, 40)) as pilot:
        await caught_up(app, pilot)
        await with_alert(app, pilot, live_run, overflow_alert(45))
        assert "1 open alert · Enter: details" in screen_text(app)
        append_event(live_run, {"type": "alert_resolved", "step": 47, "kind": "overflow"})
        await wait_for(pilot, lambda: not app.view.active_alerts, "the resolution")
        await pilot.pause()
        shown = screen_text(app)
        assert "open alert" not in shown and "(resolved at step 47" in shown
        row = next(e for e in app.view.entries if e.alert is not None)
        assert row.closed.startswith("resolved at step 47") and not row.open_alert
        await pilot.press("enter")  # no open alert, nothing highlighted: nothing opens
        assert not isinstance(app.screen, AlertDetails)


@run_async
async def test_3_any_row_opens_in_full_and_the_alert_row_shows_its_fix_key(live_run):
    app = DashboardApp(live_run)
    async with app.run_test(size=(80, 24)) as pilot:
        await caught_up(app, pilot)
        await with_alert(app, pilot, live_run, overflow_alert(45))
        assert "overflow [p: switch precision]" in screen_text(app)  # the key before the cut-off message
        await pilot.press("down", "down")  # the row under the alert: an ordinary event, cut short on screen
        entry = app.query_one(EventList).highlighted_entry()
        assert entry.alert is None and entry.text not in screen_text(app)
        await pilot.press("enter")
        assert isinstance(app.screen, TextDetails)
        assert entry.text in screen_text(app).replace("\n", " ").replace("  ", " ") or \
            entry.text[:60] in screen_text(app)
        await pilot.press("escape")
        await pilot.pause()
        await pilot.press("up")
        await pilot.pause()
        await pilot.press("enter")
        assert isinstance(app.screen, AlertDetails)
        assert "p: apply the fix" in screen_text(app)  # the dialog's last line fits at 80x24


@run_async
async def test_3_health_reasons_read_whole_in_their_details_and_on_a_wide_terminal(live_run):
    reason = "largest activation 2.1e4 of 65504 in model.layers.1.mlp.down_proj, measured on the last probe batch"
    app = DashboardApp(live_run)
    async with app.run_test(size=(160, 48)) as pilot:
        await caught_up(app, pilot)
        append_event(live_run, {"type": "health", "step": 45, "checks": {
            "fp16_headroom": {"status": "warn", "value": 3.1, "summary": reason}}})
        await wait_for(pilot, lambda: "fp16_headroom" in app.view.health and len(app.view.health) == 1, "health")
        await pilot.pause()
        assert app.screen.has_class("wide")
        shown = screen_text(app)
        assert all(word in shown for word in reason.split())  # half the width, and the reason wrapped whole
        await pilot.press("h")
        assert isinstance(app.screen, TextDetails)
        assert " ".join(reason.split()) in " ".join(dialog_text(app).split())


@run_async
async def test_3_the_banner_keeps_its_keys_when_the_message_is_cut(live_run):
    app = DashboardApp(live_run)
    async with app.run_test(size=(160, 48)) as pilot:
        await caught_up(app, pilot)
        alert = overflow_alert(45)
        alert["message"] = "fp16 overflow " + "x" * 200
        await with_alert(app, pilot, live_run, alert)
        banner = screen_text(app).splitlines()[2]
        assert "press p to switch precision · enter: details" in banner


def dialog_text(app) -> str:
    """The text inside the open dialog's frame (drawn with █ on both sides), its lines joined."""
    inside = [line[line.index("█") + 1:line.rindex("█")] for line in screen_text(app).splitlines()
              if line.count("█") >= 2]
    return " ".join(inside)


def rename(run_dir, name: str) -> None:
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    out = []
    for line in lines:
        event = json.loads(line)
        if event["type"] == "run_started":
            event["config"]["run"]["name"] = name
        out.append(json.dumps(event))
    (run_dir / "events.jsonl").write_text("\n".join(out) + "\n")


@run_async
async def test_4_a_long_run_name_is_cut_never_the_state_or_the_attempt(live_run):
    name = "a-very-long-experiment-name-" * 5
    rename(live_run, name[:120])
    app = DashboardApp(live_run)
    async with app.run_test(size=(100, 30)) as pilot:
        await caught_up(app, pilot)
        first = screen_text(app).splitlines()[0]
        assert "RUNNING" in first and "fp16" in first and "attempt 0" in first
        assert first.lstrip().startswith("a-very-long-experiment") and "…" in first


@run_async
async def test_5_keys_of_a_finished_run_are_hidden_and_say_why(tmp_path):
    run_dir = recorded_run("healthy_fp16", tmp_path)
    app = DashboardApp(run_dir)
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        await caught_up(app, pilot)
        footer = screen_text(app).splitlines()[-1]
        for hidden in ("Precision", "Lower LR", "Roll back", "Save", "Pause"):
            assert hidden not in footer, hidden
        await pilot.press("s")
        await pilot.pause()
        assert "the run has ended: there is no trainer to control" in screen_text(app)
        assert commands(run_dir) == []


@run_async
async def test_5_ctrl_c_opens_the_quit_dialog(live_run):
    app = DashboardApp(live_run)
    async with app.run_test(size=(120, 40)) as pilot:
        await caught_up(app, pilot)
        await pilot.press("ctrl+c")
        assert isinstance(app.screen, QuitDialog)
        await pilot.press("c")
        assert app.is_running and commands(live_run) == []


@run_async
async def test_6_no_second_restart_while_one_is_under_way(live_run):
    app = DashboardApp(live_run)
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        await caught_up(app, pilot)
        await pilot.press("p", "enter", "enter")
        assert [c["cmd"] for c in commands(live_run)] == ["restart"]
        await wait_for(pilot, lambda: app.view.header.state == "restarting", "the restarting state")
        for key in ("p", "l", "r"):
            await pilot.press(key)
            assert not isinstance(app.screen, PrecisionDialog), key
        await pilot.pause()
        assert "a restart is under way" in screen_text(app)
        app.dashboard.restart_with({"precision": "fp32"})  # what a dialog opened before would confirm now
        assert [c["cmd"] for c in commands(live_run)] == ["restart"]


@run_async
async def test_12_smaller_things(tmp_path):
    run_dir = recorded_run("restart_bf16", tmp_path)
    app = DashboardApp(run_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await caught_up(app, pilot)
        # the health panel after a restart: nothing of the abandoned branch
        health_steps = [e["step"] for e in map(json.loads, (run_dir / "events.jsonl").read_text().splitlines())
                        if e["type"] == "health"]
        assert app.view.health_step == health_steps[-1] >= 20
        await pilot.press("question_mark")
        shown = screen_text(app)
        assert len(re.findall(r" space +pause", shown)) == 1 and "/ resume training" in shown  # one row
        await pilot.press("escape")
        alert = overflow_alert(60)
        alert.update(severity="warning", evidence={"rows": [{"row": 6, "loss": None}], "scale": None})
        with app.model.lock:
            app.model.apply_events([alert])
        app.show_alert(alert)
        await pilot.pause()
        shown = screen_text(app)
        assert "None" not in shown and "{'" not in shown and "[{" not in shown
        assert "row 6, loss -" in shown
        assert "! WARNING" in shown  # the warning mark of the event list, not the critical ✗


@run_async
async def test_9_quitting_an_ended_run_says_where_everything_is(tmp_path, capsys):
    run_dir = recorded_run("healthy_fp16", tmp_path)
    app = DashboardApp(run_dir)
    async with app.run_test() as pilot:
        await caught_up(app, pilot)
        await pilot.press("q")
    assert report_exit(app, RunDir(run_dir), app.return_value) == 0
    err = capsys.readouterr().err
    last_loss = [e for e in map(json.loads, (run_dir / "events.jsonl").read_text().splitlines())
                 if e["type"] == "step"][-1]["loss"]
    assert f"loratui: run ended at step 60 (completed), loss {fmt.number(last_loss)}" in err
    assert f"newest checkpoint: {run_dir / 'checkpoints' / 'step-000060'} (step 60)" in err
    assert (f"resume:            loratui run {run_dir / 'config.toml'} --resume "
            f"--set run.output_dir={tmp_path} --set run.name={run_dir.name}") in err  # a copied run: where it is now
    assert f"look again:        loratui watch {run_dir}" in err


@run_async
async def test_9_the_failure_panel_gives_the_resume_command(tmp_path):
    run_dir = recorded_run("healthy_fp16", tmp_path, until_step=30)
    append_event(run_dir, {"type": "run_failed", "step": 30, "error": "RuntimeError: CUDA error: out of memory"})
    app = DashboardApp(run_dir)
    async with app.run_test(size=(160, 48)) as pilot:
        await caught_up(app, pilot)
        await wait_for(pilot, lambda: (app.view.failure or {}).get("resume"), "the resume command")
        await pilot.pause()
        assert f"Resume from it: loratui run {run_dir / 'config.toml'} --resume" in \
            screen_text(app).replace("\n", "")


@run_async
async def test_10_resume_says_resuming_from_step_n_at_once_and_what_changed(tmp_path):
    run_dir = recorded_run("healthy_fp16", tmp_path)  # a finished run, as `loratui run --resume` finds it
    app = DashboardApp(run_dir, resume=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await caught_up(app, pilot)
        header = app.view.header
        assert (header.state, header.state_detail) == ("starting", "resuming from step 60")
        assert "FINISHED" not in screen_text(app) and "resuming from step 60" in screen_text(app)
        old = next(e for e in map(json.loads, (run_dir / "events.jsonl").read_text().splitlines())
                   if e["type"] == "run_started")
        config = json.loads(json.dumps(old["config"]))
        config["train"]["max_steps"] = 100  # the current config's, taken by the resume
        append_event(run_dir, {**old, "time": time.time(), "step": 60, "max_steps": 100,
                               "resumed_from": str(run_dir / "checkpoints" / "step-000060"), "config": config})
        await wait_for(pilot, lambda: app.view.header.state == "running", "the resumed run's start")
        await pilot.pause()
        assert "changed since the resumed run: train.max_steps 60 → 100" in [e.text for e in app.view.entries]
        assert "changed since the resumed" in screen_text(app)
        assert app.view.header.max_steps == 100


def test_12_headless_lines_use_words_not_internal_names():
    from loratui.events.console import ConsoleSink

    sink = ConsoleSink(log_every=10, max_steps=60)
    assert sink.format({"type": "phase", "name": "loading_model", "done": 0, "total": 2}) == "loading model..."
    alert = {"type": "alert", "severity": "critical", "kind": "divergence", "step": 9, "message": "m",
             "suggestion": "lower_lr"}
    assert sink.format(alert).endswith("(suggested fix: lower the learning rate)")
    started = {"type": "run_started", "step": 40, "precision": "bf16", "device": "cpu", "world_size": 1,
               "trainable_params": 10, "resumed_from": "runs/x/checkpoints/step-000040"}
    assert sink.format(started).startswith("run resumed from step 40 (runs/x/checkpoints/step-000040): bf16") \
        or sink.format(started).startswith("run resumed from step 40 (runs/x/checkpoints/step-000040): precision")


@run_async
async def test_11_lower_lr_refuses_a_factor_that_does_not_lower_it(live_run):
    app = DashboardApp(live_run)
    async with app.run_test(size=(120, 40)) as pilot:
        await caught_up(app, pilot)
        await pilot.press("l")
        dialog = app.screen
        await pilot.press("end", "backspace", "backspace", "backspace", "2")
        assert dialog.query_one("#factor").value == "2"
        assert "factor 2 would not lower the rate: enter a factor below 1" in screen_text(app)
        assert dialog.query_one("#confirm").disabled
        await pilot.press("enter")
        assert app.screen is dialog and commands(live_run) == []
        await pilot.press("backspace", *"0.1")
        assert "would not lower" not in screen_text(app)
        await pilot.press("enter")
        assert commands(live_run)[-1]["learning_rate"] == pytest.approx(2e-4)


@run_async
async def test_toasts_stay_off_the_events_list(live_run):
    app = DashboardApp(live_run)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await caught_up(app, pilot)
        await pilot.press("s")
        await pilot.pause(0.2)
        toasts = list(app.screen.query("Toast"))
        assert toasts, "the save's toast"
        events = app.query_one(EventList).region
        assert all(not toast.region.overlaps(events) for toast in toasts)


def steps_of(run_dir) -> list[dict]:
    return [e for e in map(json.loads, (run_dir / "events.jsonl").read_text().splitlines()) if e["type"] == "step"]


@run_async
async def test_8_tokens_per_second_and_eta_are_steady_figures(tmp_path):
    live = recorded_run("healthy_fp16", tmp_path / "live", until_step=45)
    steps = steps_of(live)
    rates = [s["tokens_per_s"] for s in steps if s.get("tokens_per_s")]
    assert len(set(rates[-16:])) > 1  # the raw figure does jump in this recording
    app = DashboardApp(live)
    async with app.run_test(size=(120, 40)) as pilot:
        await caught_up(app, pilot)
        header = app.view.header
        assert header.tokens_per_s == pytest.approx(statistics.median(rates[-16:]))
        assert f"{fmt.rate(statistics.median(rates[-16:]))} tok/s" in screen_text(app)
        paces = [(b["time"] - a["time"]) / (b["step"] - a["step"]) for a, b in zip(steps, steps[1:])][-63:]
        assert header.eta_s == pytest.approx((60 - 45) * statistics.median(paces))

    finished = recorded_run("healthy_fp16", tmp_path / "finished")
    all_rates = [s["tokens_per_s"] for s in steps_of(finished) if s.get("tokens_per_s")]
    app = DashboardApp(finished)
    async with app.run_test(size=(120, 40)) as pilot:
        await caught_up(app, pilot)
        assert app.view.header.tokens_per_s == pytest.approx(statistics.median(all_rates))
        assert all_rates[-1] != pytest.approx(statistics.median(all_rates))  # not the last step's rate


@run_async
async def test_7_fp16_without_loss_scaling_shows_no_scale_chart(tmp_path):
    run_dir = recorded_run("healthy_fp16", tmp_path, until_step=45)
    lines = []
    for event in map(json.loads, (run_dir / "events.jsonl").read_text().splitlines()):
        if event["type"] == "step":
            event["scale"] = None  # as amp.loss_scaling = false writes it
        lines.append(json.dumps(event))
    (run_dir / "events.jsonl").write_text("\n".join(lines) + "\n")
    app = DashboardApp(run_dir)
    async with app.run_test(size=(160, 48)) as pilot:
        await caught_up(app, pilot)
        assert app.view.charts.fp16_seen and not app.query_one("#chart-scale").display
        assert "scale" not in screen_text(app).split("Health")[0]  # no chart titled scale: all nan/inf


@run_async
async def test_11_the_rollback_dialog_says_what_a_checkpoint_was_saved_in_and_what_the_restart_uses(tmp_path):
    run_dir = recorded_run("restart_bf16", tmp_path, until_step=45)  # switched fp16 -> bf16 from step 20
    start = run_dir / "checkpoints" / "step-000000"
    shutil.copytree(run_dir / "checkpoints" / "step-000020", start)
    state = json.loads((start / "trainer_state.json").read_text())
    (start / "trainer_state.json").write_text(json.dumps({**state, "step": 0}))
    app = DashboardApp(run_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await caught_up(app, pilot)
        assert app.view.header.precision == "bf16"
        await pilot.press("r")
        choices = app.screen.query_one("#choices")
        assert "saved in" in screen_text(app)
        assert "start" in str(choices.get_option("0").prompt)  # the untrained adapter: no precision of its own
        assert " fp16 " in str(choices.get_option("20").prompt)  # trained in fp16 before the switch
        await pilot.press("down", "enter")
        assert "Restart from step 20 in bf16" in screen_text(app)  # the run's precision, not the checkpoint's


def test_12_the_config_says_median_where_the_divergence_detector_uses_one():
    from pathlib import Path

    example = (Path(__file__).resolve().parent.parent / "config.example.toml").read_text()
    comments = [line for line in example.splitlines() if line.startswith("# Divergence:")]
    assert comments and not any(" mean" in line for line in comments)
    assert any("median loss" in line for line in comments)
