"""Every benchmark of issue 7, one after another, then their results in one list (`make bench`).

Each script runs in its own process with its own defaults and prints its
figures on lines that start with RESULT; this collects those lines, with the
machine and its load before and after, so the list can go into docs/benchmarks.md
as it is. Arguments name the scripts to run (default: all of them). On a
shared machine, `--wait-for-load 1.5` holds each script back until the
one-minute load average is below 1.5 (other work skews every figure here).

    python bench/run_all.py [--wait-for-load LOAD] [event_pipeline startup dashboard_cost throughput_vs_hf probe_overhead]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import describe_machine  # noqa: E402

BENCH = Path(__file__).resolve().parent
# Quickest first, so a broken setup shows early; the monitor's own benchmark (target 1) prints a
# table, not RESULT lines, and its table is kept whole.
SCRIPTS = ("event_pipeline", "startup", "dashboard_cost", "throughput_vs_hf", "probe_overhead")


def wait_for_load(limit: float) -> None:
    while os.getloadavg()[0] >= limit:
        print(f"waiting for the load to fall below {limit} ({describe_machine()})", flush=True)
        time.sleep(60)


def run_script(name: str) -> list[str]:
    """Run bench/bench_<name>.py, echoing its output; returns the lines to report."""
    script = BENCH / f"bench_{name}.py"
    print(f"\n=== {script.name} ({describe_machine()})", flush=True)
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    lines = []
    for line in process.stdout:
        print(line, end="", flush=True)
        lines.append(line.rstrip("\n"))
    code = process.wait()
    took = f"{script.name}: {time.perf_counter() - started:.0f} s"
    if code:
        return [f"FAILED {took}, exit {code}"]
    if name == "probe_overhead":
        table = lines[next(i for i, line in enumerate(lines) if line.startswith("probe overhead")):]
        return [f"RESULT {line}" for line in table]
    return [line for line in lines if line.startswith("RESULT")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scripts", nargs="*", metavar="SCRIPT", help=f"any of {', '.join(SCRIPTS)} (default: all)")
    parser.add_argument("--wait-for-load", type=float, default=None, metavar="LOAD",
                        help="before each script, wait until the one-minute load average is below LOAD")
    args = parser.parse_args()
    unknown = sorted(set(args.scripts) - set(SCRIPTS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(SCRIPTS)}")
    before = describe_machine()
    report = []
    for name in args.scripts or SCRIPTS:
        if args.wait_for_load is not None:
            wait_for_load(args.wait_for_load)
        report += run_script(name)
    print(f"\n=== results\nmachine before: {before}\nmachine after:  {describe_machine()}")
    print("\n".join(report))
    return 1 if any(line.startswith("FAILED") for line in report) else 0


if __name__ == "__main__":
    sys.exit(main())
