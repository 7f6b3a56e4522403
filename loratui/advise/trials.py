"""Short trials of each precision, through the real trainer and the real health monitor, in one process.

Every trial starts from the same state. The trainer's step-0 checkpoint holds
the seeded adapter, the RNG state (so dropout draws the same masks) and the
data position (so every trial sees the same batches); each trial after the
first goes back to it through the trainer's own restart path, which reloads
the base weights only when their dtype changes (or, for the quantized trial,
their quantization: _switch forces the reload). The tokenizer and the data
are loaded once. Between the two bf16 trials (fp32 and bf16 adapters) the
base model stays loaded: only the adapter is cast, as loading would cast it.

After every trial has run, they run again in reverse order (the last one
first), timed only: a trial's speed is read from both passes, so a change in
the machine's load cannot decide between trials, and the two passes'
difference is the spread the recommendation weighs (advise/decide.py).

The health monitor probes every third step (and the first): its `health`
events, with the trainer's `step` events, are the evidence the advisor
decides on. Trials never checkpoint beyond step 0 and never apply fixes.

Each trial carries the memory planner's estimate of its peak on the device
(advise/fit.py). When the base in full precision does not fit there, one more
trial runs with a 4-bit (nf4) base, computing in the precision the hardware
rule picks: the configuration that does fit, measured like the others.
"""

from __future__ import annotations

import copy
import time
import traceback
from dataclasses import dataclass, field
from typing import Protocol

from loratui.events.bus import CallbackSink, EventBus
from loratui.events.jsonl import JsonlSink
from loratui.hardware import UNSUPPORTED, Capabilities
from loratui.run_dir import RunDir

PROBE_EVERY = 3  # leaves two unprobed steps in three to time


@dataclass(frozen=True)
class TrialPlan:
    name: str  # the key in advice.json's trials: fp32, bf16, bf16-pure, fp16, and e.g. bf16-nf4
    precision: str
    adapter_dtype: str
    quantization: str = "none"  # model.quantization for this trial: the config's, or nf4 for the added trial


@dataclass
class TrialRecord:
    plan: TrialPlan
    support: str  # native | emulated | unsupported
    support_note: str
    steps: int
    attempt: int | None = None  # its attempt in the trials' event log; None when it did not run
    events: list[dict] = field(default_factory=list)
    peak_memory_mib: float | None = None
    memory_measure: str = ""
    seconds: float = 0.0
    error: str | None = None  # why it stopped early (out of memory, an op this dtype lacks)
    repeat_events: list[dict] = field(default_factory=list)  # the timing repeat's (see _run), for speed only
    memory_plan: object = None  # the planner's estimate judged against the device (memory_plan.Plan), or None


class TrialsFailed(Exception):
    """No trial could run: the shared setup failed (out of memory loading the first model)."""


class Progress(Protocol):
    def trial_step(self, plan: TrialPlan, index: int, count: int, step: int, steps: int) -> None: ...

    def note(self, message: str) -> None: ...


def plan_trials(config, memory=None, compute: str = "bf16") -> list[TrialPlan]:
    """The half precisions first (least memory: a model that fits nowhere fails at once), fp32 last.

    Pure-bf16 adapters are measured only when the config asks for them, next to
    bf16 with fp32 adapters, the alternative when they go stale. Every trial
    keeps the config's model.quantization. With the trials' `memory` (fit.TrialMemory)
    on which a full-precision base does not fit, a last trial quantizes it to nf4,
    computing in `compute` (the hardware rule's precision).
    """
    from loratui.advise.fit import QUANTIZED

    quantization = config.model.quantization
    plans = [TrialPlan("bf16", "bf16", "fp32", quantization)]
    if config.train.adapter_dtype == "bf16":
        plans.append(TrialPlan("bf16-pure", "bf16", "bf16", quantization))
    plans += [TrialPlan("fp16", "fp16", "fp32", quantization), TrialPlan("fp32", "fp32", "fp32", quantization)]
    if quantization == "none" and memory is not None and any(
            memory.plan(p.precision, p.adapter_dtype, p.quantization).fits is False for p in plans):
        plans.append(TrialPlan(f"{compute}-{QUANTIZED}", compute, "fp32", QUANTIZED))
    return plans


