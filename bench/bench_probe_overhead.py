"""Probe overhead: the training loop with the health monitor at its defaults, against the same loop without it.

For fp32, bf16 and fp16 in turn, the real trainer runs the built-in model on the
bundled data `--runs` times with no monitor and `--runs` times with the monitor
`loratui run` builds (every default probe and detector), interleaved so that a
busy machine slows both alike. A run's step time is its mean wall time per step
(between consecutive `step` events, so it includes the per-step detectors and
the probe steps) over the steps after `--warmup`; the ratio is the median
monitored run over the median plain run. Prints one table; asserts nothing.

    python bench/bench_probe_overhead.py [--steps 160] [--warmup 10] [--runs 3] [--batch-size 8]
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
from loratui.events.bus import EventBus  # noqa: E402
from loratui.events.jsonl import JsonlSink, read_events  # noqa: E402
from loratui.monitor import build_monitor  # noqa: E402
from loratui.run_dir import prepare_run_dir  # noqa: E402
from loratui.train.trainer import Trainer  # noqa: E402

PRECISIONS = ("fp32", "bf16", "fp16")


def mean_step_seconds(work: Path, precision: str, monitored: bool, args, run: int) -> float:
    config_file = work / "config.toml"
    config_file.write_text("")
    name = f"{precision}-{'monitor' if monitored else 'plain'}-{run}"
    config = load_config(config_file, [f"train.precision={precision}", f"train.max_steps={args.steps}",
                                       f"train.batch_size={args.batch_size}", "checkpoint.every_steps=100000",
                                       f'run.output_dir="{work}"', f'run.name="{name}"'])
    run_dir = prepare_run_dir(config, resume=False, config_text=render_toml(config))
    bus = EventBus()
    bus.add_sink(JsonlSink(run_dir.events))
    trainer = Trainer(config, run_dir, bus, monitor=build_monitor(config, bus) if monitored else None)
    try:
        if trainer.run() != 0:
            raise SystemExit(f"{name}: training failed; see {run_dir.events}")
    finally:
        bus.close()
    times = [e["time"] for e in read_events(run_dir.events) if e["type"] == "step"]
    measured = times[args.warmup:]
    return (measured[-1] - measured[0]) / (len(measured) - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="loratui-bench-") as tmp:
        for precision in args.precisions.split(","):
            plain, monitored = [], []
            for run in range(args.runs):
                started = time.perf_counter()
                plain.append(mean_step_seconds(Path(tmp), precision, False, args, run))
                monitored.append(mean_step_seconds(Path(tmp), precision, True, args, run))
                print(f"{precision} run {run + 1}/{args.runs}: plain {plain[-1] * 1000:.1f} ms/step, monitored "
                      f"{monitored[-1] * 1000:.1f} ms/step ({time.perf_counter() - started:.0f} s)", flush=True)
            rows.append((precision, statistics.median(plain), statistics.median(monitored)))
    print(f"\nprobe overhead at defaults (probe_every {MonitorSection().probe_every}), batch {args.batch_size}, "
          f"{args.steps} steps, first {args.warmup} excluded, median of {args.runs} runs")
    print(f"{'precision':<10}{'plain ms/step':>15}{'monitored ms/step':>20}{'ratio':>8}")
    for precision, plain, monitored in rows:
        print(f"{precision:<10}{plain * 1000:>15.1f}{monitored * 1000:>20.1f}{monitored / plain:>8.3f}")


if __name__ == "__main__":
    main()
