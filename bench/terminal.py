"""A real terminal for the dashboard benchmarks: one tmux window on a private server.

The server has its own socket name (`tmux -L bench-...`), so a developer's own
tmux sessions are never touched, and closing it kills only this server.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
import uuid
from pathlib import Path

POLL_SECONDS = 0.02  # the screen is read this often while a benchmark waits for a frame


class TmuxTerminal:
    def __init__(self, cwd: Path, *, width: int = 160, height: int = 48):
        self.socket = f"bench-{uuid.uuid4().hex[:10]}"
        self.cwd = Path(cwd)
        self.width, self.height = width, height

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True,
                              timeout=20).stdout

    def start(self, command: list[str], env: dict | None = None) -> None:
        """Run `command` in the window's shell, which prints EXIT=<code> after it and stays open to be read."""
        settings = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in {"TERM": "xterm-256color", **(env or {})}.items())
        script = (f"cd {shlex.quote(str(self.cwd))} && env {settings} {shlex.join(map(str, command))}; "
                  f"echo EXIT=$?; sleep 600")
        self.tmux("new-session", "-d", "-s", "main", "-x", str(self.width), "-y", str(self.height), script)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "main")

    def command_pid(self) -> int | None:
        """The pid of the running command: the window shell's child (`env` execs the command)."""
        shell = self.tmux("display-message", "-p", "-t", "main", "#{pane_pid}").strip()
        try:
            children = Path(f"/proc/{shell}/task/{shell}/children").read_text().split()
        except (OSError, ValueError):
            return None
        return int(children[0]) if children else None

    def press(self, *keys: str) -> None:
        for key in keys:
            self.tmux("send-keys", "-t", "main", key)
            time.sleep(0.3)

    def wait_until(self, test, what: str, timeout: float = 120, poll: float = POLL_SECONDS) -> str:
        """Poll the screen until `test(screen)` holds; returns that screen.

        Each poll starts a tmux client (a few ms of CPU): a benchmark that times the
        training, not the frame, must poll slowly or it measures its own polling.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if test(screen):
                return screen
            time.sleep(poll)
        raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}; the screen:\n{self.screen()}")

    def wait_for(self, pattern: str, what: str, timeout: float = 120, poll: float = POLL_SECONDS) -> str:
        return self.wait_until(lambda screen: re.search(pattern, screen) is not None, what, timeout, poll)

    def exit_code(self, timeout: float = 120) -> int:
        screen = self.wait_for(r"EXIT=\d+", "the command to exit", timeout)
        return int(re.search(r"EXIT=(\d+)", screen).group(1))

    def quit_ended_run(self, timeout: float = 60) -> int:
        """Quit a dashboard whose run has ended; returns the exit code.

        The header shows FINISHED from the run's last event, a moment before the
        trainer process exits; a `q` in that moment opens the quit dialog (the
        trainer still runs), which is cancelled and the `q` tried again.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.press("q")
            try:
                return self.exit_code(timeout=3)
            except RuntimeError:
                if "Quit the dashboard" in self.screen():
                    self.press("c")
        raise RuntimeError(f"the dashboard did not quit within {timeout:.0f} s; the screen:\n{self.screen()}")

    def close(self) -> None:
        self.tmux("kill-server")
        socket_dir = Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}"
        (socket_dir / self.socket).unlink(missing_ok=True)

    def __enter__(self) -> "TmuxTerminal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