def trial_config(config, first: TrialPlan):
    """The user's config as a trial runs it: same model, data, LoRA, schedule and thresholds."""
    trial = copy.deepcopy(config)
    trial.run.report_to = []
    trial.train.precision = first.precision
    trial.train.adapter_dtype = first.adapter_dtype
    trial.model.quantization = first.quantization
    trial.monitor.probe_every = PROBE_EVERY
    trial.monitor.probe_first_steps = 1
    trial.monitor.probe_budget = 1.0  # a trial is there to be measured: its probes keep their cadence
    trial.monitor.autopilot.enabled = False  # a trial measures; it never changes course
    trial.checkpoint.on_error = "stop"  # every trial starts from the step-0 checkpoint: none, no trials
    return trial


def run_trials(config, workspace: RunDir, capabilities: Capabilities, steps: int,
               progress: Progress, budget=None, compute: str = "bf16") -> list[TrialRecord]:
    """Run every trial this machine supports; `workspace` receives the trials' events.jsonl.

    `budget` (fit.DeviceBudget) is the device memory each trial's estimate is judged against.
    """
    from loratui.advise.fit import TrialMemory

    memory = TrialMemory(config, budget) if budget is not None else None
    records = []
    for plan in plan_trials(config, memory, compute):
        support = capabilities.support.get(plan.precision, UNSUPPORTED)
        note = capabilities.notes.get(plan.precision, "") or ""
        if plan.quantization != "none" and support != UNSUPPORTED:
            from loratui.model.quantization import bitsandbytes_problem

            problem = bitsandbytes_problem()
            if problem:
                support, note = UNSUPPORTED, f"a {plan.quantization} base: {problem}"
        record = TrialRecord(plan, support, note, steps)
        if memory is not None:
            record.memory_plan = memory.plan(plan.precision, plan.adapter_dtype, plan.quantization)
        records.append(record)
        if support == UNSUPPORTED:
            progress.note(f"{plan.name}: not supported on this machine ({note}); not measured")
    runnable = [r for r in records if r.support != UNSUPPORTED]
    if runnable:
        _run(config, workspace, runnable, steps, progress)
    return records


def _run(config, workspace: RunDir, records: list[TrialRecord], steps: int, progress: Progress) -> None:
    from loratui.advise.memory import PeakMemory
    from loratui.monitor import build_monitor
    from loratui import checkpoint_files as ckpt
    from loratui.train.run_control import StopTraining
    from loratui.train.trainer import Trainer

    trial_cfg = trial_config(config, records[0].plan)
    bus = EventBus()
    bus.add_sink(JsonlSink(workspace.events))
    current: list[list] = []  # the event list the running trial (or its timing repeat) fills
    bus.add_sink(CallbackSink(lambda event: current[0].append(event) if current else None))
    trainer = Trainer(trial_cfg, workspace, bus, monitor=build_monitor(trial_cfg, bus))
    # Signals stop a trial at its next step boundary like a training run (StopTraining), and
    # the caller's own handlers come back afterwards. The trainer's cleanup() is not called:
    # it would end the process's accelerate state, which the caller may still be using.
    trainer.signals.install()
    try:
        _setup(trainer, bus, records[0].plan)
        start = ckpt.list_complete(workspace.checkpoints)[0]
        memory = PeakMemory(trainer.device)
        for index, record in enumerate(records):
            current[:] = [record.events]
            try:
                _run_one(trainer, record, index, len(records), steps, start, memory, progress)
            except StopTraining:
                raise  # a signal or a stop command ends the advice, as it ends a run
            except Exception as exc:  # out of memory (loading or training), or an op this dtype lacks here
                _record_failure(trainer, record, exc, progress)
        # The same trials again in reverse order, timed only: a change in the machine's load during the first
        # pass slows the trials it overlapped, and the reverse pass puts other trials under it. Each trial's
        # speed is then read from both passes, and their difference is the measurement's spread.
        timed = [record for record in records if record.error is None and record.attempt is not None]
        for index, record in enumerate(reversed(timed)):
            current[:] = [record.repeat_events]
            try:
                _switch(trainer, record.plan, start)  # back to step 0: the same batches as the first pass
                _train(trainer, record, len(records) + index, len(records) + len(timed), steps, progress)
            except StopTraining:
                raise
            except Exception as exc:  # the repeat only times: its failure leaves the first pass's figures
                record.repeat_events.clear()
                progress.note(f"{record.plan.name}: its timing repeat stopped ({_first_line(exc)}); "
                              f"its speed is the first pass's alone")
                trainer.base_dtype_name = None
    finally:
        current.clear()
        trainer.signals.uninstall()
        bus.close()


