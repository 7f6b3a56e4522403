"""Event pipeline: step events through the bus into events.jsonl, and `loratui watch` on a million steps.

Two targets (issue 7, target 4):

1. Publish rate: the trainer's own `publish_step` -> `EventBus.publish` ->
   `JsonlSink` (one strict-JSON line per event, flushed per line) into a fresh
   events.jsonl, `--events` step events a run, `--runs` runs after one warm-up
   run; the figure is the median run's events per second (target >= 100,000).
2. `loratui watch` on a 1,000,000-step events.jsonl (about 350 MB, written
   through the same path, with the health and checkpoint events a run at the
   default intervals adds): the real command in a tmux pane, timed from its
   start until the screen shows the whole history (the last step in the header,
   no "reading the event log", the charts drawn from every block), and its peak
   resident memory (its VmHWM, plus what its helper processes hold, sampled while
   it reads); `--watch-runs` runs after one warm-up run (target: within 3 s,
   under 300 MB).

    python bench/bench_event_pipeline.py [--events 200000] [--runs 5] [--steps 1000000] [--watch-runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import describe_machine  # noqa: E402
from bench.terminal import TmuxTerminal  # noqa: E402
from loratui.config import load_config  # noqa: E402
from loratui.data.dataset import BatchStream  # noqa: E402
from loratui.events.bus import EventBus  # noqa: E402
from loratui.events.jsonl import JsonlSink  # noqa: E402
from loratui.run_dir import RunDir  # noqa: E402
from loratui.train.trainer import StepFigures, Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_RUN = ROOT / "tests" / "data" / "ui_healthy_fp16" / "events.jsonl"  # a recorded fp16 run
PROBE_EVERY = CHECKPOINT_EVERY = 50  # the defaults: a health and a checkpoint event every 50 steps


class StepPublisher:
    """A real Trainer's `publish_step` on a bus, without a model: the exact event a real step publishes.

    The trainer is constructed as `loratui run` constructs it (fp16, so the loss
    scale is a number); of what its setup would add, publishing needs only the
    device and the data stream's position.
    """

    def __init__(self, bus: EventBus, work: Path):
        import torch

        config_file = work / "publisher.toml"
        config_file.write_text("")
        run_dir = RunDir(work / "publisher")
        run_dir.create()
        self.trainer = Trainer(load_config(config_file, ['train.precision="fp16"']), run_dir, bus)
        self.trainer.device = torch.device("cpu")
        self.trainer.stream = BatchStream([], 1, seed=0, shuffle=False, pad_id=0)
        # Figures that vary like a real run's (distinct floats, so no encoding is cached).
        self.figures = [StepFigures(loss=2.5 - i * 1e-4 + (i % 7) * 0.013, grad_norm=0.4 + (i % 13) * 0.071,
                                    scale=65536.0, skipped=False, nonfinite_grads=0, tokens=363 + i % 40,
                                    lr=2e-3 * (1 - i / 1024), seconds=0.0123 + (i % 11) * 1e-4)
                        for i in range(1024)]

    def publish(self, step: int) -> None:
        self.trainer.step = step
        self.trainer.publish_step(self.figures[step % len(self.figures)])


def publish_rate(work: Path, events: int) -> float:
    """Step events per second from `publish_step` into a fresh events.jsonl."""
    path = work / "events.jsonl"
    path.unlink(missing_ok=True)
    bus = EventBus()
    bus.add_sink(JsonlSink(path))
    publisher = StepPublisher(bus, work)
    started = time.perf_counter()
    for step in range(1, events + 1):
        publisher.publish(step)
    elapsed = time.perf_counter() - started
    bus.close()
    with open(path, "rb") as file:
        lines = sum(1 for _ in file)
    if lines != events:
        raise SystemExit(f"expected {events} lines in {path}, found {lines}")
    return events / elapsed


def write_long_run(run_dir: Path, steps: int) -> float:
    """A finished run of `steps` steps, written as a real run writes it; returns the seconds it took."""
    template = [json.loads(line) for line in TEMPLATE_RUN.read_text().splitlines()]
    first_of = {}
    for event in template:
        first_of.setdefault(event["type"], event)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "control.jsonl").touch()
    bus = EventBus()
    bus.add_sink(JsonlSink(run_dir / "events.jsonl"))
    publisher = StepPublisher(bus, run_dir.parent)
    started = time.perf_counter()
    for event in template:  # the setup: phases, data, run_started (sized for the long run)
        if event["type"] == "step":
            break
        fields = {k: v for k, v in event.items() if k not in ("type", "time", "attempt")}
        if event["type"] == "run_started":
            fields["max_steps"] = steps
            fields["config"]["train"]["max_steps"] = steps
            fields["config"]["run"]["name"] = run_dir.name
            fields["run_dir"] = str(run_dir)
        bus.publish(event["type"], **fields)
    health = {k: v for k, v in first_of["health"].items() if k not in ("type", "time", "attempt")}
    for step in range(1, steps + 1):
        publisher.publish(step)
        if step % PROBE_EVERY == 0:
            bus.publish("health", **{**health, "step": step})
        if step % CHECKPOINT_EVERY == 0 and step < steps:
            bus.publish("checkpoint", step=step, path=str(run_dir / "checkpoints" / f"step-{step:06d}"),
                        reason="interval", loss=2.3, removed=[f"step-{step - 3 * CHECKPOINT_EVERY:06d}"])
    bus.publish("checkpoint", step=steps, path=str(run_dir / "checkpoints" / f"step-{steps:06d}"), reason="end",
                loss=2.3, removed=[])
    bus.publish("run_finished", step=steps, reason="completed", adapter=str(run_dir / "adapter"))
    elapsed = time.perf_counter() - started
    bus.close()
    return elapsed


def watch_first_full_frame(run_dir: Path, steps: int, timeout: float) -> tuple[float, float, float]:
    """(seconds to the header, seconds to the whole history, peak resident MB) for one `loratui watch`.

    The resident memory is sampled with every look at the screen: the dashboard's own
    plus that of its helper processes (parsing a long log), added up.
    """
    last_step = f"step {steps}/{steps}"
    peak, pid = [0.0], []

    def sampled(test):
        def check(screen: str) -> bool:
            if not pid and (found := terminal.command_pid()):
                pid.append(found)
            peak[0] = max(peak[0], resident_mb(pid[0] if pid else None))
            return test(screen)
        return check

    with TmuxTerminal(run_dir.parent) as terminal:
        started = time.perf_counter()
        terminal.start([sys.executable, "-m", "loratui", "watch", str(run_dir)])
        terminal.wait_until(sampled(lambda screen: last_step in screen), "the header with the last step", timeout)
        header = time.perf_counter() - started
        terminal.wait_until(sampled(lambda screen: last_step in screen and "reading the event log" not in screen),
                            "the whole history", timeout)
        full = time.perf_counter() - started
        peak[0] = max(peak[0], resident_mb(pid[0] if pid else None, "VmHWM"))
        terminal.quit_ended_run()
    return header, full, peak[0]


def resident_mb(pid: int | None, field: str = "VmRSS") -> float:
    """Resident MB of a process (`field`: VmRSS now, VmHWM its peak) plus VmRSS of its children."""
    if pid is None:
        return 0.0
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:  # it has just ended
        return 0.0
    own = next((int(line.split()[1]) / 1024 for line in status if line.startswith(f"{field}:")), 0.0)
    return own + sum(resident_mb(int(child)) for child in children)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="step events per publish-rate run")
    parser.add_argument("--runs", type=int, default=5, help="publish-rate runs after the warm-up run")
    parser.add_argument("--steps", type=int, default=1_000_000, help="steps in the long log for `loratui watch`")
    parser.add_argument("--watch-runs", type=int, default=3, help="`loratui watch` runs after the warm-up run")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for a watch frame")
    args = parser.parse_args()
    if args.runs < 1 or args.watch_runs < 1:
        parser.error("--runs and --watch-runs must be at least 1 (a warm-up run comes on top)")
    print(f"machine: {describe_machine()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="loratui-bench-events-") as tmp:
        work = Path(tmp)
        rates = []
        for run in range(args.runs + 1):
            rate = publish_rate(work, args.events)
            print(f"publish run {run}{' (warm-up)' if run == 0 else ''}: {rate:,.0f} step events/s", flush=True)
            if run:
                rates.append(rate)
        run_dir = work / "long-run"
        seconds = write_long_run(run_dir, args.steps)
        size_mb = (run_dir / "events.jsonl").stat().st_size / 1e6
        print(f"long log: {args.steps:,} steps, {size_mb:.0f} MB, written in {seconds:.1f} s "
              f"({args.steps / seconds:,.0f} step events/s with its health and checkpoint events)", flush=True)
        headers, fulls, peaks = [], [], []
        for run in range(args.watch_runs + 1):
            header, full, peak = watch_first_full_frame(run_dir, args.steps, args.timeout)
            print(f"watch run {run}{' (warm-up)' if run == 0 else ''}: header {header:.2f} s, whole history "
                  f"{full:.2f} s, peak resident {peak:.0f} MB (with its helpers)", flush=True)
            if run:
                headers.append(header), fulls.append(full), peaks.append(peak)
    rate = statistics.median(rates)
    full, peak = statistics.median(fulls), max(peaks)
    print(f"\nmachine at the end: {describe_machine()}")
    print(f"RESULT publish rate: {rate:,.0f} step events/s (target >= 100,000; median of {args.runs} runs of "
          f"{args.events:,})")
    print(f"RESULT watch {args.steps:,}-step log ({size_mb:.0f} MB): whole history on screen in {full:.2f} s "
          f"(header at {statistics.median(headers):.2f} s; target <= 3 s), peak resident {peak:.0f} MB "
          f"(target < 300 MB; the dashboard and its helper processes together); median of {args.watch_runs} runs, peak of peaks")


if __name__ == "__main__":
    main()
