"""The diagnosis corpus: faults made only with ordinary config keys, and healthy runs; prints the table.

    .venv/bin/python scripts/fault_corpus.py            # every case (see docs/diagnosis.md for the time)
    .venv/bin/python scripts/fault_corpus.py --slice ci # the CI-sized slice the default suite runs
    .venv/bin/python scripts/fault_corpus.py --only lr-0.3-fp16 --json

Each fault case trains the built-in model in this process with the monitor a
run builds, for a few steps past the fault's onset, and records the first
alert: its step, its fix. Then a second run from scratch applies that fix (the
restart the dashboard's key sends, from the step-0 checkpoint) and must train
healthily for FIX_STEPS steps: no alert, finite losses, the loss's median
falling. Batch size 4 unless a case sets its own. Each healthy
case must raise no alert at all (a false alarm otherwise).

The onset of a fault, defined without the detector: a learning-rate fault
begins at the first step whose rate passes 1e-2 (the built-in model trains
healthily up to 3e-3 and is damaged above 1e-2; the rates between are not in
the corpus); a tiny loss scale at step 1; a growth interval of 1 at the first
skipped step; a data fault at the first step whose loss is not finite.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOO_HIGH_LR = 1e-2
# Batch size 4 unless a case sets its own (a case's own key comes later and wins): half the default's time.
QUIET = ["train.batch_size=4", "checkpoint.every_steps=100000", "monitor.log_every=100000"]
FIX_STEPS = 30


@dataclass(frozen=True)
class Case:
    name: str
    overrides: tuple
    fault: bool
    onset: str = "lr"  # lr | config | data | skip: how the onset is found (see the module docstring)
    steps: int = 0  # fault runs: steps past the onset to wait for the alert; healthy runs: steps in all
    note: str = ""


@dataclass
class Outcome:
    case: Case
    onset: int | None = None
    alert_step: int | None = None
    kind: str | None = None
    suggestion: str | None = None
    fix: dict = field(default_factory=dict)
    fixed_healthy: bool | None = None
    fixed_detail: str = ""
    alerts: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def delay(self) -> int | None:
        return None if self.alert_step is None or self.onset is None else self.alert_step - self.onset

    @property
    def passed(self) -> bool:
        if not self.case.fault:
            return not self.alerts
        return (self.delay is not None and self.delay <= 5 and self.suggestion not in (None, "none")
                and bool(self.fixed_healthy))


def fault_cases() -> list[Case]:
    cases = []
    for lr in (0.03, 0.3, 5.0):
        for precision in ("fp32", "bf16", "fp16"):
            cases.append(Case(f"lr-{lr:g}-{precision}", (f"train.precision={precision}", f"train.learning_rate={lr}"),
                              True, "lr", 6))
    cases += [
        Case("lr-0.03-no-warmup-fp32", ("train.precision=fp32", "train.learning_rate=0.03", "train.warmup_steps=0"),
             True, "lr", 6),
        Case("lr-0.03-clip-off-bf16", ("train.precision=bf16", "train.learning_rate=0.03", "train.max_grad_norm=0"),
             True, "lr", 6),
        Case("lr-0.3-batch-1-fp32", ("train.precision=fp32", "train.learning_rate=0.3", "train.batch_size=1"),
             True, "lr", 6),
        Case("init-scale-1e-8-fp16", ("train.precision=fp16", "amp.init_scale=1e-8"), True, "config", 6,
             "a scale of 1e-8 shrinks the gradients into fp16's underflow range"),
        Case("growth-interval-1-fp16", ("train.precision=fp16", "amp.growth_interval=1"), True, "skip", 6,
             "the scale doubles after every clean step until the gradients overflow, then on every other step"),
        Case("outlier-rows-fp16", ("train.precision=fp16", "model.name_or_path=\"builtin:tiny-llama-token-outliers\"",
                                   "data.path=\"builtin:tiny-chat-mojibake\""), True, "data", 6,
             "rows of mojibake meet the model's massive activation on their stray byte token"),
    ]
    return cases


def healthy_cases(seeds=(1, 2, 3), steps: int = 300) -> list[Case]:
    cases = []
    for lr in (1e-5, 3e-4, 3e-3):
        for precision in ("fp32", "bf16", "fp16"):
            for seed in seeds:
                cases.append(Case(f"healthy-lr-{lr:g}-{precision}-seed{seed}",
                                  (f"train.precision={precision}", f"train.learning_rate={lr}",
                                   f"train.seed={seed}"), False, steps=steps))
    cases += [
        Case("healthy-clip-off-fp32", ("train.precision=fp32", "train.max_grad_norm=0"), False, steps=steps,
             note="clipping off at the default rate is not a fault by itself"),
        Case("healthy-batch-1-fp32", ("train.precision=fp32", "train.batch_size=1"), False, steps=steps,
             note="batch size 1: the noisiest loss, the detectors' hardest false-alarm test"),
        Case("healthy-no-warmup-fp32", ("train.precision=fp32", "train.warmup_steps=0"), False, steps=steps),
        Case("healthy-mojibake-rows-fp16", ("train.precision=fp16", "data.path=\"builtin:tiny-chat-mojibake\""),
             False, steps=steps, note="the same bad rows without the outlier model: fp16 holds them"),
    ]
    return cases


SLICES = {
    # The default suite's slice: one fault of each mechanism, and healthy runs in every precision, short.
    "ci": lambda: ([c for c in fault_cases() if c.name in ("lr-0.3-fp32", "init-scale-1e-8-fp16")]
                   + [c for c in healthy_cases(seeds=(1,), steps=40) if c.name == "healthy-lr-0.003-fp32-seed1"]),
    # `make torture`'s share (its time budget): every fault, the healthy rates and precisions at one seed.
    "torture": lambda: fault_cases() + healthy_cases(seeds=(1,), steps=100),
    "faults": fault_cases,
    "healthy": healthy_cases,
    "all": lambda: fault_cases() + healthy_cases(),
}


def train(overrides: list[str], workdir: Path, name: str, *, on_event=None):
    """The real trainer with the monitor `loratui run` builds, in this process; returns its events."""
    from loratui.config import load_config, render_toml
    from loratui.events.bus import CallbackSink, EventBus
    from loratui.events.jsonl import JsonlSink, read_events
    from loratui.monitor import build_monitor
    from loratui.run_dir import prepare_run_dir
    from loratui.train.trainer import Trainer

    config_path = workdir / "empty.toml"
    config_path.write_text("")
    config = load_config(config_path, [*overrides, f'run.output_dir="{workdir}"', f'run.name="{name}"'])
    run_dir = prepare_run_dir(config, resume=False, config_text=render_toml(config))
    bus = EventBus()
    bus.add_sink(JsonlSink(run_dir.events))
    if on_event is not None:
        bus.add_sink(CallbackSink(on_event))
    trainer = Trainer(config, run_dir, bus, monitor=build_monitor(config, bus))
    try:
        trainer.run()
    finally:
        bus.close()
    return config, read_events(run_dir.events)


def onset_of(case: Case, steps: list[dict]) -> int | None:
    if case.onset == "lr":
        return next((e["step"] for e in steps if e["lr"] > TOO_HIGH_LR), None)
    if case.onset == "data":
        return next((e["step"] for e in steps if not _finite(e["loss"])), None)
    if case.onset == "skip":
        return next((e["step"] for e in steps if e["skipped"]), None)
    return 1


def run_case(case: Case, workdir: Path) -> Outcome:
    started = time.perf_counter()
    outcome = Outcome(case)
    if not case.fault:
        _, events = train([*QUIET, *case.overrides, f"train.max_steps={case.steps}"], workdir, case.name)
        outcome.alerts = [(e["kind"], e["step"]) for e in events if e["type"] == "alert"]
        outcome.seconds = time.perf_counter() - started
        return outcome
    # Long enough for the onset (warmup moves the rate past 1e-2 by step 5 at 0.03) plus the steps to wait.
    steps = case.steps + (12 if case.onset in ("lr", "skip", "data") else 0)
    config, events = train([*QUIET, *case.overrides, f"train.max_steps={steps}"], workdir, case.name)
    step_events = [e for e in events if e["type"] == "step"]
    alerts = [e for e in events if e["type"] == "alert"]
    outcome.onset = onset_of(case, step_events)
    outcome.alerts = [(e["kind"], e["step"]) for e in alerts]
    if alerts:
        first = alerts[0]
        outcome.alert_step, outcome.kind, outcome.suggestion, outcome.fix = (
            first["step"], first["kind"], first["suggestion"], first["fix"])
    if outcome.suggestion not in (None, "none"):
        outcome.fixed_healthy, outcome.fixed_detail = apply_fix(case, outcome.fix, workdir)
    outcome.seconds = time.perf_counter() - started
    return outcome


def apply_fix(case: Case, fix: dict, workdir: Path, steps: int = FIX_STEPS) -> tuple[bool, str]:
    """The fix from step 0 (every fault here begins before the first interval checkpoint): healthy or why not."""
    fixed = [*case.overrides]
    if "precision" in fix:
        fixed.append(f"train.precision={fix['precision']}")
    if "learning_rate" in fix:
        fixed.append(f"train.learning_rate={fix['learning_rate']}")
    _, events = train([*QUIET, *fixed, f"train.max_steps={steps}"], workdir, case.name + "-fixed")
    alerts = [(e["kind"], e["step"]) for e in events if e["type"] == "alert"]
    losses = [e["loss"] for e in events if e["type"] == "step"]
    finite = [loss for loss in losses if _finite(loss)]
    if alerts:
        return False, f"alerts after the fix: {alerts}"
    if len(finite) < len(losses):
        return False, f"{len(losses) - len(finite)} non-finite losses after the fix"
    first, last = statistics.median(finite[:8]), statistics.median(finite[-8:])
    return last < first, f"median loss {first:.3g} -> {last:.3g}"


def table(outcomes: list[Outcome]) -> str:
    lines = ["| fault | onset | alert | steps | fix suggested | fixed run healthy |", "|---|---|---|---|---|---|"]
    for o in outcomes:
        if not o.case.fault:
            continue
        fix = o.suggestion or "-"
        if o.fix:
            fix += " (" + ", ".join(f"{k}={v}" for k, v in o.fix.items()) + ")"
        lines.append(f"| `{o.case.name}` | {_or(o.onset)} | {o.kind or 'none'} at {_or(o.alert_step)} | "
                     f"{_or(o.delay)} | {fix} | {'yes' if o.fixed_healthy else 'no'}: {o.fixed_detail} |")
    healthy = [o for o in outcomes if not o.case.fault]
    if healthy:
        false_alarms = [o for o in healthy if o.alerts]
        lines += ["", f"Healthy runs: {len(healthy)}, false alarms: {len(false_alarms)}"
                  + "".join(f"\n- `{o.case.name}`: {o.alerts}" for o in false_alarms)]
    return "\n".join(lines)


def _or(value) -> str:
    return "-" if value is None else str(value)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slice", choices=sorted(SLICES), default="all")
    parser.add_argument("--only", action="append", help="run only the cases with these names")
    parser.add_argument("--json", action="store_true", help="one JSON object per case instead of the table")
    args = parser.parse_args(argv)
    cases = SLICES[args.slice]()
    if args.only:
        cases = [c for c in cases if c.name in args.only]
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="loratui-corpus-") as tmp:
        for case in cases:
            outcome = run_case(case, Path(tmp))
            outcomes.append(outcome)
            print(f"{case.name}: {'ok' if outcome.passed else 'FAILED'} ({outcome.seconds:.0f} s)", file=sys.stderr,
                  flush=True)
            if args.json:
                print(json.dumps({"case": case.name, "fault": case.fault, "onset": outcome.onset,
                                  "alert_step": outcome.alert_step, "kind": outcome.kind,
                                  "suggestion": outcome.suggestion, "fix": outcome.fix,
                                  "fixed_healthy": outcome.fixed_healthy, "detail": outcome.fixed_detail,
                                  "alerts": outcome.alerts, "passed": outcome.passed}), flush=True)
    if not args.json:
        print(table(outcomes))
    return 0 if all(o.passed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
