"""Dashboard cost: training under the live dashboard against the same run headless.

Issue 7, target 3, and issue 16's cost target: the real `loratui run CONFIG`
with its dashboard in a real terminal (a tmux pane on a private server: the
dashboard tails the log and redraws while the trainer it started runs) against
`loratui run CONFIG --headless` on the same config. The order alternates (headless first, then
dashboard first, ...), `--runs` runs of each. Three figures:

- step time: a run's median `step_time_s` after the first `--warmup` steps;
  the ratio is the median dashboard run over the median headless run
  (target <= 1.05 on 2 cores);
- wall time per step: the mean time between step events (checkpoints and
  event publishing included), the same ratio (issue 16's target: <= 1.03);
  the mean catches what a median step time leaves out (a redraw that lands
  between steps);
- the dashboard's own CPU: its process's user+system time over the same
  steps, as a share of the machine (all cores). On a shared machine the two
  ratios carry that machine's noise (runs differ by several percent between
  themselves); this one is measured inside the runs and is steadier.

The dashboard runs with its looking features on, as issue 16 asks: once its
charts show steps, the benchmark presses `m` (light smoothing) and `c` (the
value cursor) and waits until the charts' titles show both; the Host panel
updates from the trainer's host events. The measured steps (after `--warmup`,
the same in both modes) start after that: a press before the dashboard has
drawn a step only gets "no steps to read yet" (the earlier version of this
benchmark pressed at the 10th step written to the log, before the dashboard
had drawn one, and measured a toast instead of the cursor).

The benchmark reads the screen only at the start (twice a second) and after the
run has ended (it waits for the trainer's last event in the log): each look
starts a tmux client, and looking 50 times a second took more from the trainer
than the dashboard did.

    python bench/bench_dashboard_cost.py [--runs 5] [--steps 550] [--warmup 150] [--precision fp32] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_startup import CONFIG, loratui_command  # noqa: E402
from bench.machine import describe_machine  # noqa: E402
from bench.terminal import TmuxTerminal  # noqa: E402
from loratui.events.jsonl import read_events  # noqa: E402

FEATURE_KEYS = ("m", "c")  # light smoothing and the value cursor: the charts' costliest options, on
FEATURES_ON = re.compile(r"light smoothing.*step \d+: ")  # the loss chart's title with both on


def run_arguments(work: Path, name: str, args) -> list[str]:
    overrides = [f'run.output_dir="{work}"', f'run.name="{name}"', f"train.max_steps={args.steps}",
                 f'train.precision="{args.precision}"', f"train.batch_size={args.batch_size}"]
    return ["run", str(CONFIG), *[arg for item in overrides for arg in ("--set", item)]]


def run_headless(work: Path, name: str, args) -> None:
    subprocess.run([*loratui_command(), *run_arguments(work, name, args), "--headless"], check=True,
                   stdout=subprocess.DEVNULL, cwd=work)
    return None


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def steps_written(events: Path) -> int:
    try:
        with events.open("rb") as file:
            return sum(1 for line in file if line.startswith(b'{"type":"step"'))
    except FileNotFoundError:
        return 0


def run_ended(events: Path, timeout: float) -> None:
    """Wait for the trainer's last event, looking at the file's tail once a second (a tmux client per look at
    the screen would cost CPU in the dashboard's runs only)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with events.open("rb") as file:
            file.seek(max(0, file.seek(0, os.SEEK_END) - 4096))
            tail = file.read()
            if b'"type":"run_finished"' in tail or b'"type":"run_failed"' in tail:
                return
        time.sleep(1.0)
    raise SystemExit(f"the run did not end within {timeout:.0f} s: see {events.parent / 'trainer.log'}")


def run_with_dashboard(work: Path, name: str, args) -> tuple[float, int]:
    """Runs the dashboard; returns its CPU seconds per wall second (summed over cores) once its features are on,
    and the step they came on at."""
    events = work / name / "events.jsonl"
    with TmuxTerminal(work) as terminal:
        terminal.start([*loratui_command(), *run_arguments(work, name, args)])
        terminal.wait_for(r"STARTING|LOADING|RUNNING", "the first frame", 60, poll=0.2)
        dashboard = terminal.command_pid()
        terminal.wait_until(lambda screen: "RUNNING" in screen and "waiting for the first step" not in screen,
                            "the charts to show steps", 120, poll=0.5)
        terminal.press(*FEATURE_KEYS)
        terminal.wait_until(lambda screen: FEATURES_ON.search(screen) is not None, "smoothing and the cursor",
                            30, poll=0.5)
        features_on = steps_written(events)
        if features_on > args.warmup:
            raise SystemExit(f"the features came on at step {features_on}, after the {args.warmup} warm-up steps: "
                             f"raise --warmup")
        cpu_start, wall_start = process_cpu_seconds(dashboard), time.monotonic()
        run_ended(events, 60 + args.steps * 10)
        cpu_end, wall_end = process_cpu_seconds(dashboard), time.monotonic()
        terminal.wait_for(r"FINISHED|FAILED", "the dashboard to show the end", 60, poll=0.5)
        code = terminal.quit_ended_run()
    if code != 0:
        raise SystemExit(f"the dashboard run {name} exited with {code}; see {work / name / 'trainer.log'}")
    return (cpu_end - cpu_start) / (wall_end - wall_start), features_on


def step_figures(work: Path, name: str, warmup: int) -> tuple[float, float]:
    """(median step_time_s, mean wall seconds per step) after the warm-up steps."""
    steps = [e for e in read_events(work / name / "events.jsonl") if e["type"] == "step"][warmup:]
    wall = (steps[-1]["time"] - steps[0]["time"]) / (len(steps) - 1)
    return statistics.median(e["step_time_s"] for e in steps), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each, alternating which goes first")
    parser.add_argument("--steps", type=int, default=550)
    parser.add_argument("--warmup", type=int, default=150,
                        help="first steps of each run left out (the dashboard's features are on before them)")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    print(f"machine: {describe_machine()}", flush=True)
    figures: dict[str, list[tuple[float, float]]] = {"headless": [], "dashboard": []}
    dashboard_cpu: list[float] = []
    runners = {"headless": run_headless, "dashboard": run_with_dashboard}
    with tempfile.TemporaryDirectory(prefix="loratui-bench-dashboard-") as tmp:
        work = Path(tmp)
        for run in range(args.runs):
            order = ("headless", "dashboard") if run % 2 == 0 else ("dashboard", "headless")
            for kind in order:
                name = f"{kind}-{run}"
                started = time.perf_counter()
                measured = runners[kind](work, name, args)
                figures[kind].append(step_figures(work, name, args.warmup))
                step, wall = figures[kind][-1]
                extra = ""
                if measured is not None:
                    cpu, features_on = measured
                    dashboard_cpu.append(cpu)
                    extra = f", dashboard CPU {cpu * 100:.1f}% of one core (features on at step {features_on})"
                print(f"run {run + 1}/{args.runs} {kind:<9}: median step_time_s {step * 1000:.1f} ms, wall "
                      f"{wall * 1000:.1f} ms/step{extra} ({time.perf_counter() - started:.0f} s)", flush=True)
    medians = {kind: [statistics.median(f[i] for f in runs) for i in (0, 1)] for kind, runs in figures.items()}
    step_ratio = medians["dashboard"][0] / medians["headless"][0]
    wall_ratio = medians["dashboard"][1] / medians["headless"][1]
    cores = os.cpu_count() or 1
    cpu_share = statistics.median(dashboard_cpu) / cores
    print(f"\nmachine at the end: {describe_machine()}")
    print(f"{args.precision}, batch {args.batch_size}, {args.steps} steps, first {args.warmup} excluded, "
          f"median of {args.runs} runs each")
    print(f"headless : step_time_s {medians['headless'][0] * 1000:.1f} ms, wall {medians['headless'][1] * 1000:.1f} ms/step")
    print(f"dashboard: step_time_s {medians['dashboard'][0] * 1000:.1f} ms, wall {medians['dashboard'][1] * 1000:.1f} ms/step")
    print(f"RESULT dashboard cost: step time with the dashboard / headless = {step_ratio:.3f} (target <= 1.05); "
          f"wall time per step {wall_ratio:.3f} (target <= 1.03); the dashboard's own CPU {cpu_share:.1%} of the "
          f"machine ({cores} cores)")


if __name__ == "__main__":
    main()
