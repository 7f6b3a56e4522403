"""A crash inside the training step: run_failed with the traceback, the last checkpoint intact, exit 1.

The failure is injected with the test-only hook LORATUI_TEST_FAIL_AT_STEP (read
when loratui.faults is imported, so the module is reloaded around the
test), and the run goes through the real command line. The checkpoint the
crash left behind is then resumed, which is what "intact" has to mean.
"""

from __future__ import annotations

import importlib

import pytest

from helpers import steps_of, train_in_process
from loratui import cli
from loratui.config import load_config
from loratui.events.jsonl import read_events
from loratui import faults
from test_reliability_support import (
    complete_steps,
    partial_dirs,
    single_cpu_thread,  # noqa: F401 (an autouse fixture)
    write_run_config,
)


@pytest.fixture
def fail_at_step_5(monkeypatch):
    monkeypatch.setenv("LORATUI_TEST_FAIL_AT_STEP", "5")
    importlib.reload(faults)
    yield
    monkeypatch.delenv("LORATUI_TEST_FAIL_AT_STEP", raising=False)
    importlib.reload(faults)


def test_a_crash_in_the_training_step_fails_the_run_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch,
                                                                                  fail_at_step_5):
    config = write_run_config(tmp_path, max_steps=8, every_steps=2, keep=5)
    code = cli.main(["run", str(config), "--headless"])
    output = "".join(capsys.readouterr())
    assert code == 1, output
    run_dir = tmp_path / "runs" / "loratui-run"
    events = read_events(run_dir / "events.jsonl")
    failed = events[-1]
    assert failed["type"] == "run_failed" and failed["step"] == 4
    assert failed["error"].startswith("InjectedFault: injected failure in training step 5")
    assert failed["traceback"].startswith("Traceback (most recent call last)")
    assert "maybe_fail" in failed["traceback"] and "InjectedFault" in failed["traceback"].splitlines()[-1]
    assert "run failed at step 4: InjectedFault" in output
    assert not (run_dir / "adapter").exists(), "a failed run writes no final adapter"
    assert complete_steps(run_dir / "checkpoints") == [4, 2, 0] and not partial_dirs(run_dir / "checkpoints")

    # Intact means resumable: with the fault gone, --resume continues from step 4 to the end.
    monkeypatch.delenv("LORATUI_TEST_FAIL_AT_STEP")
    importlib.reload(faults)
    code, events, _ = train_in_process(load_config(config), resume=True)
    assert code == 0
    started = [e for e in events if e["type"] == "run_started"][-1]
    assert started["resumed_from"].endswith("step-000004")
    assert [e["step"] for e in steps_of(events, started["attempt"])] == [5, 6, 7, 8]
