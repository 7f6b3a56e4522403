"""Issue 16's defects that reach the trainer: loss scaling as a fix key (11) and what a resume changed (10).

The dashboard half with Textual's pilot on a recorded fp16 run rewritten as
amp.loss_scaling = false would log it; the trainer half with the real trainer
on CPU (a restart command with loss_scaling, as the key writes it; a resume
with another max_steps).
"""

from __future__ import annotations

import json
import time

import pytest
from helpers import StepHook, command_at, steps_of, train_in_process
from test_reliability_support import write_run_config
from test_ui_support import append_event, caught_up, commands, recorded_run, run_async, screen_text, wait_for

from loratui.config import load_config
from loratui.control import Rejected, parse_command
from loratui.ui.app import DashboardApp
from loratui.ui.screens.alert_details import AlertDetails


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


def without_loss_scaling(run_dir) -> None:
    lines = []
    for event in map(json.loads, (run_dir / "events.jsonl").read_text().splitlines()):
        if event["type"] == "step":
            event["scale"] = None
        if event["type"] == "run_started":
            event["loss_scaling"] = False
            event["config"]["amp"]["loss_scaling"] = False
        lines.append(json.dumps(event))
    (run_dir / "events.jsonl").write_text("\n".join(lines) + "\n")


UNDERFLOW = {"type": "alert", "step": 45, "kind": "underflow", "severity": "warning",
             "message": "fp16 gradients underflow: 30% of LoRA gradient values are zero or subnormal in fp16",
             "suggestion": "switch_precision", "fix": {"precision": "bf16"},
             "explanation": "Dynamic loss scaling (amp.loss_scaling = true) lifts gradients into fp16's range.",
             "evidence": {"underflow_share": 0.3, "loss_scale": None}}


@run_async
async def test_a_turns_loss_scaling_on_from_the_underflow_alert(tmp_path):
    run_dir = recorded_run("healthy_fp16", tmp_path, until_step=45)
    without_loss_scaling(run_dir)
    app = DashboardApp(run_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await caught_up(app, pilot)
        assert "a Loss scaling on" in screen_text(app).splitlines()[-1]  # the footer offers it
        append_event(run_dir, UNDERFLOW)
        await wait_for(pilot, lambda: app.view.active_alerts, "the alert")
        await pilot.press("enter")
        assert isinstance(app.screen, AlertDetails)
        assert "turn it on (amp.loss_scaling = true) · press a" in screen_text(app)
        await pilot.press("a")
        restart = commands(run_dir)[-1]
        assert (restart["cmd"], restart["loss_scaling"]) == ("restart", True)
        await wait_for(pilot, lambda: app.view.header.state == "restarting", "the restarting state")


@run_async
async def test_a_is_hidden_where_there_is_a_scaler(tmp_path):
    run_dir = recorded_run("healthy_fp16", tmp_path, until_step=45)  # fp16 with its GradScaler
    app = DashboardApp(run_dir)
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        await caught_up(app, pilot)
        assert "Loss scaling on" not in screen_text(app).splitlines()[-1]
        await pilot.press("a")
        await pilot.pause()
        assert "loss scaling is already on" in screen_text(app) and commands(run_dir) == []


def test_the_restart_command_takes_a_boolean_loss_scaling():
    assert parse_command('{"cmd": "restart", "loss_scaling": true}').args == {"loss_scaling": True}
    refused = parse_command('{"cmd": "restart", "loss_scaling": "yes"}')
    assert isinstance(refused, Rejected) and "loss_scaling must be true or false" in refused.reason


def test_the_trainer_restarts_with_a_scaler_when_asked(tmp_path):
    write_run_config(tmp_path, max_steps=8, every_steps=2)
    config = load_config(tmp_path / "config.toml", ['train.precision="fp16"', "amp.loss_scaling=false"])
    hook = StepHook({(0, 3): command_at("restart", loss_scaling=True), (1, 5): command_at("stop")})
    code, events, _ = train_in_process(config, monitor=hook)
    assert code == 0
    assert all(e["scale"] is None for e in steps_of(events, 0))
    restart = next(e for e in events if e["type"] == "restart")
    assert restart["loss_scaling"] is True and restart["precision"] == "fp16"
    after = steps_of(events, 1)
    assert after and all(isinstance(e["scale"], (int, float)) for e in after)  # a GradScaler's scale now


def test_a_resume_says_when_it_takes_max_steps_from_the_current_config(tmp_path, capsys):
    """Issue 16 defect 10, the trainer's half: the headless log names the step and what changed."""
    from loratui.events.console import ConsoleSink

    write_run_config(tmp_path, max_steps=4, every_steps=2)
    code, _, _ = train_in_process(load_config(tmp_path / "config.toml"))
    assert code == 0
    code, events, _ = train_in_process(load_config(tmp_path / "config.toml", ["train.max_steps=6"]), resume=True)
    assert code == 0
    notices = [e["message"] for e in events if e["type"] == "notice"]
    assert "train.max_steps is 6 for this resume (it was 4): the run trains to step 6" in notices
    started = [e for e in events if e["type"] == "run_started"][-1]
    line = ConsoleSink(log_every=1, max_steps=6).format(started)
    assert line.startswith(f"run resumed from step 4 ({started['resumed_from']})")
