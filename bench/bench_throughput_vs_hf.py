"""Throughput against the anchor: loratui's tokens/s over transformers.Trainer + peft's, side by side.

Issue 7, target 2. The same model (builtin:tiny-llama), the same rows of
builtin:tiny-chat tokenized by loratui's loader and fed in the same batches
(bench/hf_trainer_run.py reads them off loratui's BatchStream), the same
precision, batch size, LoRA settings, learning rate, schedule, warmup and
clipping. loratui runs as users run it: `loratui run --headless` with the
health monitor at its defaults and every event written; the HF run uses the
Trainer's defaults otherwise (fused AdamW, no progress bar). Checkpoints are
off in both. Each run is a fresh process; the order alternates (loratui
first, then HF first, ...). A run's tokens/s counts the tokens of the steps
after the first `--warmup` over the wall time they took (from the end of the
last warm-up step to the end of the last step); the figure is the median
loratui run over the median HF run (target >= 1.0).

fp16 is not compared: on CPU the Trainer's accelerate ignores fp16 (no
autocast, no loss scaler: it trains in the model's dtype), so no HF run
trains in fp16 mixed precision to compare with; the script checks and says so.

    python bench/bench_throughput_vs_hf.py [--runs 3] [--precisions fp32,bf16] [--steps fp32=80,bf16=40] [--warmup 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_startup import loratui_command  # noqa: E402
from bench.machine import describe_machine  # noqa: E402
from loratui.events.jsonl import read_events  # noqa: E402

HF_RUN = Path(__file__).resolve().parent / "hf_trainer_run.py"


def loratui_run(work: Path, name: str, precision: str, steps: int, args) -> tuple[list[float], list[int]]:
    """(wall clock at each step's end, tokens of each step) from a headless loratui run."""
    config = work / "config.toml"
    config.write_text("")  # every key at its default, as bench/hf_trainer_run.py reads them
    overrides = [f'run.output_dir="{work}"', f'run.name="{name}"', f'train.precision="{precision}"',
                 f"train.max_steps={steps}", f"train.batch_size={args.batch_size}", "checkpoint.every_steps=1000000"]
    subprocess.run([*loratui_command(), "run", str(config), "--headless",
                    *[arg for item in overrides for arg in ("--set", item)]],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)
    steps_done = [e for e in read_events(work / name / "events.jsonl") if e["type"] == "step"]
    return [e["time"] for e in steps_done], [e["tokens"] for e in steps_done]


def hf_run(work: Path, name: str, precision: str, steps: int, args) -> tuple[list[float], list[int]]:
    out = work / f"{name}.json"
    subprocess.run([sys.executable, str(HF_RUN), "--precision", precision, "--steps", str(steps),
                    "--batch-size", str(args.batch_size), "--out", str(out)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)
    result = json.loads(out.read_text())
    return result["step_ends"], result["tokens"]


def tokens_per_second(ends: list[float], tokens: list[int], warmup: int) -> float:
    """Tokens of the steps after the warm-up over the time from the warm-up's end to the last step's end."""
    return sum(tokens[warmup:]) / (ends[-1] - ends[warmup - 1])


def hf_fp16_on_cpu() -> str:
    """What the Trainer's accelerate does with fp16 here, in its own words (mixed precision, scaler)."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True, mixed_precision="fp16")
    return (f"accelerate(cpu, mixed_precision=fp16): native_amp={accelerator.native_amp}, "
            f"scaler={accelerator.scaler}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each trainer per precision")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--steps", default="fp32=80,bf16=40", help="steps per run, by precision")
    parser.add_argument("--warmup", type=int, default=10, help="first steps of each run left out")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    steps_of = {k: int(v) for k, v in (item.split("=") for item in args.steps.split(","))}
    print(f"machine: {describe_machine()}", flush=True)
    runners = {"loratui": loratui_run, "hf": hf_run}
    results = {}
    with tempfile.TemporaryDirectory(prefix="loratui-bench-hf-") as tmp:
        work = Path(tmp)
        for precision in args.precisions.split(","):
            rates: dict[str, list[float]] = {"loratui": [], "hf": []}
            for run in range(args.runs):
                order = ("loratui", "hf") if run % 2 == 0 else ("hf", "loratui")
                tokens_seen = {}
                for kind in order:
                    started = time.perf_counter()
                    ends, tokens = runners[kind](work, f"{precision}-{kind}-{run}", precision, steps_of[precision], args)
                    tokens_seen[kind] = tokens
                    rates[kind].append(tokens_per_second(ends, tokens, args.warmup))
                    print(f"{precision} run {run + 1}/{args.runs} {kind:<7}: {rates[kind][-1]:,.0f} tokens/s "
                          f"({time.perf_counter() - started:.0f} s)", flush=True)
                if tokens_seen["loratui"] != tokens_seen["hf"]:
                    raise SystemExit(f"{precision}: the two trainers saw different batches (tokens per step differ)")
            results[precision] = (statistics.median(rates["loratui"]), statistics.median(rates["hf"]))
    print(f"\nmachine at the end: {describe_machine()}")
    print(f"batch {args.batch_size}, steps {args.steps}, first {args.warmup} excluded, median of {args.runs} runs")
    for precision, (ours, theirs) in results.items():
        print(f"RESULT throughput vs HF Trainer + peft, {precision}: {ours / theirs:.3f} "
              f"(loratui {ours:,.0f} tokens/s, HF {theirs:,.0f} tokens/s; target >= 1.0)")
    print(f"RESULT throughput vs HF Trainer + peft, fp16: not comparable on CPU ({hf_fp16_on_cpu()}: the "
          f"Trainer trains without fp16 autocast or loss scaling here)")


if __name__ == "__main__":
    main()
