"""SIGINT, SIGTERM and SIGHUP on a real headless run: exit code, a resumable checkpoint, no hang.

Each signal lands at a random step (the seed is printed). The run must finish
the step, save a checkpoint at the step it stopped at, write run_finished with
the reason and exit 128 + N within 60 s; then `--resume` continues from that
checkpoint. A second SIGINT during the (slowed) save exits at once and leaves
the newest complete checkpoint as it was.
"""

from __future__ import annotations

import os
import shutil
import signal

import pytest

from helpers import steps_of, train_in_process
from loratui.config import load_config
from loratui.train import checkpoint as ckpt
from test_reliability_support import (
    HeadlessRun,
    complete_steps,
    partial_dirs,
    seeded_random,
    single_cpu_thread,  # noqa: F401 (an autouse fixture)
    torture_count,
    write_run_config,
)

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}
HANG_LIMIT_S = 60  # the bound: no process may still be alive this long after the signal


def resume_in_process(config_path, until_step: int):
    """`--resume` through the real trainer in this process, for a few steps past the stop."""
    config = load_config(config_path, [f"train.max_steps={until_step}"])
    return train_in_process(config, resume=True)


def assert_stopped_cleanly(run: HeadlessRun, signum: int, code: int) -> int:
    """The signal's exit code, its checkpoint and run_finished; returns the step it stopped at."""
    name = signal.Signals(signum).name
    assert code == EXIT_CODES[signum], run.output()[-2000:]
    events = run.all_events()
    finished = [e for e in events if e["type"] == "run_finished"]
    assert finished and finished[-1]["reason"] == f"stopped by {name}", events[-3:]
    stopped_at = finished[-1]["step"]
    assert complete_steps(run.checkpoints)[0] == stopped_at
    assert not partial_dirs(run.checkpoints)
    return stopped_at


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_signal_at_random_steps_exits_with_its_code_and_a_resumable_checkpoint(tmp_path, signum):
    rng = seeded_random(f"{signum.name} at random steps")
    config = write_run_config(tmp_path)
    stopped_at = 0
    for round_number in range(torture_count(1, 3)):
        run = HeadlessRun(config, resume=round_number > 0)
        try:
            run.wait_for_step(stopped_at + rng.randint(1, 10))
            run.send(signum)
            code = run.finish(timeout=HANG_LIMIT_S)
        finally:
            run.kill()
        previous, stopped_at = stopped_at, assert_stopped_cleanly(run, signum, code)
        if round_number:
            started = next(e for e in run.seen if e["type"] == "run_started")
            assert started["resumed_from"].endswith(ckpt.checkpoint_name(previous))

    code, events, _ = resume_in_process(config, until_step=stopped_at + 2)
    assert code == 0
    started = [e for e in events if e["type"] == "run_started"][-1]
    assert started["resumed_from"].endswith(ckpt.checkpoint_name(stopped_at))
    assert [e["step"] for e in steps_of(events, started["attempt"])] == [stopped_at + 1, stopped_at + 2]


def test_second_sigint_exits_at_once_and_leaves_the_newest_checkpoint_intact(tmp_path):
    # Slow every file of a checkpoint save, so the second SIGINT lands inside the first one's save.
    config = write_run_config(tmp_path, every_steps=1000)
    run = HeadlessRun(config, env={"LORATUI_TEST_SLOW_CHECKPOINT": "0.4"})
    try:
        run.wait_for_step(2)
        before = {p.name: sorted(f.name for f in p.iterdir()) for p in run.checkpoints.glob("step-*")}
        run.send(signal.SIGINT)
        run.wait_for(lambda: any(any(p.iterdir()) for p in partial_dirs(run.checkpoints)),
                     "the signal's checkpoint save")
        run.send(signal.SIGINT)
        code = run.finish(timeout=HANG_LIMIT_S)
    finally:
        run.kill()
    assert code == 130
    events = run.all_events()
    # "At once": the save it interrupted never completed, and nothing ran after it.
    assert not [e for e in events if e["type"] in ("run_finished", "run_failed")]
    assert not [e for e in events if e["type"] == "checkpoint" and e["reason"] == "signal"]
    assert "second interrupt" in run.output()
    assert complete_steps(run.checkpoints) == [0]
    assert {p.name: sorted(f.name for f in p.iterdir()) for p in run.checkpoints.glob("step-*")} == before
    assert partial_dirs(run.checkpoints), "the interrupted save should have been left half-written"

    code, events, _ = resume_in_process(config, until_step=3)
    assert code == 0
    started = [e for e in events if e["type"] == "run_started"][-1]
    assert started["resumed_from"].endswith(ckpt.checkpoint_name(0))
    assert not partial_dirs(run.checkpoints), "the half-written save is cleaned up on resume"


TWO_PROCESS = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no"]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM], ids=lambda s: s.name)
def test_signal_on_a_two_process_run(tmp_path, signum):
    """A scheduler or Ctrl-C signals every process of the job: both ranks stop at the same step."""
    accelerate = shutil.which("accelerate")
    assert accelerate, "accelerate's launcher is part of the dev environment"
    rng = seeded_random(f"{signum.name} on two processes")
    config = write_run_config(tmp_path)
    command = [accelerate, "launch", *TWO_PROCESS, "-m", "loratui", "run", str(config), "--headless"]
    run = HeadlessRun(config, args=command)
    try:
        run.wait_for_step(rng.randint(2, 8))
        started = next(e for e in run.seen if e["type"] == "run_started")
        assert started["world_size"] == 2
        os.killpg(run.pid, signum)  # the whole job, as a terminal or a batch scheduler does
        code = run.finish(timeout=HANG_LIMIT_S)
    finally:
        run.kill()
    assert code != 0, run.output()[-2000:]
    finished = [e for e in run.all_events() if e["type"] == "run_finished"]
    assert finished and finished[-1]["reason"] == f"stopped by {signum.name}", run.output()[-2000:]
    stopped_at = finished[-1]["step"]
    assert complete_steps(run.checkpoints)[0] == stopped_at
    newest = run.checkpoints / ckpt.checkpoint_name(stopped_at)
    assert sorted(p.name for p in newest.glob("rng-rank*.pt")) == ["rng-rank0.pt", "rng-rank1.pt"]
