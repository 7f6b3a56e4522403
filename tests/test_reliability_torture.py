"""SIGKILL torture: kill the real headless trainer at random moments and resume it each time.

Kill moments, drawn from a printed seed, are of three kinds: during start-up
(imports, model loading, tokenizing), at a random point of a random training
step, and around a checkpoint save (slowed with LORATUI_TEST_SLOW_CHECKPOINT so
the kill can land anywhere in it: while checksumming, after the rename, during
retention). One kill always lands inside a save, before its rename: it waits for
the save to begin and kills at once, the save slowed enough to be still running,
and the test checks that it was cut there. After each kill the run is resumed
with --resume. The promises: every resume starts from the newest checkpoint that
verifies, never a partial one; every step's loss, in every attempt, equals an
uninterrupted fp32 run's within 1e-6; the final adapter does too. The default
suite kills 4 times; `make torture` 20 times.
"""

from __future__ import annotations

import signal
import time
from collections import Counter

import pytest
from safetensors.torch import load_file

from helpers import train_in_process
from loratui.config import load_config
from loratui.events.jsonl import EventTailer
from loratui.run_dir import RunDir
from loratui import checkpoint_files as ckpt
from test_reliability_support import (
    HeadlessRun,
    complete_steps,
    identity,
    partial_dirs,
    saves_in_progress,
    seeded_random,
    single_cpu_thread,  # noqa: F401 (an autouse fixture)
    torture_count,
    write_run_config,
)

TOLERANCE = 1e-6
EVERY_STEPS = 3


def kill_plan(rng, kills: int) -> list[str]:
    """Kinds of kill moment, in a random order: one of each, then random ones.

    "inside_save" kills as soon as a (much slowed) commit has begun, so at least one
    kill surely lands inside a save; a "save" kill lands at a random moment around one.
    """
    plan = ["step", "inside_save", "startup"][:kills] + [rng.choice(["startup", "step", "save"])
                                                        for _ in range(kills - 3)]
    rng.shuffle(plan)
    return plan


def slowed_saves(kind: str) -> dict:
    """The test-only hook's delay per checkpoint file: about 0.6 s per save, or 1.8 s to kill inside one."""
    seconds = {"save": "0.1", "inside_save": "0.3"}.get(kind)
    return {"LORATUI_TEST_SLOW_CHECKPOINT": seconds} if seconds else {}


def kill_at_a_random_moment(run: HeadlessRun, kind: str, rng, resumed_at: int, max_steps: int,
                            left_before: set) -> str:
    """Wait for a moment of the given kind, SIGKILL the run there; returns where it landed.

    left_before: identities of the half-written saves an earlier kill left (not this run's).
    """
    if kind == "startup":
        deadline = time.monotonic() + rng.uniform(0.2, 6.0)
        while time.monotonic() < deadline and not any(e["type"] == "run_started" for e in run.new_events()):
            time.sleep(0.01)
    elif kind == "step":
        run.wait_for_step(min(resumed_at + rng.randint(1, 2 * EVERY_STEPS), max_steps - 1))
        time.sleep(rng.uniform(0, 0.1))  # anywhere within the next step or the save after it
    else:
        def saving() -> bool:
            # After this run's first step: by then it has removed what an earlier kill left half-written.
            run.new_events()
            return any(e["type"] == "step" for e in run.seen) and \
                any(step > resumed_at for step in saves_in_progress(run.checkpoints))

        run.wait_for(saving, "a checkpoint save", poll_s=0.002)
        if kind == "save":
            time.sleep(rng.uniform(0, 1.0))  # the slowed commit takes about 0.6 s, then rename and retention
    run.new_events()
    steps = [e["step"] for e in run.seen if e["type"] == "step"]
    run.kill()
    assert run.process.returncode == -signal.SIGKILL, f"the run had already ended: {run.output()[-2000:]}"
    # Read after the kill, when nothing moves: a save still hidden was cut before its rename.
    cut = [p.name.removeprefix(ckpt.PARTIAL_PREFIX) for p in partial_dirs(run.checkpoints)
           if identity(p) not in left_before]
    return f"{kind}: " + (f"after step {steps[-1]}" if steps else "before the first step") \
        + (f", inside the save of {', '.join(cut)}" if cut else "")


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing(tmp_path):
    rng = seeded_random("SIGKILL torture")
    kills = torture_count(4, 20)
    max_steps = 6 * kills + 10
    config_path = write_run_config(tmp_path, max_steps=max_steps, every_steps=EVERY_STEPS, keep=2,
                                   lr_scheduler="cosine")
    code, baseline_events, baseline_dir = train_in_process(load_config(config_path, ['run.name="baseline"']))
    assert code == 0
    baseline = {e["step"]: e["loss"] for e in baseline_events if e["type"] == "step"}

    checkpoints = tmp_path / "runs" / "loratui-run" / "checkpoints"
    landings = []
    for number, kind in enumerate(kill_plan(rng, kills)):
        # None until the first checkpoint: a run killed before it resumes from step 0.
        newest = next(iter(complete_steps(checkpoints)), None)
        left_before = {identity(p) for p in partial_dirs(checkpoints)}
        # A kill during the imports leaves no run directory: there is nothing to resume, and
        # --resume would rightly refuse, so that run starts afresh as a user would start it.
        resume = RunDir(checkpoints.parent).exists()
        run = HeadlessRun(config_path, resume=resume, env=slowed_saves(kind))
        try:
            landings.append(kill_at_a_random_moment(run, kind, rng, newest or 0, max_steps, left_before))
        finally:
            run.kill()
        if kind == "inside_save":
            assert "inside the save of" in landings[-1], landings
        started = [e for e in run.seen if e["type"] == "run_started"]
        if resume and started:
            expected = str(checkpoints / ckpt.checkpoint_name(newest)) if newest is not None else None
            assert started[0]["resumed_from"] == expected, landings
        if newest is not None:
            assert complete_steps(checkpoints), f"no complete checkpoint left after kill {number + 1}: {landings}"
    print(f"{kills} kills survived:", Counter(landing.split(":")[0] for landing in landings))
    print("\n".join(landings))

    newest = next(iter(complete_steps(checkpoints)), None)
    code, events, run_dir = train_in_process(load_config(config_path), resume=True)
    assert code == 0
    started = [e for e in events if e["type"] == "run_started"][-1]
    assert started["resumed_from"] == (str(checkpoints / ckpt.checkpoint_name(newest)) if newest is not None else None)

    # Every step any attempt published, the replayed ones included, is the uninterrupted run's step.
    tailer = EventTailer(run_dir.events)
    every_event = tailer.read_new()
    every_step = [e for e in every_event if e["type"] == "step"]
    attempts = [e["attempt"] for e in every_event if e["type"] == "run_started"]
    assert attempts == sorted(set(attempts)), f"each process must run as a new attempt: {attempts}"
    assert {e["step"] for e in every_step} == set(range(1, max_steps + 1))
    for event in every_step:
        assert abs(event["loss"] - baseline[event["step"]]) <= TOLERANCE, (event, baseline[event["step"]])
    assert tailer.bad_lines <= kills, "only a line cut by a kill may be unreadable"

    final, expected = load_file(str(run_dir.adapter / "adapter_model.safetensors")), \
        load_file(str(baseline_dir.adapter / "adapter_model.safetensors"))
    assert final.keys() == expected.keys()
    for name in expected:
        assert (final[name] - expected[name]).abs().max().item() <= TOLERANCE, name