def _setup(trainer, bus: EventBus, first: TrialPlan) -> None:
    """The tokenizer, the data, the model in the first trial's precision and the step-0 checkpoint.

    Bad input (config, data, model path) and a stop are the caller's, as in a run.
    Anything else (out of memory loading the model) leaves no start state for any
    trial: the advice fails as a whole, with the traceback in the trials' event log.
    """
    from loratui.errors import UserInputError
    from loratui.train.run_control import StopTraining

    try:
        trainer.setup()
    except (UserInputError, StopTraining):
        raise
    except Exception as exc:
        bus.publish("run_failed", step=0, error=_first_line(exc), traceback=traceback.format_exc())
        raise TrialsFailed(f"the trials could not start ({first.name} first): {_first_line(exc)}") from exc


def _run_one(trainer, record: TrialRecord, index: int, count: int, steps: int, start, memory,
             progress: Progress) -> None:
    """One trial: back to the step-0 state in its precision (the first trial is there already), then train.

    Its time and peak memory are those of its steps: loading the model for it is not counted.
    """
    if index:
        _switch(trainer, record.plan, start)
    record.attempt = trainer.attempt  # only once the switch succeeded: a trial that never began has none
    record.memory_measure = memory.measure
    memory.reset()
    started = time.perf_counter()
    try:
        _train(trainer, record, index, count, steps, progress)
    finally:
        record.seconds = round(time.perf_counter() - started, 3)
        record.peak_memory_mib = memory.peak_mib()


def _record_failure(trainer, record: TrialRecord, exc: Exception, progress: Progress) -> None:
    """The trial failed, in its switch (reloading the base model) or in a step; the next trials still run."""
    record.error = _first_line(exc)
    began = record.attempt is not None
    progress.note(f"{record.plan.name}: " + (f"stopped at step {trainer.step}" if began
                                             else f"could not switch to {record.plan.name}") + f": {record.error}")
    # A failed switch may leave no model at all (restart frees the old one before loading the next),
    # a failed step a model in an unknown state: the next trial starts from a freshly loaded one.
    trainer.base_dtype_name = None


def _switch(trainer, plan: TrialPlan, start) -> None:
    """Back to the step-0 state in the next trial's precision, through the trainer's restart path."""
    import torch

    from loratui.train import run_control

    if plan.quantization != trainer.config.model.quantization:
        # restart() reloads the base only when its dtype changes: a new quantization needs the reload too.
        trainer.config.model.quantization = plan.quantization
        trainer.base_dtype_name = None
    if plan.precision == trainer.base_dtype_name and plan.adapter_dtype != trainer.adapter_dtype_name:
        # Same base dtype: cast the adapter where it is (what loading does) and keep the base loaded.
        dtype = torch.bfloat16 if plan.adapter_dtype == "bf16" else torch.float32
        for param in trainer.params:
            param.data = param.data.to(dtype)
    trainer.adapter_dtype_name = plan.adapter_dtype
    run_control.restart(trainer, start, precision=plan.precision, reason=f"advise: {plan.name} trial")


def _train(trainer, record: TrialRecord, index: int, count: int, steps: int, progress: Progress) -> None:
    """`steps` optimizer steps as Trainer.fit takes them, without its checkpoints."""
    progress.trial_step(record.plan, index, count, 0, steps)  # begun: the model is loaded
    for _ in range(steps):
        trainer.at_step_boundary()
        figures = trainer.train_step()
        trainer.step += 1
        trainer.publish_step(figures)
        trainer.monitor.after_step(trainer, figures)
        progress.trial_step(record.plan, index, count, trainer.step, steps)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
