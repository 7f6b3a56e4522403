"""The dashboard as the trainer's supervisor: a child process in its own session, its output in trainer.log.

A stand-in trainer (a few lines of Python) keeps these tests fast; the real
trainer is supervised in test_ui_real_trainer.py and the tmux end-to-end tests.
"""

from __future__ import annotations

import os
import signal
import sys

import pytest
from test_ui_support import caught_up, recorded_run, run_async, screen_text, wait_for

from textual.worker import WorkerState

from loratui.run_dir import RunDir
from loratui.ui.app import DashboardApp
from loratui.ui.launch import report_exit
from loratui.ui.supervisor import TrainerProcess

CRASHING_TRAINER = """
import os, sys
print("loading the model")
print("Traceback (most recent call last):\\nRuntimeError: CUDA error: an illegal memory access", flush=True)
print("session", os.getsid(0), flush=True)
sys.exit(1)
"""


@run_async
async def test_a_crashing_trainer_shows_its_log_and_quitting_returns_1(tmp_path):
    run_dir = recorded_run("healthy_fp16", tmp_path, until_step=5)
    trainer = TrainerProcess([sys.executable, "-c", CRASHING_TRAINER], run_dir / "trainer.log")
    app = DashboardApp(run_dir, trainer=trainer)
    async with app.run_test(size=(120, 40)) as pilot:
        await caught_up(app, pilot)
        await wait_for(pilot, lambda: app.view.header.state == "failed", "the failed state", timeout=30)
        shown = screen_text(app)
        assert "exit code 1" in shown and "illegal memory access" in shown and "trainer.log" in shown
        await pilot.press("p")  # nothing left to control; the app stays up
        assert app.is_running
        await pilot.press("q")
    assert app.return_value == 1
    log = (run_dir / "trainer.log").read_text()
    assert int(log.split("session ")[1].split()[0]) != os.getsid(0)  # its own session: no terminal signals


@pytest.mark.parametrize("waiting", ["pidfd", "polling"])
@run_async
async def test_a_trainer_that_finishes_leaves_its_exit_code(tmp_path, monkeypatch, waiting):
    """Its exit is seen through a pidfd in the event loop (no thread polls it), or by a polling worker where
    the system has no pidfd."""
    if waiting == "pidfd" and not hasattr(os, "pidfd_open"):
        pytest.skip("no pidfd on this system")
    if waiting == "polling":
        monkeypatch.setattr(TrainerProcess, "exit_fd", lambda self: None)
    run_dir = recorded_run("healthy_fp16", tmp_path)
    trainer = TrainerProcess([sys.executable, "-c", "import time; time.sleep(1.5); print('done')"],
                             run_dir / "trainer.log")
    app = DashboardApp(run_dir, trainer=trainer)
    async with app.run_test() as pilot:
        await caught_up(app, pilot)
        await wait_for(pilot, lambda: trainer.pid is not None, "the trainer's start")
        def polling() -> bool:
            return any(w.name == "trainer" and w.state == WorkerState.RUNNING for w in app.workers)
        if waiting == "pidfd":
            await wait_for(pilot, lambda: not polling(), "the supervisor to hand the wait to the event loop")
        assert trainer.exit_code is None and polling() == (waiting == "polling")
        await wait_for(pilot, lambda: app.model.exit_code == 0, "the trainer's exit")
        assert app.view.header.state == "finished"
        await pilot.press("q")
    assert app.return_value == 0


@run_async
async def test_a_trainer_that_cannot_start_is_a_failed_run(tmp_path):
    run_dir = recorded_run("healthy_fp16", tmp_path, until_step=0)
    trainer = TrainerProcess([str(tmp_path / "no-such-program")], run_dir / "trainer.log")
    app = DashboardApp(run_dir, trainer=trainer)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.view is not None and app.view.header.state == "failed", "the failed state")
        assert "could not start the trainer" in screen_text(app)
        await pilot.press("q")
    assert app.return_value == 1


@run_async
async def test_a_stop_signal_before_the_trainer_can_catch_it_is_still_a_stop(tmp_path):
    """SIGTERM to the dashboard is passed on; a trainer still importing torch dies of it: a stop, exit 143."""
    run_dir = recorded_run("healthy_fp16", tmp_path, until_step=5)
    trainer = TrainerProcess([sys.executable, "-c", "import time; time.sleep(120)"], run_dir / "trainer.log")
    app = DashboardApp(run_dir, trainer=trainer)
    async with app.run_test() as pilot:
        await caught_up(app, pilot)
        await wait_for(pilot, lambda: trainer.pid is not None, "the trainer's start")
        app.stop_for_signal(signal.SIGTERM)
        assert app.view.header.state == "stopping"
        await wait_for(pilot, lambda: not app.is_running, "the dashboard to exit with the trainer")
    assert trainer.exit_code == -signal.SIGTERM
    assert app.model.state_detail == "stopped by SIGTERM, exit 143" and app.return_value == 143


@run_async
async def test_a_signal_to_watch_detaches_and_leaves_the_run_alone(tmp_path, capsys):
    run_dir = recorded_run("healthy_fp16", tmp_path, until_step=45)
    app = DashboardApp(run_dir)
    async with app.run_test() as pilot:
        await caught_up(app, pilot)
        app.stop_for_signal(signal.SIGINT)
    assert app.detached and app.return_value == 130
    assert (run_dir / "control.jsonl").read_text() == ""
    assert report_exit(app, RunDir(run_dir), app.return_value) == 130
    assert f"detached; training goes on. Re-attach with: loratui watch {run_dir}" in capsys.readouterr().err
