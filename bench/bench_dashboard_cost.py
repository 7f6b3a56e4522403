"""Dashboard cost: training under the live dashboard against the same training without it.

Issue 7, target 3, and issue 16's cost target (wall time per step <= 1.03). Two
measurements of the real `loratui run CONFIG` with its dashboard in a real
terminal (a tmux pane on a private server: the dashboard tails the log and
redraws while the trainer it started runs):

1. Interleaved (`--pairs`, the figure the target is judged on): one long run
   whose dashboard is running and stopped (SIGSTOP: it takes no CPU at all) in
   turns, `--window` seconds each; each window with it running is set against
   the mean of the stopped windows on either side. The machine these figures
   come from drifts: on 2 shared cores the same headless run went from 17 to
   23 ms a step and back within a minute, so separate runs (below) differ by
   more than the 3% being measured. Windows seconds apart, in one process,
   share that drift; the paired ratios cancel most of it. Printed: each
   window, the mean of the ratios with its standard error, and their median.
2. End to end (`--runs`): `loratui run CONFIG --headless` against the
   dashboard run, separate runs, the order alternating (headless first, then
   dashboard first, ...), `--runs` of each, `--steps` steps, the medians'
   ratios. What a user would time, and what the machine's drift moves most.

The figures: wall time per step (the time between step events, checkpoints
and event publishing included: what a redraw between steps costs shows here);
step time (the trainer's own median `step_time_s`; target <= 1.05); the
dashboard's own CPU (its process's user+system time over the same steps, as a
share of the machine: measured inside the runs, and steadier than the ratios).

The dashboard runs with its looking features on, as issue 16 asks: once its
charts show steps, the benchmark presses `m` (light smoothing) and `c` (the
value cursor) and waits until the charts' titles show both; the Host panel
updates from the trainer's host events. The measured steps (after `--warmup`)
start after that: a press before the dashboard has drawn a step only gets "no
steps to read yet" (an earlier version of this benchmark pressed at the 10th
step written to the log, and measured a toast instead of the cursor).

The benchmark reads the screen only at the start (twice a second) and after the
run has ended (it waits for the trainer's last event in the log): each look
starts a tmux client, and looking 50 times a second took more from the trainer
than the dashboard did.

    python bench/bench_dashboard_cost.py [--pairs 16] [--window 8] [--runs 5] [--steps 550] [--warmup 150]
                                         [--precision fp32] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
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
# Before a window is measured: a dashboard that has just been continued first catches up with the steps it
# missed (reads them, redraws), which it never has to do in a run nobody stops; a stopped one is idle at once.
RUNNING_SETTLE_SECONDS = 2.0
STOPPED_SETTLE_SECONDS = 0.5


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


def run_has_ended(events: Path) -> bool:
    with events.open("rb") as file:
        file.seek(max(0, file.seek(0, os.SEEK_END) - 4096))
        tail = file.read()
    return b'"type":"run_finished"' in tail or b'"type":"run_failed"' in tail


def run_ended(events: Path, timeout: float) -> None:
    """Wait for the trainer's last event, looking at the file's tail once a second (a tmux client per look at
    the screen would cost CPU in the dashboard's runs only)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if run_has_ended(events):
            return
        time.sleep(1.0)
    raise SystemExit(f"the run did not end within {timeout:.0f} s: see {events.parent / 'trainer.log'}")


def features_on(terminal: TmuxTerminal, what: str) -> int:
    """Wait until the charts show steps, switch smoothing and the cursor on, wait until they show; returns the
    dashboard's pid."""
    terminal.wait_for(r"STARTING|LOADING|RUNNING", f"{what}'s first frame", 60, poll=0.2)
    terminal.wait_until(lambda screen: "RUNNING" in screen and "waiting for the first step" not in screen,
                        f"{what}'s charts to show steps", 120, poll=0.5)
    terminal.press(*FEATURE_KEYS)
    terminal.wait_until(lambda screen: FEATURES_ON.search(screen) is not None, "smoothing and the cursor", 30,
                        poll=0.5)
    return terminal.command_pid()


def run_with_dashboard(work: Path, name: str, args) -> tuple[float, int]:
    """Runs the dashboard; returns its CPU seconds per wall second (summed over cores) once its features are on,
    and the step they came on at."""
    events = work / name / "events.jsonl"
    with TmuxTerminal(work) as terminal:
        terminal.start([*loratui_command(), *run_arguments(work, name, args)])
        dashboard = features_on(terminal, "the dashboard")
        features_on_at = steps_written(events)
        if features_on_at > args.warmup:
            raise SystemExit(f"the features came on at step {features_on_at}, after the {args.warmup} warm-up "
                             f"steps: raise --warmup")
        cpu_start, wall_start = process_cpu_seconds(dashboard), time.monotonic()
        run_ended(events, 60 + args.steps * 10)
        cpu_end, wall_end = process_cpu_seconds(dashboard), time.monotonic()
        terminal.wait_for(r"FINISHED|FAILED", "the dashboard to show the end", 60, poll=0.5)
        code = terminal.quit_ended_run()
    if code != 0:
        raise SystemExit(f"the dashboard run {name} exited with {code}; see {work / name / 'trainer.log'}")
    return (cpu_end - cpu_start) / (wall_end - wall_start), features_on_at


def step_figures(work: Path, name: str, warmup: int) -> tuple[float, float]:
    """(median step_time_s, mean wall seconds per step) after the warm-up steps."""
    steps = [e for e in read_events(work / name / "events.jsonl") if e["type"] == "step"][warmup:]
    return figures_of(steps)


def figures_of(steps: list[dict]) -> tuple[float, float]:
    """(median step_time_s, mean wall seconds per step) of consecutive step events."""
    wall = (steps[-1]["time"] - steps[0]["time"]) / (len(steps) - 1)
    return statistics.median(e["step_time_s"] for e in steps), wall


def window(seconds: float, settle: float, dashboard: int | None = None) -> dict:
    """A measured stretch of the run after `settle` seconds: its wall-clock bounds (the step events' clock) and
    the dashboard's CPU in it."""
    time.sleep(settle)
    cpu_start = process_cpu_seconds(dashboard) if dashboard else 0.0
    start = time.time()
    time.sleep(seconds)
    end = time.time()
    cpu = (process_cpu_seconds(dashboard) - cpu_start) / (end - start) if dashboard else None
    return {"start": start, "end": end, "cpu": cpu}


def child_pid(pid: int) -> int:
    """The process's child (the trainer the dashboard started, from one of its threads)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        if children:
            return int(children[0])
    raise SystemExit(f"the dashboard (pid {pid}) has no trainer process")


def wait_for_steps(events: Path, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while steps_written(events) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"the run did not reach step {count} within {timeout:.0f} s")
        time.sleep(0.5)


def interleaved_windows(work: Path, args) -> tuple[list[dict], list[dict]]:
    """One long `loratui run` under its dashboard, the dashboard running and stopped (SIGSTOP: no CPU at all) in
    turns. Returns the windows with it running and those with it stopped, in the order they came."""
    name = "interleaved"
    events = work / name / "events.jsonl"
    # The benchmark ends the run. Its length sizes the charts' buckets (history.py): this one holds about a
    # thousand by the end, more than a chart's width in braille pixels, as a long run's charts do.
    long_run = argparse.Namespace(**{**vars(args), "steps": args.long_steps})
    running, stopped = [], []
    with TmuxTerminal(work) as terminal:
        terminal.start([*loratui_command(), *run_arguments(work, name, long_run)])
        dashboard = features_on(terminal, "loratui run")
        trainer = child_pid(dashboard)
        try:
            wait_for_steps(events, args.warmup, 120)
            for pair in range(args.pairs):
                running.append(window(args.window, RUNNING_SETTLE_SECONDS, dashboard))
                os.kill(dashboard, signal.SIGSTOP)
                try:
                    stopped.append(window(args.window, STOPPED_SETTLE_SECONDS))
                finally:
                    os.kill(dashboard, signal.SIGCONT)
            running.append(window(args.window, RUNNING_SETTLE_SECONDS, dashboard))
            if run_has_ended(events):
                raise SystemExit(f"the run reached its {args.long_steps} steps before the windows were measured: "
                                 f"raise --long-steps")
        finally:
            try:
                os.kill(trainer, signal.SIGTERM)  # it saves a checkpoint and ends, as on `q`, `s`
            except ProcessLookupError:
                pass  # it has ended already
            run_ended(events, 120)
        terminal.wait_for(r"FINISHED|FAILED", "the dashboard to show the end", 60, poll=0.5)
        terminal.quit_ended_run()
    steps = [e for e in read_events(events) if e["type"] == "step"]
    for measured in running + stopped:
        inside = [e for e in steps if measured["start"] <= e["time"] <= measured["end"]]
        measured["steps"] = len(inside)
        measured["step_time"], measured["wall"] = figures_of(inside)
    return running, stopped


def paired_ratios(running: list[dict], stopped: list[dict], figure: str) -> list[float]:
    """Each window with the dashboard running against the mean of the stopped windows on either side (the first
    and the last have one): the machine's slow drift, which moves both alike, cancels."""
    ratios = []
    for index, measured in enumerate(running):
        neighbours = [stopped[i][figure] for i in (index - 1, index) if 0 <= i < len(stopped)]
        ratios.append(measured[figure] / statistics.mean(neighbours))
    return ratios


def end_to_end(args) -> None:
    """`--runs` runs of each, the order alternating; prints the medians' ratios."""
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
                    cpu, features_on_at = measured
                    dashboard_cpu.append(cpu)
                    extra = f", dashboard CPU {cpu * 100:.1f}% of one core (features on at step {features_on_at})"
                print(f"run {run + 1}/{args.runs} {kind:<9}: median step_time_s {step * 1000:.1f} ms, wall "
                      f"{wall * 1000:.1f} ms/step{extra} ({time.perf_counter() - started:.0f} s)", flush=True)
    medians = {kind: [statistics.median(f[i] for f in runs) for i in (0, 1)] for kind, runs in figures.items()}
    spread = [wall for _, wall in figures["headless"]]
    cores = os.cpu_count() or 1
    print(f"end to end: {args.precision}, batch {args.batch_size}, {args.steps} steps, first {args.warmup} excluded, "
          f"median of {args.runs} runs each")
    print(f"headless : step_time_s {medians['headless'][0] * 1000:.1f} ms, wall {medians['headless'][1] * 1000:.1f} "
          f"ms/step (its runs from {min(spread) * 1000:.1f} to {max(spread) * 1000:.1f})")
    print(f"dashboard: step_time_s {medians['dashboard'][0] * 1000:.1f} ms, wall "
          f"{medians['dashboard'][1] * 1000:.1f} ms/step")
    print(f"RESULT end to end: step time with the dashboard / headless = "
          f"{medians['dashboard'][0] / medians['headless'][0]:.3f}; wall time per step "
          f"{medians['dashboard'][1] / medians['headless'][1]:.3f}; the dashboard's own CPU "
          f"{statistics.median(dashboard_cpu) / cores:.1%} of the machine ({cores} cores)\n", flush=True)


def interleaved(args) -> None:
    """One run, its dashboard running and stopped in turns; prints each window and the paired ratios."""
    with tempfile.TemporaryDirectory(prefix="loratui-bench-dashboard-") as tmp:
        running, stopped = interleaved_windows(Path(tmp), args)
    walls = paired_ratios(running, stopped, "wall")
    steps = paired_ratios(running, stopped, "step_time")
    for index, measured in enumerate(running):
        print(f"window {index + 1}, dashboard running: {measured['steps']} steps, wall {measured['wall'] * 1000:.2f} "
              f"ms/step, its CPU {measured['cpu'] * 100:.1f}% of one core; against the stopped windows beside it: "
              f"wall {walls[index]:.3f}, step time {steps[index]:.3f}")
        if index < len(stopped):
            print(f"window {index + 1}, dashboard stopped: {stopped[index]['steps']} steps, wall "
                  f"{stopped[index]['wall'] * 1000:.2f} ms/step")
    cores = os.cpu_count() or 1
    error = statistics.stdev(walls) / len(walls) ** 0.5
    print(f"interleaved: {args.precision}, batch {args.batch_size}, one run of `loratui run` under its dashboard, "
          f"{len(running)} windows of {args.window:.0f} s with the dashboard running, {len(stopped)} between them "
          f"with it stopped")
    print(f"RESULT dashboard cost: wall time per step with the dashboard / without = {statistics.mean(walls):.3f} "
          f"(mean of {len(walls)} pairs, standard error {error:.3f}; median {statistics.median(walls):.3f}; "
          f"target <= 1.03); step time {statistics.mean(steps):.3f} (median {statistics.median(steps):.3f}; "
          f"target <= 1.05); the dashboard's own CPU "
          f"{statistics.median(m['cpu'] for m in running) / cores:.1%} of the machine ({cores} cores)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5,
                        help="end to end: runs of each, alternating which goes first (0: skip)")
    parser.add_argument("--steps", type=int, default=550, help="end to end: steps per run")
    parser.add_argument("--warmup", type=int, default=150,
                        help="first steps of each run left out (the dashboard's features are on before them)")
    parser.add_argument("--pairs", type=int, default=16,
                        help="interleaved: windows with the dashboard stopped (0: skip)")
    parser.add_argument("--window", type=float, default=8.0, help="interleaved: seconds per window")
    parser.add_argument("--long-steps", type=int, default=32768,
                        help="interleaved: the run's max_steps (it must not end before the windows do)")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    print(f"machine: {describe_machine()}", flush=True)
    if args.runs:
        end_to_end(args)
    if args.pairs:
        interleaved(args)
    print(f"machine at the end: {describe_machine()}")


if __name__ == "__main__":
    main()
