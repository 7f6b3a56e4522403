"""The dashboard supervising the real trainer (tiny model, CPU) when the trainer ends badly.

Driven with Textual's pilot, with the dashboard's real supervisor: the trainer
is `python -m loratui.entry` in its own session, as `loratui run` starts
it. Each test ends the trainer one way: killed outright by SIGKILL (as the
out-of-memory killer does), crashed by an exception inside a training step
(the test-only fault injection of loratui/faults.py), or stopped by a
SIGTERM sent to it rather than to the dashboard (a run in fp32 throughout, which
also shows no loss-scale chart).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from test_ui_support import run_async, screen_text, wait_for

from loratui.config import load_config, render_toml
from loratui.events.jsonl import read_events
from loratui.launcher import trainer_command
from loratui.run_dir import RunDir, prepare_run_dir
from loratui.ui.app import DashboardApp
from loratui.ui.launch import report_exit
from loratui.ui.screens.help_screen import HelpScreen
from loratui.ui.screens.precision_dialog import PrecisionDialog
from loratui.ui.supervisor import TrainerProcess

CONFIG = Path(__file__).resolve().parent.parent / "config.example.toml"
PATIENCE_S = 240  # torch's import and the model's build on a busy 2-core machine; never a timing assertion


@pytest.fixture
def real_run(tmp_path, monkeypatch):
    """make(name, *overrides) -> (app, run_dir): the dashboard about to start the real trainer on a fast config."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the trainer inherits it: one thread on a shared machine
    trainers: list[TrainerProcess] = []

    def make(name: str, *overrides: str) -> tuple[DashboardApp, RunDir]:
        config = load_config(CONFIG, [f"run.output_dir={tmp_path / 'runs'}", f"run.name={name}",
                                      "train.precision=fp32", "train.batch_size=4", "train.warmup_steps=0",
                                      "train.max_steps=2000", "checkpoint.every_steps=1000", *overrides])
        run_dir = prepare_run_dir(config, resume=False, config_text=render_toml(config))
        trainers.append(TrainerProcess(trainer_command(config, run_dir, resume=False), run_dir.trainer_log,
                                       cwd=tmp_path))
        return DashboardApp(run_dir.root, trainer=trainers[-1]), run_dir

    yield make
    for trainer in trainers:  # whatever the test asserted, no trainer outlives it
        if trainer.process is not None and trainer.process.poll() is None:
            trainer.process.kill()
            trainer.process.wait()


async def wait_for_steps(app, pilot, steps: int = 2) -> None:
    await wait_for(pilot, lambda: app.model.step >= steps, f"the trainer's step {steps}", timeout=PATIENCE_S)


async def wait_for_state(app, pilot, state: str) -> None:
    await wait_for(pilot, lambda: app.view is not None and app.view.header.state == state, f"the {state} state",
                   timeout=PATIENCE_S)


@run_async
async def test_a_trainer_killed_by_sigkill_is_a_failed_run_named_by_its_signal(real_run, capsys):
    app, run_dir = real_run("killed")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for_steps(app, pilot)
        os.kill(app.trainer.pid, signal.SIGKILL)
        await wait_for_state(app, pilot, "failed")
        # The header's state and the failure panel come from different redraws (the panel
        # mounts with a layout pass): wait for the panel rather than race the redraw timer.
        panel = ("Training failed · the trainer killed by SIGKILL", "out-of-memory killer",
                 "Press q to quit (exit code 1)")
        await wait_for(pilot, lambda: all(text in screen_text(app) for text in panel), "the failure panel",
                       timeout=PATIENCE_S)
        await pilot.press("q")  # the trainer has ended: quit at once
    assert app.return_value == 1
    assert report_exit(app, run_dir, app.return_value) == 1
    assert "loratui: training failed (the trainer killed by SIGKILL)" in capsys.readouterr().err


@run_async
async def test_a_crash_inside_a_training_step_shows_the_error_and_the_log(real_run, monkeypatch, capsys):
    monkeypatch.setenv("LORATUI_TEST_FAIL_AT_STEP", "3")  # the trainer raises InjectedFault in step 3
    app, run_dir = real_run("crash")
    async with app.run_test(size=(140, 48)) as pilot:
        await wait_for_state(app, pilot, "failed")
        await wait_for(pilot, lambda: app.model.exit_code is not None, "the trainer's exit", timeout=PATIENCE_S)
        await pilot.pause()
        failed = [e for e in read_events(run_dir.events) if e["type"] == "run_failed"]
        assert len(failed) == 1 and "in maybe_fail" in failed[0]["traceback"]
        shown = screen_text(app)
        assert "InjectedFault: injected failure in training step 3" in shown  # the error, from run_failed
        assert "in maybe_fail" in shown  # the traceback's last lines
        assert f"last lines of {run_dir.trainer_log}" in shown.replace("\n", "")
        assert "Press q to quit (exit code 1)" in shown

        await pilot.press("p")  # nothing left to control: no dialog, no command
        assert not isinstance(app.screen, PrecisionDialog)
        await pilot.press("question_mark")  # still usable
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape", "q")
    assert app.return_value == 1
    assert (run_dir.control.read_text() if run_dir.control.exists() else "") == ""
    report_exit(app, run_dir, app.return_value)
    err = capsys.readouterr().err
    assert "training failed (the trainer exited with code 1): InjectedFault" in err and str(run_dir.trainer_log) in err


@run_async
async def test_sigterm_to_the_trainer_stops_it_with_a_checkpoint_and_its_code(real_run):
    from loratui import checkpoint_files as ckpt

    app, run_dir = real_run("trainer-sigterm")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for_steps(app, pilot)
        await wait_for(pilot, lambda: app.query_one("#chart-loss").data is not None, "the charts' first picture")
        await pilot.pause()
        # fp32 from the start: no loss scale to chart (an fp16 run shows one: test_ui_keys)
        assert not app.view.charts.fp16_seen and not app.query_one("#chart-scale").display
        assert "loss" in screen_text(app) and "scale (log2)" not in screen_text(app)
        os.kill(app.trainer.pid, signal.SIGTERM)
        await wait_for(pilot, lambda: app.model.exit_code is not None, "the trainer's exit", timeout=PATIENCE_S)
        await pilot.pause()
        assert app.view.header.state == "finished"
        assert app.view.header.state_detail == "stopped by SIGTERM, exit 143"
        assert "FINISHED" in screen_text(app) and "stopped by SIGTERM, exit 143" in screen_text(app)
        assert app.is_running  # the dashboard did not ask for the stop: it stays to show it
        await pilot.press("q")
    assert app.return_value == 143
    finished = read_events(run_dir.events)[-1]
    assert (finished["type"], finished["reason"]) == ("run_finished", "stopped by SIGTERM")
    assert ckpt.list_complete(run_dir.checkpoints)[0].step == finished["step"]  # verified: --resume starts there
