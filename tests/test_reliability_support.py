"""Shared tools for the reliability tests: small real runs, headless subprocesses, seeded chaos.

Not a test module (nothing here starts with `test_`); it lives beside the tests
that import it. Every run here is the real program: `python -m loratui run
--headless` in its own process, or the real Trainer in this one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from loratui.events.jsonl import EventTailer
from loratui import checkpoint_files as ckpt

# Torture counts: the default suite runs the short, still random, variant;
# `make torture` (LORATUI_TORTURE=full) runs the full counts.
FULL = os.environ.get("LORATUI_TORTURE") == "full"

# How long a run may take to reach a point before the test calls it hung. Generous:
# the machine is shared and a busy one is slow, and tests never assert on wall time.
PATIENCE_S = 240


# One intra-op thread for every run these tests start or compare. On a small shared
# machine torch's default (a spinning thread per core) made a 6-step run 10x slower,
# and runs whose losses are compared must use the same thread count anyway.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(autouse=True, scope="module")
def single_cpu_thread():
    """Autouse in every module that imports it: in-process runs use one thread, as subprocesses do."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def torture_count(default: int, full: int) -> int:
    return full if FULL else default


def seeded_random(label: str) -> random.Random:
    """A Random whose seed is printed (pytest shows it on failure) and can be pinned to replay."""
    seed = int(os.environ.get("LORATUI_TORTURE_SEED") or random.SystemRandom().randrange(2**31))
    print(f"{label}: seed {seed} (replay with LORATUI_TORTURE_SEED={seed})")
    return random.Random(seed)


def write_small_data(directory: Path) -> Path:
    """A text dataset small enough to tokenize at once; 24 rows at batch 4 make a 6-step epoch."""
    path = directory / "small.jsonl"
    path.write_text("".join(json.dumps({"text": f"Question: what is {i} plus {i}? Answer: {2 * i}."}) + "\n"
                            for i in range(24)))
    return path


def write_run_config(directory: Path, *, max_steps: int = 400, every_steps: int = 3, keep: int = 2,
                     lr_scheduler: str = "constant", extra: str = "") -> Path:
    """A fast fp32 CPU config on the small dataset; runs land in directory/runs."""
    write_small_data(directory)
    path = directory / "config.toml"
    path.write_text(f"""
[data]
path = "small.jsonl"
format = "text"

[lora]
dropout = 0.1

[train]
precision = "fp32"
device = "cpu"
max_steps = {max_steps}
batch_size = 4
warmup_steps = 2
lr_scheduler = "{lr_scheduler}"

[checkpoint]
every_steps = {every_steps}
keep = {keep}

[monitor]
log_every = 1000
{extra}
""")
    return path


def signals_as_a_terminal_leaves_them() -> None:
    """In a run's process, before it starts: SIGINT and SIGHUP handled by default, as a shell in a terminal starts
    a command. A test runner started in the background (`(nohup make torture &)`) ignores both, a run would
    inherit that, and loratui keeps an ignored signal ignored (nohup's promise): the signal tests would then
    see runs that never stop. A run started under `nohup` by a test still has SIGHUP ignored: nohup sets it."""
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


class HeadlessRun:
    """`python -m loratui run CONFIG --headless` in its own session, output to files."""

    def __init__(self, config: Path, *, resume: bool = False, env: dict | None = None,
                 args: list[str] | None = None):
        """args: the command to run instead of `python -m loratui run CONFIG --headless` (nohup, a launcher)."""
        self.config = config
        self.run_dir = config.parent / "runs" / "loratui-run"  # the default run.name
        self.events = self.run_dir / "events.jsonl"
        self.checkpoints = self.run_dir / "checkpoints"
        command = list(args or [sys.executable, "-m", "loratui", "run", str(config), "--headless"])
        if resume:
            command.append("--resume")
        # Only this process's events: a resumed run appends to the log of the runs before it.
        self.tailer = EventTailer(self.events, offset=self.events.stat().st_size if self.events.exists() else 0)
        self.seen: list[dict] = []
        self.stdout_path = config.parent / f"run.{time.monotonic_ns()}.out"
        with open(self.stdout_path, "wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=config.parent,
                                            env={**os.environ, **ONE_THREAD, **(env or {})}, start_new_session=True,
                                            preexec_fn=signals_as_a_terminal_leaves_them)

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def new_events(self) -> list[dict]:
        fresh = self.tailer.read_new()
        self.seen.extend(fresh)
        return fresh

    def wait_for(self, predicate: Callable[[], bool], what: str, poll_s: float = 0.01) -> None:
        """Poll until predicate() holds; fail (with the run's output) if the run ends or hangs first."""
        deadline = time.monotonic() + PATIENCE_S
        while not predicate():
            if self.process.poll() is not None:
                raise AssertionError(f"the run ended (exit {self.process.returncode}) before {what}:\n"
                                     + self.output()[-3000:])
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"no {what} within {PATIENCE_S} s:\n" + self.output()[-3000:])
            time.sleep(poll_s)

    def wait_for_step(self, step: int) -> None:
        def reached() -> bool:
            self.new_events()
            return any(e["type"] == "step" and e["step"] >= step for e in self.seen)

        self.wait_for(reached, f"step {step}")

    def send(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL the whole session (the run and anything it started)."""
        if self.process.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()

    def finish(self, timeout: float = PATIENCE_S) -> int:
        """The exit code; a run still alive after `timeout` is hung: killed, and the test fails."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the run did not exit within {timeout} s (hung):\n" + self.output()[-3000:])

    def all_events(self) -> list[dict]:
        self.new_events()
        return self.seen


def complete_steps(checkpoints: Path) -> list[int]:
    """Steps of the checkpoints that verify, newest first (an independent reading of the disk)."""
    return [info.step for info in ckpt.list_complete(checkpoints)]


def partial_dirs(checkpoints: Path) -> list[Path]:
    try:
        return [p for p in checkpoints.iterdir() if p.name.startswith(ckpt.PARTIAL_PREFIX)]
    except FileNotFoundError:
        return []


def identity(path: Path) -> tuple[int, int]:
    """Tells a directory from a later one of the same name (an inode number alone can be reused)."""
    status = path.stat()
    return status.st_ino, status.st_ctime_ns


def saves_in_progress(checkpoints: Path) -> dict[int, Path]:
    """Step -> hidden directory of each checkpoint being written and already into its commit.

    trainer_state.json is the first file the commit writes, before the (slowed) checksums.
    """
    found = {}
    for path in partial_dirs(checkpoints):
        step = path.name.removeprefix(ckpt.PARTIAL_PREFIX).removeprefix("step-")
        if step.isdigit() and (path / ckpt.STATE).exists():
            found[int(step)] = path
    return found


def inet_sockets(pid: int) -> list[str]:
    """The TCP/UDP sockets (IPv4 and IPv6) a process holds, as /proc/net lines; empty if none.

    A socket fd links to `socket:[inode]`; /proc/<pid>/net/{tcp,tcp6,udp,udp6}
    list every inet socket of the namespace by inode, so the intersection is
    exactly this process's network sockets (listening or not).
    """
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed while we looked
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        found += [f"{table}: {line.strip()}" for line in lines if line.split()[9] in inodes]
    return found
