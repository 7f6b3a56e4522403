"""The trainer as a child process: its own session, its output in trainer.log.

Its own session (start_new_session) means the terminal's signals (a hang-up
when SSH drops, Ctrl+C) never reach it, and nothing the dashboard does or
suffers can take it down; the dashboard only ever talks to it through
control.jsonl. Waiting for it happens in a worker thread, in short waits: the
app's shutdown waits for its worker threads, so a thread blocked until the
trainer ends would hold a detaching dashboard open for the rest of the run.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


class TrainerProcess:
    def __init__(self, command: list[str], log_path: Path, cwd: Path | None = None):
        self.command = command
        self.log_path = Path(log_path)
        self.cwd = cwd
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "ab") as log:
            self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True, cwd=self.cwd,
                                            env=_trainer_environment())

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def wait(self, timeout: float) -> int | None:
        """The process's return code (negative: killed by that signal), or None if it still runs."""
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
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
