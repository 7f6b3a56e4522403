"""Probe overhead: the training loop with the health monitor at its defaults, against the same loop without it.

For fp32, bf16 and fp16 in turn, the real trainer runs the built-in model on the
bundled data `--runs` times with no monitor and `--runs` times with the monitor
`loratui run` builds (every default probe and detector), interleaved so that a
busy machine slows both alike. A run's step time is its mean time per step
(between consecutive `step` events, so it includes the per-step detectors and
the probe steps) over the steps after `--warmup`, as wall time and as this
process's CPU time (which other processes on a shared machine disturb less);
the ratio is the median monitored run over the median plain run. On a busy
machine those ratios carry its noise, so the table also shows the probes' own
share of the monitored runs' time (their `health` events' probe_seconds over
the wall time of the same steps), measured inside the run. Prints one table;
asserts nothing.

    python bench/bench_probe_overhead.py [--steps 310] [--warmup 10] [--runs 3] [--batch-size 8] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loratui.config import load_config, render_toml  # noqa: E402
from loratui.config.schema import MonitorSection  # noqa: E402
from loratui.events.bus import CallbackSink, EventBus  # noqa: E402
from loratui.events.jsonl import JsonlSink  # noqa: E402
from loratui.monitor import build_monitor  # noqa: E402
from loratui.run_dir import prepare_run_dir  # noqa: E402
from loratui.train.trainer import Trainer  # noqa: E402

PRECISIONS = ("fp32", "bf16", "fp16")


def mean_step_seconds(work: Path, precision: str, monitored: bool, args, run: int) -> tuple[float, float, float]:
    """(wall, CPU) seconds per step, averaged over the steps after the warm-up, and the probes' share of it."""
    config_file = work / "config.toml"
    config_file.write_text("")
    name = f"{precision}-{'monitor' if monitored else 'plain'}-{run}"
    config = load_config(config_file, [f"train.precision={precision}", f"train.max_steps={args.steps}",
                                       f"train.batch_size={args.batch_size}", "checkpoint.every_steps=100000",
                                       f'run.output_dir="{work}"', f'run.name="{name}"'])
    run_dir = prepare_run_dir(config, resume=False, config_text=render_toml(config))
    clocks, probe_seconds = [], []

    def note(event: dict) -> None:
        if event["type"] == "step":
            clocks.append((time.perf_counter(), time.process_time()))
        elif event["type"] == "health" and event["step"] > args.warmup + 1:
            probe_seconds.append(event["probe_seconds"])

    bus = EventBus()
    bus.add_sink(JsonlSink(run_dir.events))
    bus.add_sink(CallbackSink(note))
    trainer = Trainer(config, run_dir, bus, monitor=build_monitor(config, bus) if monitored else None)
    try:
        if trainer.run() != 0:
            raise SystemExit(f"{name}: training failed; see {run_dir.events}")
    finally:
        bus.close()
    (wall_start, cpu_start), (wall_end, cpu_end) = clocks[args.warmup], clocks[-1]
    steps = len(clocks) - 1 - args.warmup
    return (wall_end - wall_start) / steps, (cpu_end - cpu_start) / steps, sum(probe_seconds) / (wall_end - wall_start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=310)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default); 1 steadies the figures on a shared machine")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="loratui-bench-") as tmp:
        for precision in args.precisions.split(","):
            plain, monitored = [], []
            for run in range(args.runs):
                started = time.perf_counter()
                plain.append(mean_step_seconds(Path(tmp), precision, False, args, run))
                monitored.append(mean_step_seconds(Path(tmp), precision, True, args, run))
                print(f"{precision} run {run + 1}/{args.runs}: wall ms/step plain {plain[-1][0] * 1000:.1f} "
                      f"monitored {monitored[-1][0] * 1000:.1f}; CPU ms/step plain {plain[-1][1] * 1000:.1f} "
                      f"monitored {monitored[-1][1] * 1000:.1f} ({time.perf_counter() - started:.0f} s)", flush=True)
            rows.append((precision, *(statistics.median(times[clock] for times in plain) for clock in (0, 1)),
                         *(statistics.median(times[clock] for times in monitored) for clock in (0, 1, 2))))
    import torch

    print(f"\nprobe overhead at defaults (probe_every {MonitorSection().probe_every}), batch {args.batch_size}, "
          f"{args.steps} steps, first {args.warmup} excluded, median of {args.runs} runs, "
          f"{torch.get_num_threads()} torch thread(s)")
    print(f"{'precision':<10}{'wall ms/step plain':>20}{'monitored':>11}{'ratio':>8}"
          f"{'CPU ms/step plain':>20}{'monitored':>11}{'ratio':>8}{'probe share':>13}")
    for precision, wall_plain, cpu_plain, wall_monitored, cpu_monitored, probe_share in rows:
        print(f"{precision:<10}{wall_plain * 1000:>20.1f}{wall_monitored * 1000:>11.1f}"
              f"{wall_monitored / wall_plain:>8.3f}{cpu_plain * 1000:>20.1f}{cpu_monitored * 1000:>11.1f}"
              f"{cpu_monitored / cpu_plain:>8.3f}{probe_share:>12.2%}")


if __name__ == "__main__":
    main()
