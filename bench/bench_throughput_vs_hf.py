"""Throughput against the anchor: loratui's real tokens/s over transformers.Trainer + peft's, side by side.

Issues 7 and 18. Three trainers on the same model (builtin:tiny-llama), the
same rows tokenized by loratui's loader and the same examples in every
micro-batch (bench/hf_trainer_run.py reads them off loratui's BatchStream),
the same precision, batch size, LoRA settings, learning rate, schedule, warmup
and clipping:
- loratui as users run it: `loratui run --headless`, every key at its default
  (data.packing on: each micro-batch's examples packed into rows, no padding
  computed), the health monitor at its defaults and every event written;
- the Trainer with default padding (each batch padded to its longest row);
- the Trainer with its own padding-free collator, DataCollatorWithFlattening.
Checkpoints are off in all. Two data sets: the bundled chat rows
(builtin:tiny-chat, 31 to 71 tokens) and builtin:tiny-chat-longtail (31 to 255
tokens, median 40: the long tail of real instruction data). Each run is a fresh
process; the order rotates from run to run. A run's rate counts the real
(non-padding) tokens of the steps after the first `--warmup` over the wall
time they took (from the end of the last warm-up step to the end of the last
step); a figure is the median loratui run over the median run of the other
side. The padding share of a side is the share of the token positions it
computed that were padding. Targets (issue 18): over default padding >= 1.25
on the long tail and >= 1.15 on chat; over the flattening collator >= 1.0.

fp16 is not compared: on CPU the Trainer's accelerate ignores fp16 (no
autocast, no loss scaler: it trains in the model's dtype), so no HF run
trains in fp16 mixed precision to compare with; the script checks and says so.

    python bench/bench_throughput_vs_hf.py [--runs 3] [--precisions fp32,bf16] [--steps fp32=60,bf16=30]
        [--warmup 10] [--data builtin:tiny-chat,builtin:tiny-chat-longtail] [--quick]

`--quick` (one run of a few steps each) is a smoke test of the script, not a measurement.

A second figure isolates packing from everything else a trainer does per step:
two of loratui's own trainers in this process, data.packing on and off (no
length grouping: the same examples in every micro-batch), their train steps
interleaved in rounds so that both see the same machine load; real tokens/s of
the packed one over the padded one.
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


SIDES = ("loratui", "hf-padding", "hf-flattening")


def loratui_run(work: Path, name: str, data: str, precision: str, steps: int, args) -> tuple[list[float], list[int]]:
    """(wall clock at each step's end, real tokens of each step) from a headless loratui run."""
    config = work / "config.toml"
    config.write_text("")  # every key at its default, as bench/hf_trainer_run.py reads them
    overrides = [f'run.output_dir="{work}"', f'run.name="{name}"', f'train.precision="{precision}"',
                 f"train.max_steps={steps}", f"train.batch_size={args.batch_size}", "checkpoint.every_steps=1000000",
                 f'data.path="{data}"']
    subprocess.run([*loratui_command(), "run", str(config), "--headless",
                    *[arg for item in overrides for arg in ("--set", item)]],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)
    steps_done = [e for e in read_events(work / name / "events.jsonl") if e["type"] == "step"]
    return [e["time"] for e in steps_done], [e["tokens"] for e in steps_done]


def hf_run(collator: str):
    def run(work: Path, name: str, data: str, precision: str, steps: int, args) -> tuple[list[float], list[int]]:
        out = work / f"{name}.json"
        subprocess.run([sys.executable, str(HF_RUN), "--precision", precision, "--steps", str(steps),
                        "--batch-size", str(args.batch_size), "--data", data, "--collator", collator,
                        "--out", str(out)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)
        result = json.loads(out.read_text())
        run.positions[(data, precision)] = result["positions"]
        return result["step_ends"], result["tokens"]

    run.positions = {}
    return run


def loratui_positions(data: str, precision: str, steps: int, batch_size: int) -> list[int]:
    """The token positions loratui computes in each of its first steps, padding included.

    Rebuilt here as the trainer builds them: the same stream of examples, packed by
    loratui's Packer for the model's attention (data/packing.setup_packing).
    """
    from types import SimpleNamespace

    from transformers import AutoConfig

    from loratui.config import load_config
    from loratui.data.dataset import BatchStream, load_examples
    from loratui.data.packing import setup_packing
    from loratui.model.loading import load_tokenizer, resolve_model_path

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "config.toml"
        empty.write_text("")
        config = load_config(empty, [f"train.batch_size={batch_size}", f'data.path="{data}"'])
    model_path = resolve_model_path(config.model.name_or_path)
    tokenizer = load_tokenizer(model_path, trust_remote_code=False)
    examples, _ = load_examples(data, config.data.format, tokenizer, max_length=config.data.max_length,
                                on_too_long=config.data.on_too_long, on_bad_row=config.data.on_bad_row)
    stream = BatchStream(examples, batch_size, seed=config.train.seed, shuffle=config.data.shuffle,
                         pad_id=tokenizer.pad_token_id)
    model_config = AutoConfig.from_pretrained(model_path)
    model_config._attn_implementation = "sdpa"  # what from_pretrained picks for Llama on torch >= 2.1
    # The trainer's model, as far as packing reads it: its attention, its weights' dtype, its device.
    import torch

    from loratui.precision_facts import DTYPES

    model = SimpleNamespace(config=model_config, dtype=getattr(torch, DTYPES[precision]), device=torch.device("cpu"))
    setup_packing(stream, model, config.data)
    return [stream.next_batch()["input_ids"].numel() for _ in range(steps)]


def tokens_per_second(ends: list[float], tokens: list[int], warmup: int) -> float:
    """Tokens of the steps after the warm-up over the time from the warm-up's end to the last step's end."""
    return sum(tokens[warmup:]) / (ends[-1] - ends[warmup - 1])


def hf_fp16_on_cpu() -> str:
    """What the Trainer's accelerate does with fp16 here, in its own words (mixed precision, scaler).

    Asked in a fresh process: accelerate's state is a process-wide singleton, set already by the trainers above.
    """
    probe = ("from accelerate import Accelerator; a = Accelerator(cpu=True, mixed_precision='fp16'); "
             "print(f'native_amp={a.native_amp}, scaler={a.scaler}')")
    answer = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    return f"accelerate(cpu, mixed_precision=fp16): {answer}"


def packing_gain(data: str, precision: str, steps: int, batch_size: int, rounds: int = 4) -> float:
    """Real tokens/s of loratui's train step with data.packing on over off, interleaved (first round left out)."""
    from loratui.config import load_config, render_toml
    from loratui.events.bus import EventBus
    from loratui.run_dir import prepare_run_dir
    from loratui.train.trainer import Trainer

    trainers, seconds, tokens = {}, {True: 0.0, False: 0.0}, {True: 0, False: 0}
    with tempfile.TemporaryDirectory(prefix="loratui-bench-packing-") as tmp:
        for packing in (True, False):
            empty = Path(tmp) / "config.toml"
            empty.write_text("")
            config = load_config(empty, [f'run.output_dir="{tmp}"', f'run.name="packing-{packing}"',
                                         f'data.path="{data}"', f"data.packing={str(packing).lower()}",
                                         "data.group_by_length=false", f'train.precision="{precision}"',
                                         f"train.batch_size={batch_size}", "train.max_steps=100000"])
            run_dir = prepare_run_dir(config, resume=False, config_text=render_toml(config))
            trainers[packing] = Trainer(config, run_dir, EventBus())
            trainers[packing].setup()
        try:
            for round_number in range(rounds):
                for packing, trainer in trainers.items():
                    for _ in range(steps):
                        started = time.perf_counter()
                        figures = trainer.train_step()
                        if round_number:
                            seconds[packing] += time.perf_counter() - started
                            tokens[packing] += figures.tokens
        finally:
            for trainer in trainers.values():
                trainer.cleanup()
    return (tokens[True] / seconds[True]) / (tokens[False] / seconds[False])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each trainer per data set and precision")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--steps", default="fp32=60,bf16=30", help="steps per run, by precision")
    parser.add_argument("--warmup", type=int, default=10, help="first steps of each run left out")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--data", default="builtin:tiny-chat,builtin:tiny-chat-longtail")
    parser.add_argument("--quick", action="store_true", help="one run of 8 steps (3 warm-up): a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.steps, args.warmup = 1, ",".join(f"{p}=8" for p in args.precisions.split(",")), 3
    steps_of = {k: int(v) for k, v in (item.split("=") for item in args.steps.split(","))}
    print(f"machine: {describe_machine()}", flush=True)
    hf_padding, hf_flattening = hf_run("padding"), hf_run("flattening")
    runners = {"loratui": loratui_run, "hf-padding": hf_padding, "hf-flattening": hf_flattening}
    results = {}
    with tempfile.TemporaryDirectory(prefix="loratui-bench-hf-") as tmp:
        work = Path(tmp)
        for data in args.data.split(","):
            for precision in args.precisions.split(","):
                steps = steps_of[precision]
                rates: dict[str, list[float]] = {side: [] for side in SIDES}
                for run in range(args.runs):
                    order = SIDES[run % 3:] + SIDES[:run % 3]
                    tokens_seen = {}
                    for side in order:
                        started = time.perf_counter()
                        name = f"{data.removeprefix('builtin:')}-{precision}-{side}-{run}"
                        ends, tokens = runners[side](work, name, data, precision, steps, args)
                        tokens_seen[side] = tokens
                        rates[side].append(tokens_per_second(ends, tokens, args.warmup))
                        print(f"{data} {precision} run {run + 1}/{args.runs} {side:<13}: {rates[side][-1]:,.0f} "
                              f"real tokens/s ({time.perf_counter() - started:.0f} s)", flush=True)
                    if len({tuple(t) for t in tokens_seen.values()}) != 1:
                        raise SystemExit(f"{data} {precision}: the trainers saw different batches")
                real = sum(tokens_seen["loratui"])
                positions = {"loratui": sum(loratui_positions(data, precision, steps, args.batch_size)),
                             "hf-padding": sum(hf_padding.positions[(data, precision)]),
                             "hf-flattening": sum(hf_flattening.positions[(data, precision)])}
                results[(data, precision)] = ({side: statistics.median(rates[side]) for side in SIDES},
                                              {side: 1 - real / positions[side] for side in SIDES})
    print(f"\nmachine at the end: {describe_machine()}")
    print(f"batch {args.batch_size}, steps {args.steps}, first {args.warmup} excluded, median of {args.runs} runs")
    targets = {"builtin:tiny-chat": 1.15, "builtin:tiny-chat-longtail": 1.25}
    for (data, precision), (rate, padding) in results.items():
        shares = ", ".join(f"{side} {padding[side]:.0%}" for side in SIDES)
        print(f"{data} {precision}: real tokens/s " + ", ".join(f"{side} {rate[side]:,.0f}" for side in SIDES)
              + f"; padding share {shares}")
        target = targets.get(data)
        print(f"RESULT {data} {precision}: loratui over Trainer+padding {rate['loratui'] / rate['hf-padding']:.3f}"
              + (f" (target >= {target})" if target else "")
              + f"; over Trainer+DataCollatorWithFlattening {rate['loratui'] / rate['hf-flattening']:.3f} "
                f"(target >= 1.0)")
    for data in args.data.split(","):
        for precision in args.precisions.split(","):
            gain = packing_gain(data, precision, 3 if args.quick else 12, args.batch_size)
            print(f"RESULT {data} {precision}: packing's own gain inside loratui's trainer (train steps, packed "
                  f"over padded, interleaved) {gain:.3f}", flush=True)
    print(f"RESULT throughput vs HF Trainer + peft, fp16: not comparable on CPU ({hf_fp16_on_cpu()}: the "
          f"Trainer trains without fp16 autocast or loss scaling here)")


if __name__ == "__main__":
    main()
