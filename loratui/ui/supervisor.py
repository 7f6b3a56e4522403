"""The trainer as a child process: its own session, its output in trainer.log.

Its own session (start_new_session) means the terminal's signals (a hang-up
when SSH drops, Ctrl+C) never reach it, and nothing the dashboard does or
suffers can take it down; the dashboard talks to it through control.jsonl,
and passes on a SIGINT or SIGTERM sent to the dashboard itself (`pass_signal`),
which the trainer answers as it would headless. Waiting for it happens in a
worker thread, in short waits: the app's shutdown waits for its worker threads,
so a thread blocked until the trainer ends would hold a detaching dashboard
open for the rest of the run. Where the system has pidfds the dashboard waits
for the exit in its own event loop instead (`exit_fd`): no thread wakes up
several times a second for the whole run.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path


class TrainerProcess:
    def __init__(self, command: list[str], log_path: Path, cwd: Path | None = None):
        self.command = command
        self.log_path = Path(log_path)
        self.cwd = cwd
        self.process: subprocess.Popen | None = None
        self.passed_signal: int | None = None  # the first signal passed on to the trainer
        self._starting = threading.Lock()  # a signal passed on while the process starts is sent once

    def start(self) -> None:
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with self._starting, os.fdopen(fd, "ab") as log:
            self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True, cwd=self.cwd,
                                            env=_trainer_environment())
            if self.passed_signal is not None:  # it came before the process existed
                self.process.send_signal(self.passed_signal)

    def pass_signal(self, signum: int) -> None:
        """Send the trainer this signal now, or as soon as it has started."""
        with self._starting:
            if self.passed_signal is None:
                self.passed_signal = signum
            if self.process is not None:
                self.process.send_signal(signum)  # a no-op once the process has been reaped

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def wait(self, timeout: float) -> int | None:
        """The process's return code (negative: killed by that signal), or None if it still runs after `timeout`.

        One sleep and one non-blocking look, not Popen.wait(timeout): that polls every few
        milliseconds, CPU taken from the trainer on a small machine for the whole run.
        """
        assert self.process is not None
        code = self.process.poll()
        if code is None:
            time.sleep(timeout)
            code = self.process.poll()
        return code

    def exit_fd(self) -> int | None:
        """A descriptor that becomes readable when the process exits (a pidfd, Linux 5.3+), or None where
        there is none (another system, a kernel or sandbox without pidfd_open, a process already reaped)."""
        if self.process is None or not hasattr(os, "pidfd_open"):
            return None
        try:
            return os.pidfd_open(self.process.pid)
        except OSError:
            return None

    @property
    def exit_code(self) -> int | None:
        return self.process.poll() if self.process else None


def _trainer_environment() -> dict:
    """The trainer writes plain lines to a file: no colour codes, no progress bars sized to a terminal."""
    env = dict(os.environ)
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env
