"""`train.precision = "advise"`: the advisor measures, then the run trains with its choice.

Runs in the trainer process before the run's trainer is built (entry.py
calls it and hands the trainer the choice), so nothing here or below imports
textual or rich. Progress
goes to the run's event bus as `phase` events (the dashboard and the console
show them), the choice and its reasons as an `advice` event and a `notice`.

An advice.json already in the run directory that was measured for this same
config on this machine is used as it is: `loratui advise` followed by
`loratui run` measures once, and a resume does not measure again (it goes on
in its checkpoint's precision either way: train/run_control.py's resume plan).
"""

from __future__ import annotations

from loratui.advise.advisor import DEFAULT_STEPS, advise
from loratui.advise.report import reusable_advice
from loratui.advise.trials import TrialPlan
from loratui.errors import Problem, UserInputError
from loratui.events.bus import EventBus
from loratui.process_exit import is_launched_rank
from loratui.run_dir import RunDir


class BusProgress:
    """Trial progress as `phase` events: one phase per trial, done/total in steps."""

    def __init__(self, bus: EventBus):
        self.bus = bus

    def trial_step(self, plan: TrialPlan, index: int, count: int, step: int, steps: int) -> None:
        self.bus.publish("phase", name=f"advise: {plan.name} trial ({index + 1} of {count})", done=step,
                         total=steps)

    def note(self, message: str) -> None:
        self.bus.publish("notice", step=0, source="advise", message=f"advise: {message}")


def choose_precision_for_run(config, run_dir: RunDir, bus: EventBus) -> str:
    """fp32, bf16 or fp16 for this run, measured (or reused from advice.json); advice.json is left in run_dir."""
    from loratui.hardware import detect

    if is_launched_rank():
        # Each rank would time its own trials and could choose differently.
        raise UserInputError(Problem("train.precision", '"advise" runs its trials in one process: run `loratui '
                                     'advise CONFIG` first, then launch with the precision it recommends'))
    capabilities = detect(config.train.device)
    steps = min(DEFAULT_STEPS, config.train.max_steps)
    advice = reusable_advice(run_dir.advice, config, capabilities, steps)
    reused = advice is not None
    if not reused:
        bus.publish("notice", step=0, source="advise",
                    message=f"advise: measuring fp32, bf16 and fp16 ({steps} steps each) before training")
        advice = advise(config, run_dir.root, capabilities, steps, BusProgress(bus))
    choice = advice["recommendation"]
    verdicts = {name: {"verdict": t["verdict"], "tokens_per_s": t["tokens_per_s"]}
                for name, t in advice["trials"].items()}
    bus.publish("advice", step=0, recommendation=choice, adapter_dtype=advice["adapter_dtype"],
                reasons=advice["reasons"], reused=reused, path=str(run_dir.advice), trials=verdicts)
    bus.publish("notice", step=0, source="advise",
                message=f"advise: training in {choice}" + (" (advice.json measured earlier for this config)"
                                                           if reused else "") + f": {advice['reasons'][0]}")
    quantization = advice.get("quantization", config.model.quantization)
    if quantization != config.model.quantization:
        # The precision is this run's to choose; the base's quantization is the config's: say what fits.
        bus.publish("notice", step=0, source="advise",
                    message=f'advise: the measured choice has a quantized base (model.quantization = '
                            f'"{quantization}"); this run keeps model.quantization = '
                            f'"{config.model.quantization}" as written')
    return choice
