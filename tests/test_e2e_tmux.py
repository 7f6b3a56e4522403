"""End to end in a real terminal: the real `loratui run` / `loratui watch` in tmux, keys pressed, screen read.

Runs are short and on CPU (fp32 is the fast one here); every wait is bounded
and says what it waited for. Each test uses its own tmux server (-L), so a
developer's own tmux sessions are never touched.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from test_ui_support import recorded_run

from loratui.control import send_command
from loratui.events.jsonl import read_events
from loratui import checkpoint_files as ckpt

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config.example.toml"
LORATUI = [sys.executable, "-m", "loratui"]

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


class Terminal:
    """One tmux window running one command; the screen is read with capture-pane."""

    def __init__(self, cwd: Path, *, width: int = 120, height: int = 36, term: str = "xterm-256color"):
        self.socket = f"loratui-test-{uuid.uuid4().hex[:8]}"
        self.cwd = cwd
        self.width, self.height, self.term = width, height, term

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True,
                              timeout=20).stdout

    def start(self, command: list[str], env: dict | None = None) -> None:
        settings = " ".join(f"{k}={v}" for k, v in {"TERM": self.term, **(env or {})}.items())
        shell = f"cd {self.cwd} && env {settings} {' '.join(map(str, command))}; echo EXIT=$?; sleep 600"
        self.tmux("new-session", "-d", "-s", "main", "-x", str(self.width), "-y", str(self.height), shell)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "main")

    def styled_screen(self) -> str:
        """The screen with its SGR escape sequences (colours, bold, reverse) as tmux holds them."""
        return self.tmux("capture-pane", "-p", "-e", "-t", "main")

    def text(self) -> str:
        """The screen with wrapped lines joined: a long message reads as one line."""
        return self.tmux("capture-pane", "-p", "-J", "-t", "main")

    def press(self, *keys: str) -> None:
        for key in keys:
            self.tmux("send-keys", "-t", "main", key)
            time.sleep(0.3)

    def wait_for(self, pattern: str, what: str, timeout: float = 90) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.screen())
            if match:
                return match
            time.sleep(0.25)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} ({pattern!r}); the screen:\n"
                             f"{self.screen()}")

    def exit_code(self, timeout: float = 90) -> int:
        return int(self.wait_for(r"EXIT=(\d+)", "the command to exit", timeout).group(1))

    def hang_up(self) -> None:
        """Close the terminal under the program, as a dropped SSH connection does."""
        self.tmux("kill-server")

    def close(self) -> None:
        self.tmux("kill-server")
        socket_dir = Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}"
        (socket_dir / self.socket).unlink(missing_ok=True)


@pytest.fixture
def terminal(tmp_path):
    terminals: list[Terminal] = []

    def make(**kwargs) -> Terminal:
        terminals.append(Terminal(tmp_path, **kwargs))
        return terminals[-1]

    yield make
    for term in terminals:
        term.close()


def run_args(tmp_path: Path, name: str, *overrides: str) -> list[str]:
    sets = [f"run.output_dir={tmp_path / 'runs'}", f"run.name={name}", "train.batch_size=4",
            "train.warmup_steps=0", *overrides]
    return [str(CONFIG), *[part for item in sets for part in ("--set", item)]]


def wait_for_events(run_dir: Path, condition, what: str, timeout: float = 90) -> list[dict]:
    deadline = time.monotonic() + timeout
    events: list[dict] = []
    while time.monotonic() < deadline:
        if (run_dir / "events.jsonl").exists():
            events = read_events(run_dir / "events.jsonl")
            if condition(events):
                return events
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last events: "
                         f"{[e['type'] for e in events[-8:]]}")


def trainer_pid(run_dir: Path) -> int:
    started = [e for e in read_events(run_dir / "events.jsonl") if e["type"] == "run_started"]
    return started[0]["pid"]


def dashboard_pids(marker: str) -> list[str]:
    """The dashboard processes whose command line holds `marker` (the trainer's does not)."""
    found = subprocess.run(["pgrep", "-f", f"loratui run .*{marker}"], capture_output=True, text=True).stdout
    return found.split()


def dashboard_processes(marker: str) -> list[int]:
    """The dashboards themselves (not the shells around them) whose command line holds `marker`."""
    pattern = f"^{re.escape(sys.executable)} -m loratui run .*{marker}"
    return [int(pid) for pid in subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()]


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def wait_until_gone(pid: int, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(pid), f"{what} (pid {pid}) still alive after {timeout:.0f}s"


@pytest.fixture
def trainers():
    """Run directories whose trainers must not outlive the test, whatever it asserted."""
    run_dirs: list[Path] = []
    yield run_dirs
    for run_dir in run_dirs:
        events = run_dir / "events.jsonl"
        for event in read_events(events) if events.exists() else []:
            if event["type"] == "run_started" and alive(event["pid"]):
                os.kill(event["pid"], signal.SIGKILL)


def test_switch_to_bf16_then_hang_up_then_reattach_and_stop(tmp_path, terminal):
    """p → bf16 → confirm restarts in bf16; a dropped terminal leaves training running; watch re-attaches."""
    run_dir = tmp_path / "runs" / "e2e-switch"
    term = terminal(term="screen-256color")
    term.start([*LORATUI, "run", *run_args(tmp_path, "e2e-switch", "train.precision=fp32", "train.max_steps=2000",
                                            "checkpoint.every_steps=5")])
    term.wait_for(r"step ([3-9]|\d\d+)/2000", "step lines on the dashboard")
    term.press("p")
    term.wait_for(r"Switch precision", "the precision dialog")
    term.press("Enter")
    term.wait_for(r"Restart in bf16", "bf16 highlighted and chosen (confirmation shown)", timeout=10)
    term.press("Enter")
    events = wait_for_events(run_dir, lambda ev: any(e["type"] == "restart" and e["precision"] == "bf16"
                                                     for e in ev), "a restart event in bf16")
    restart = next(e for e in events if e["type"] == "restart")
    wait_for_events(run_dir, lambda ev: any(e["type"] == "step" and e["precision"] == "bf16"
                                            and e["attempt"] == restart["attempt"] for e in ev),
                    "step events in bf16 after the restart")
    term.wait_for(r"RUNNING\s+bf16", "the bf16 badge on the dashboard")

    pid = trainer_pid(run_dir)
    term.hang_up()
    ui_gone = time.monotonic() + 15
    while dashboard_pids("run.name=e2e-switch") and time.monotonic() < ui_gone:
        time.sleep(0.2)
    assert not dashboard_pids("run.name=e2e-switch"), "the dashboard did not exit on hang-up"
    steps_before = sum(e["type"] == "step" for e in read_events(run_dir / "events.jsonl"))
    wait_for_events(run_dir, lambda ev: sum(e["type"] == "step" for e in ev) > steps_before + 1,
                    "training to go on after the terminal hung up")
    assert alive(pid)

    watch = terminal(term="xterm-256color")
    watch.start([*LORATUI, "watch", str(run_dir)])
    watch.wait_for(r"RUNNING\s+bf16", "loratui watch to show the live bf16 run")
    watch.press("q")
    watch.wait_for(r"Quit the dashboard", "the quit dialog")
    watch.press("s")
    assert watch.exit_code() == 0
    finished = read_events(run_dir / "events.jsonl")[-1]
    assert finished["type"] == "run_finished"
    # The stop saved the final state (or found it saved already by the interval checkpoint).
    assert (run_dir / "checkpoints" / f"step-{finished['step']:06d}" / "manifest.json").is_file()


def test_quit_with_stop_saves_a_final_checkpoint_and_exits_0(tmp_path, terminal):
    run_dir = tmp_path / "runs" / "e2e-stop"
    term = terminal()
    term.start([*LORATUI, "run", *run_args(tmp_path, "e2e-stop", "train.precision=fp32", "train.max_steps=2000",
                                            "checkpoint.every_steps=1000")])
    term.wait_for(r"step ([2-9]|\d\d+)/2000", "step lines on the dashboard")
    term.press("q")
    term.wait_for(r"Quit the dashboard", "the quit dialog")
    term.press("s")
    assert term.exit_code() == 0
    final = [e for e in read_events(run_dir / "events.jsonl") if e["type"] == "checkpoint" and e["reason"] == "stop"]
    assert final, "no checkpoint saved on stop"
    assert (Path(final[0]["path"]) / "manifest.json").is_file()


def colour_codes(styled: str) -> list[str]:
    """The SGR parameters that set a colour: 30-37/40-47/90-97/100-107, 38;5;N / 48;5;N, 38;2;R;G;B / 48;2;R;G;B.

    39 and 49 (back to the terminal's default colours) set none.
    """
    found = []
    for sequence in re.findall(r"\x1b\[([0-9;:]*)m", styled):
        params = [int(p) if p.isdigit() else 0 for p in re.split(r"[;:]", sequence)]
        index = 0
        while index < len(params):
            param = params[index]
            if param in (38, 48):
                width = 3 if params[index + 1:index + 2] == [5] else 5
                found.append(";".join(map(str, params[index:index + width])))
                index += width
                continue
            if 30 <= param <= 37 or 40 <= param <= 47 or 90 <= param <= 97 or 100 <= param <= 107:
                found.append(str(param))
            index += 1
    return found


@pytest.mark.parametrize("no_color", [True, False], ids=["NO_COLOR", "colour"])
def test_watch_shows_a_finished_runs_whole_history(tmp_path, terminal, no_color):
    run_dir = recorded_run("restart_bf16", tmp_path)
    term = terminal(width=80, height=24)
    term.start([*LORATUI, "watch", str(run_dir)], env={"NO_COLOR": "1"} if no_color else {})
    term.wait_for(r"FINISHED", "the finished state")
    screen = term.wait_for(r"step 60/60", "the last step of the history").string
    assert "restart from step 20" in screen  # the event list holds the restart, newest first
    assert re.search(r"✓ OK", screen)  # statuses are spelled out, not only coloured
    colours = colour_codes(term.styled_screen())
    if no_color:
        assert colours == [], f"colour codes under NO_COLOR: {sorted(set(colours))}"
    else:
        assert len(set(colours)) > 3, colours  # the check above can see colours when there are some
    term.press("q")
    assert term.exit_code(timeout=20) == 0


def test_watch_follows_a_live_headless_run_and_its_keys_control_it(tmp_path, terminal):
    run_dir = tmp_path / "runs" / "e2e-watch"
    headless = subprocess.Popen([*LORATUI, "run", *run_args(tmp_path, "e2e-watch", "train.precision=fp32",
                                                             "train.max_steps=2000", "checkpoint.every_steps=1000"),
                                 "--headless"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        wait_for_events(run_dir, lambda ev: any(e["type"] == "step" for e in ev), "the headless run's first step")
        term = terminal()
        term.start([*LORATUI, "watch", str(run_dir)])
        first = int(term.wait_for(r"step (\d+)/2000", "the live step on screen").group(1))
        term.wait_for(rf"step (?!{first}/)\d+/2000", "the step to move on (following the live log)")
        term.press("s")
        wait_for_events(run_dir, lambda ev: any(e["type"] == "checkpoint" and e["reason"] == "command" for e in ev),
                        "the checkpoint asked for with s")
        term.press("Space")
        term.wait_for(r"PAUSED", "the paused state")
        term.press("Space")
        term.wait_for(r"RUNNING", "the running state after resume")
        term.press("q")
        term.wait_for(r"Quit the dashboard", "the quit dialog")
        term.press("s")
        assert term.exit_code() == 0
        assert headless.wait(timeout=60) == 0
    finally:
        if headless.poll() is None:
            headless.kill()
    commands = [json.loads(line)["cmd"] for line in (run_dir / "control.jsonl").read_text().splitlines()]
    assert commands == ["save", "pause", "resume", "stop"]


def steps_logged(run_dir: Path) -> int:
    return sum(e["type"] == "step" for e in read_events(run_dir / "events.jsonl"))


def test_d_detaches_at_once_and_training_goes_on(tmp_path, terminal, trainers):
    """d: the dashboard exits 0 straight away with how to re-attach; the trainer trains on until told to stop."""
    run_dir = tmp_path / "runs" / "e2e-detach"
    trainers.append(run_dir)
    term = terminal()
    term.start([*LORATUI, "run", *run_args(tmp_path, "e2e-detach", "train.precision=fp32", "train.max_steps=5000",
                                            "checkpoint.every_steps=1000")])
    term.wait_for(r"step ([2-9]|\d\d+)/5000", "step lines on the dashboard")
    pid = trainer_pid(run_dir)
    term.press("d")
    # Bounded well below the run's length: a dashboard waiting for its trainer would sit here for minutes.
    assert term.exit_code(timeout=30) == 0
    message = re.search(r"loratui: detached; training goes on \(pid (\d+)\)\. Re-attach with: "
                        r"loratui watch (\S+)", term.text())
    assert message, term.text()
    assert (int(message.group(1)), message.group(2)) == (pid, str(run_dir))
    steps_before = steps_logged(run_dir)
    wait_for_events(run_dir, lambda ev: sum(e["type"] == "step" for e in ev) > steps_before + 2,
                    "training to go on after the detach")
    assert alive(pid)

    send_command(run_dir / "control.jsonl", "stop", reason="test: done")
    wait_for_events(run_dir, lambda ev: ev[-1]["type"] == "run_finished", "the stopped run's run_finished")
    wait_until_gone(pid, "the trainer after a stop command")


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_dashboard_stops_the_training_with_a_checkpoint(tmp_path, terminal, trainers, signum, code):
    """SIGTERM/SIGINT to `loratui run`: the trainer saves a checkpoint and stops; the dashboard exits with its code."""
    name = f"e2e-{signum.name.lower()}"
    run_dir = tmp_path / "runs" / name
    trainers.append(run_dir)
    seed = random.SystemRandom().randrange(2**31)
    step = random.Random(seed).randint(2, 12)
    print(f"{signum.name} at step {step} (seed {seed})")
    term = terminal()
    term.start([*LORATUI, "run", *run_args(tmp_path, name, "train.precision=fp32", "train.max_steps=2000",
                                            "checkpoint.every_steps=1000")])
    wait_for_events(run_dir, lambda ev: any(e["type"] == "step" and e["step"] >= step for e in ev), f"step {step}")
    pid = trainer_pid(run_dir)
    [dashboard] = dashboard_processes(f"run.name={name}")
    os.kill(dashboard, signum)
    assert term.exit_code(timeout=60) == code
    finished = read_events(run_dir / "events.jsonl")[-1]
    assert (finished["type"], finished["reason"]) == ("run_finished", f"stopped by {signum.name}")
    assert ckpt.list_complete(run_dir / "checkpoints")[0].step == finished["step"] >= step  # what --resume takes
    wait_until_gone(pid, "the trainer")
    assert not alive(dashboard)


def rename_run(run_dir: Path, name: str) -> None:
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    for event in events:
        if event["type"] == "run_started":
            event["config"]["run"]["name"] = name
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))


@pytest.mark.parametrize("width, height", [(80, 24), (100, 30), (160, 48)], ids=["80x24", "100x30", "160x48"])
def test_a_finished_run_at_each_size_then_the_summary_on_the_way_out(tmp_path, terminal, width, height):
    """Issue 16 at the sizes it was tried at: a long name never hides the state or attempt; q leaves a summary."""
    run_dir = recorded_run("restart_bf16", tmp_path)
    rename_run(run_dir, "a-rather-long-experiment-name-" * 4)
    term = terminal(width=width, height=height)
    term.start([*LORATUI, "watch", str(run_dir)])
    term.wait_for(r"step 60/60", "the last step of the history")
    header = term.screen().splitlines()[0]
    assert "FINISHED" in header and "attempt 1" in header and "a-rather-long" in header, header
    term.press("q")
    assert term.exit_code(timeout=20) == 0
    shown = term.text()
    assert "loratui: run ended at step 60 (completed), loss" in shown
    assert re.search(r"newest checkpoint: \S+step-000060 \(step 60\)", shown)
    assert f"loratui watch {run_dir}" in shown and "--resume" in shown


def test_ctrl_c_in_the_terminal_opens_the_quit_dialog(tmp_path, terminal):
    run_dir = recorded_run("healthy_fp16", tmp_path, until_step=45)  # live: nobody has written its end yet
    term = terminal(width=100, height=30)
    term.start([*LORATUI, "watch", str(run_dir)])
    term.wait_for(r"step 45/60", "the live run")
    term.press("C-c")
    term.wait_for(r"Quit the dashboard", "the quit dialog after Ctrl+C", timeout=10)
    term.press("c")
    term.wait_for(r"RUNNING", "the dashboard again after cancel", timeout=10)
    term.press("d")
    assert term.exit_code(timeout=20) == 0
    assert (run_dir / "control.jsonl").read_text() == ""  # neither key sent the run anything
