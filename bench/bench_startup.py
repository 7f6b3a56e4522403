"""Start-up: `loratui --help`, and the dashboard's first frame after `loratui run`.

Two targets (issue 7, target 5), each timed from the outside as a person would:

1. `loratui --help` (the installed command), wall time to exit; `--runs` runs
   after one warm-up run, median (target <= 0.5 s).
2. `loratui run CONFIG` in a real terminal (a tmux pane on a private server):
   wall time from starting the command until the screen shows the whole first
   frame (the header's STARTING state and the key bar). Each run trains one
   fp32 step so that it ends by itself, then quits with `q`; `--runs` runs
   after one warm-up run, median (target <= 1.5 s).

    python bench/bench_startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import describe_machine  # noqa: E402
from bench.terminal import TmuxTerminal  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config.example.toml"


def loratui_command() -> list[str]:
    """The installed `loratui` script beside this interpreter, as a user runs it; else `python -m loratui`."""
    script = Path(sys.executable).parent / "loratui"
    if script.is_file():
        return [str(script)]
    found = shutil.which("loratui")
    return [found] if found else [sys.executable, "-m", "loratui"]


def help_seconds() -> float:
    started = time.perf_counter()
    subprocess.run([*loratui_command(), "--help"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def first_frame_seconds(work: Path, run: int) -> float:
    """Seconds from `loratui run` to its first whole frame; the one-step run is then finished and quit."""
    name = f"startup-{run}"
    overrides = [f'run.output_dir="{work}"', f'run.name="{name}"', "train.max_steps=1", 'train.precision="fp32"']
    command = [*loratui_command(), "run", str(CONFIG), *[arg for item in overrides for arg in ("--set", item)]]
    with TmuxTerminal(work) as terminal:
        started = time.perf_counter()
        terminal.start(command)
        terminal.wait_until(lambda screen: "STARTING" in screen and "Quit" in screen, "the first frame", 60)
        seconds = time.perf_counter() - started
        terminal.wait_for(r"FINISHED|FAILED", "the one-step run to end", 300)
        code = terminal.quit_ended_run()
    if code != 0:
        raise SystemExit(f"`loratui run` exited with {code}; see {work / name / 'trainer.log'}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each after one warm-up run")
    args = parser.parse_args()
    print(f"machine: {describe_machine()}", flush=True)
    helps = [help_seconds() for _ in range(args.runs + 1)][1:]
    print("loratui --help: " + ", ".join(f"{s:.3f}" for s in helps) + " s", flush=True)
    frames = []
    with tempfile.TemporaryDirectory(prefix="loratui-bench-startup-") as tmp:
        for run in range(args.runs + 1):
            seconds = first_frame_seconds(Path(tmp), run)
            print(f"first frame run {run}{' (warm-up)' if run == 0 else ''}: {seconds:.3f} s", flush=True)
            if run:
                frames.append(seconds)
    print(f"\nmachine at the end: {describe_machine()}")
    print(f"RESULT loratui --help: {statistics.median(helps):.3f} s (target <= 0.5 s; median of {args.runs})")
    print(f"RESULT dashboard first frame after `loratui run`: {statistics.median(frames):.3f} s "
          f"(target <= 1.5 s; median of {args.runs})")


if __name__ == "__main__":
    main()
