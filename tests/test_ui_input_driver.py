"""The dashboard's input thread in a real terminal: asleep while nobody types, keys and Escape still work.

Textual's own input thread wakes ten times a second; the dashboard's driver
(loratui/ui/input_driver.py) sleeps until a key, a lone Escape's deadline, or
the app closing. Its thread is the one the process has in select(2): the main
thread waits in epoll, the others on locks and sleeps.
"""

from __future__ import annotations

import os
import re
import signal
import shutil
import sys
import time
from pathlib import Path

import pytest
from test_ui_support import recorded_run

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.terminal import TmuxTerminal  # noqa: E402

LORATUI = [sys.executable, "-m", "loratui"]
pytestmark = pytest.mark.skipif(shutil.which("tmux") is None or not Path("/proc/self/task").is_dir(),
                                reason="needs tmux and /proc")
HELP = r"key +does"  # the help's table header
SELECT_WAITS = ("poll_schedule_timeout", "do_select", "core_sys_select")  # where select(2) sleeps in the kernel


def input_thread(pid: int) -> Path:
    waiting = [task for task in Path(f"/proc/{pid}/task").iterdir()
               if (task / "wchan").read_text().strip().startswith(SELECT_WAITS)]
    assert len(waiting) == 1, [(task.name, (task / "wchan").read_text()) for task in Path(f"/proc/{pid}/task").iterdir()]
    return waiting[0]


def wakeups(task: Path) -> int:
    for line in (task / "status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError(f"no voluntary_ctxt_switches in {task / 'status'}")


def test_the_input_thread_sleeps_until_a_key_and_escape_still_closes_a_dialog(tmp_path):
    run_dir = recorded_run("healthy_fp16", tmp_path)
    with TmuxTerminal(tmp_path, width=120, height=36) as terminal:
        terminal.start([*LORATUI, "watch", str(run_dir)])
        terminal.wait_for(r"FINISHED", "the dashboard", timeout=60, poll=0.3)
        pid = terminal.command_pid()
        deadline = time.monotonic() + 10
        while True:  # the thread is in select(2) once it has read the terminal's first replies
            try:
                task = input_thread(pid)
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        before = wakeups(task)
        time.sleep(3)
        assert wakeups(task) - before <= 1  # Textual's own thread: about 30 in 3 s

        terminal.press("?")
        terminal.wait_for(HELP, "the help", timeout=20, poll=0.3)
        terminal.press("Escape")  # a lone Escape: delivered after its delay, with no key behind it
        terminal.wait_until(lambda screen: "FINISHED" in screen and not re.search(HELP, screen), "the help closed",
                            timeout=20, poll=0.3)
        terminal.press("q")
        assert terminal.exit_code(timeout=30) == 0


def thread_count(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def test_a_stop_and_continue_leaves_the_dashboard_as_it_was_and_a_suspend_still_resumes(tmp_path):
    """A SIGSTOP suspends nothing, so its SIGCONT must not start the terminal's threads a second time (Textual's
    driver did, each time); a SIGTSTP suspends, and its SIGCONT brings the dashboard back, keys working."""
    run_dir = recorded_run("healthy_fp16", tmp_path)
    with TmuxTerminal(tmp_path, width=120, height=36) as terminal:
        terminal.start([*LORATUI, "watch", str(run_dir)])
        terminal.wait_for(r"FINISHED", "the dashboard", timeout=60, poll=0.3)
        pid = terminal.command_pid()
        time.sleep(1.0)  # the app's own threads have started
        threads = thread_count(pid)
        for _ in range(3):
            os.kill(pid, signal.SIGSTOP)
            time.sleep(0.2)
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.5)
        assert thread_count(pid) == threads
        terminal.press("?")
        terminal.wait_for(HELP, "the help after a stop and a continue", timeout=20, poll=0.3)
        terminal.press("Escape")
        terminal.wait_until(lambda screen: not re.search(HELP, screen), "the help closed", timeout=20, poll=0.3)

        os.kill(pid, signal.SIGTSTP)  # suspended: the terminal is handed back (the alternate screen left)
        terminal.wait_until(lambda screen: "FINISHED" not in screen, "the suspended dashboard's screen to go",
                            timeout=20, poll=0.3)
        os.kill(pid, signal.SIGCONT)
        terminal.wait_for(r"FINISHED", "the dashboard back after a suspend", timeout=20, poll=0.3)
        terminal.press("?")
        terminal.wait_for(HELP, "the help after a suspend", timeout=20, poll=0.3)
        terminal.press("Escape")
        terminal.wait_until(lambda screen: "FINISHED" in screen and not re.search(HELP, screen), "the help closed",
                            timeout=20, poll=0.3)
        terminal.press("q")
        assert terminal.exit_code(timeout=30) == 0
