"""SIGKILL inside a checkpoint save, with checkpoint.keep = 1, while a watcher polls the directory.

The kill lands after the save has begun its commit (slowed per file) and
before the rename, so the half-written checkpoint is left behind. The resume
must use the previous complete checkpoint and clean the half-written one up.
Throughout, from the first complete checkpoint on, a watcher thread polling
the checkpoints directory must never see a moment without one: retention
deletes the old checkpoint only after the new one is in place.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from helpers import train_in_process
from loratui.config import load_config
from loratui import checkpoint_files as ckpt
from test_reliability_support import (
    HeadlessRun,
    complete_steps,
    partial_dirs,
    saves_in_progress,
    single_cpu_thread,  # noqa: F401 (an autouse fixture)
    torture_count,
    write_run_config,
)


class CompletenessWatcher(threading.Thread):
    """Polls a checkpoints directory and records any moment with no complete checkpoint in it.

    One listing of a small directory is a consistent snapshot (a rename cannot
    interleave with it). A `step-*` directory whose manifest is gone is being
    deleted; if none is complete, the directory is listed again, and only the
    same listing twice counts: a different one means it changed while we looked.
    """

    def __init__(self, checkpoints: Path):
        super().__init__(daemon=True)
        self.checkpoints = checkpoints
        self.stopping = threading.Event()
        self.polls = 0
        self.states: list[tuple[str, ...]] = []  # each distinct set of complete checkpoints seen
        self.gaps: list[list[str]] = []

    def complete(self) -> tuple[list[str], tuple[str, ...]]:
        try:
            names = sorted(os.listdir(self.checkpoints))
        except FileNotFoundError:
            return [], ()
        return names, tuple(n for n in names if n.startswith("step-")
                            and (self.checkpoints / n / ckpt.MANIFEST).exists())

    def run(self) -> None:
        while not self.stopping.is_set():
            self.polls += 1
            names, complete = self.complete()
            if complete:
                if not self.states or self.states[-1] != complete:
                    self.states.append(complete)
            elif self.states:
                again, complete = self.complete()
                if not complete and again == names:
                    self.gaps.append(names)
            time.sleep(0.0005)

    def stop(self) -> None:
        self.stopping.set()
        self.join()


@pytest.mark.slow
def test_sigkill_inside_a_save_resumes_from_the_previous_checkpoint_and_one_always_exists(tmp_path):
    rounds = torture_count(1, 5)
    config_path = write_run_config(tmp_path, max_steps=3 * rounds + 10, every_steps=3, keep=1)
    checkpoints = tmp_path / "runs" / "loratui-run" / "checkpoints"
    watcher = CompletenessWatcher(checkpoints)
    watcher.start()
    try:
        previous = 0  # the newest complete checkpoint
        for number in range(rounds):
            run = HeadlessRun(config_path, resume=number > 0, env={"LORATUI_TEST_SLOW_CHECKPOINT": "0.3"})
            try:
                # One save completes (retention deletes `previous`); the kill lands inside the next.
                run.wait_for(lambda: any(step > previous + 3 for step in saves_in_progress(run.checkpoints)),
                             "a second checkpoint save", poll_s=0.002)
                run.kill()
            finally:
                run.kill()
            if number:
                started = next(e for e in run.all_events() if e["type"] == "run_started")
                assert started["resumed_from"] == str(checkpoints / ckpt.checkpoint_name(previous))
            cut = [p.name for p in partial_dirs(checkpoints)]
            assert cut == [f"{ckpt.PARTIAL_PREFIX}{ckpt.checkpoint_name(previous + 6)}"], cut
            previous += 3
            assert complete_steps(checkpoints) == [previous]  # keep = 1: only the one before the cut save

        # The last resume runs to the end in this process, saving every 3 steps under the watcher's eye.
        code, events, _ = train_in_process(load_config(config_path), resume=True)
    finally:
        watcher.stop()
    assert code == 0
    started = [e for e in events if e["type"] == "run_started"][-1]
    assert started["resumed_from"] == str(checkpoints / ckpt.checkpoint_name(previous))
    assert not partial_dirs(checkpoints)
    assert complete_steps(checkpoints) == [3 * rounds + 10]
    print(f"{rounds} kill(s) inside a save survived; the watcher polled {watcher.polls} times, saw "
          f"{len(watcher.states)} sets of complete checkpoints and {len(watcher.gaps)} moments without one")
    assert not watcher.gaps, f"moments with no complete checkpoint: {watcher.gaps[:5]}"
    # The watcher really watched the saves: it saw each retention step, old and new side by side or in turn.
    assert len(watcher.states) >= 3 and watcher.polls > 100, (watcher.polls, watcher.states)
