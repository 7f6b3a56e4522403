"""A trial's figures, read from the events it published: `step` events and the monitor's `health` events.

Nothing here measures anything: every figure is a summary of what the trainer
and the health monitor reported during the trial, so the table can always be
checked against the trial's events (advise/events.jsonl). Where probes ran
several times, a figure is the worst reading: the monitor judges each probe on
its own, and so does the advisor.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from loratui.events.encode import as_float


@dataclass
class TrialFigures:
    tokens_per_s: float | None = None  # the mean of the passes' medians over unprobed steps after the first
    timed_steps: int = 0
    tokens_per_s_passes: list[float] = field(default_factory=list)  # the first pass's, then the reverse pass's
    speed_spread: float | None = None  # |difference| of the two passes / their mean; None with one pass
    final_loss: float | None = None
    steps_done: int = 0
    nonfinite_loss_steps: int = 0
    skipped_steps: int = 0
    calibration_skips: int = 0  # skips while the scaler backed off from its initial scale (see _calibration)
    skipped_after_calibration: int = 0
    steps_after_calibration: int = 0
    most_consecutive_skips: int = 0  # after calibration
    applied_steps: int = 0
    final_scale: float | None = None
    probes: int = 0
    fp16_headroom: float | None = None  # 65504 / the largest activation, the tightest probe
    headroom_module: str | None = None
    headroom_where: str | None = None  # input or output
    peak_activation: float | None = None
    fidelity_cosine: float | None = None  # the lowest over the probes
    relative_error: float | None = None  # the highest over the probes
    underflow_share: float | None = None  # the highest over the probes (fp16)
    underflow_module: str | None = None
    stale_share: float | None = None  # the highest over the probes
    stale_module: str | None = None
    alerts: list[str] = field(default_factory=list)  # alert kinds the monitor raised during the trial

    @property
    def ended_in_calibration(self) -> bool:
        """The trial ended while the loss scaler was still backing off: its last steps all skipped."""
        return self.calibration_skips > 0 and not self.steps_after_calibration


def trial_figures(events: list[dict], repeat_events: list[dict] = ()) -> TrialFigures:
    """The figures of one trial; `repeat_events`, its timing repeat in the reverse pass, add to its speed only."""
    steps = [e for e in events if e.get("type") == "step"]
    health = [e for e in events if e.get("type") == "health"]
    figures = TrialFigures(steps_done=len(steps), probes=len(health))
    figures.alerts = sorted({e["kind"] for e in events if e.get("type") == "alert"})
    _speed(figures, steps, {e["step"] for e in health})
    repeat = TrialFigures()
    _speed(repeat, [e for e in repeat_events if e.get("type") == "step"],
           {e["step"] for e in repeat_events if e.get("type") == "health"})
    if figures.tokens_per_s is not None:
        figures.tokens_per_s_passes = [figures.tokens_per_s]
    if figures.tokens_per_s is not None and repeat.tokens_per_s is not None:
        first, second = figures.tokens_per_s, repeat.tokens_per_s
        figures.tokens_per_s_passes = [first, second]
        figures.tokens_per_s = round((first + second) / 2, 1)
        figures.speed_spread = round(abs(first - second) / figures.tokens_per_s, 4) if figures.tokens_per_s else None
        figures.timed_steps += repeat.timed_steps
    _loss_and_scaling(figures, steps)
    _probes(figures, health)
    return figures


def _speed(figures: TrialFigures, steps: list[dict], probed: set) -> None:
    """The median, not the mean: a busy machine stalls a step now and then, and one stall would decide.

    The first step pays for warm-up (kernel selection, allocator growth) and is left
    out too. Every trial sees the same batches, so the steps compared are alike.
    """
    timed = [s for s in steps[1:] if s["step"] not in probed] or steps[1:] or steps
    rates = [s["tokens"] / s["step_time_s"] for s in timed if s["step_time_s"] > 0]
    if rates:
        figures.tokens_per_s = round(statistics.median(rates), 1)
        figures.timed_steps = len(rates)


def _loss_and_scaling(figures: TrialFigures, steps: list[dict]) -> None:
    if not steps:
        return
    losses = [as_float(s["loss"]) for s in steps]
    figures.final_loss = losses[-1]
    figures.nonfinite_loss_steps = sum(not math.isfinite(loss) for loss in losses)
    skipped = [bool(s["skipped"]) for s in steps]
    figures.skipped_steps = sum(skipped)
    figures.applied_steps = len(steps) - figures.skipped_steps
    if steps[-1].get("scale") is not None:
        figures.final_scale = as_float(steps[-1]["scale"])
    _calibration(figures, skipped, scaled=figures.final_scale is not None)


# The loss scaler starts from a guess (amp.init_scale) and halves it on each overflow. The LoRA
# adapter starts at zero and the warmup raises the learning rate, so the gradients grow over the
# first steps: on the built-in model the default initial scale first overflows at step 1 to 3
# (batch size 1 to 4). Once the initial scale has run this many steps clean, it is a scale that works.
INITIAL_SCALE_PROVEN_AFTER = 5


def _calibration(figures: TrialFigures, skipped: list[bool], *, scaled: bool) -> None:
    """Which skips are the scaler's calibration, and what came after it.

    Calibration is the scaler backing off from its initial guess: it begins with a
    skip in the very first steps (before the initial scale has run
    INITIAL_SCALE_PROVEN_AFTER steps clean) and lasts until a step runs clean after
    it. A skip after that, or a first skip after the initial scale had worked for
    that many steps, is not calibration: the gradients outgrew a scale that worked.
    A trial that ends before a step runs clean again ends in calibration: no step
    comes after it (steps_after_calibration = 0). Without a loss scaler (fp32, bf16,
    fp16 with amp.loss_scaling off) there is nothing to calibrate.
    """
    first_skip = skipped.index(True) if True in skipped else None
    if not scaled or first_skip is None or first_skip >= INITIAL_SCALE_PROVEN_AFTER:
        settled = 0  # nothing to calibrate, or the initial scale worked
    else:
        settled = next((i for i in range(first_skip, len(skipped)) if not skipped[i]), len(skipped))
    figures.calibration_skips = sum(skipped[:settled])
    after = skipped[settled:]
    figures.steps_after_calibration = len(after)
    figures.skipped_after_calibration = sum(after)
    run = 0
    for skip in after:
        run = run + 1 if skip else 0
        figures.most_consecutive_skips = max(figures.most_consecutive_skips, run)


def _probes(figures: TrialFigures, health: list[dict]) -> None:
    def readings(name: str) -> list[dict]:
        return [e["checks"][name] for e in health if e["checks"].get(name, {}).get("value") is not None]

    headroom = min(readings("fp16_headroom"), key=lambda c: as_float(c["value"]), default=None)
    if headroom is not None:
        figures.fp16_headroom = as_float(headroom["value"])
        figures.headroom_module = headroom.get("module")
        figures.headroom_where = headroom.get("where")
        figures.peak_activation = as_float(headroom.get("peak"))
    fidelity = readings("fidelity")
    if fidelity:
        figures.fidelity_cosine = min(as_float(c["value"]) for c in fidelity)
        errors = [as_float(c["relative_error"]) for c in fidelity if c.get("relative_error") is not None]
        figures.relative_error = max(errors) if errors else None
    underflow = max(readings("underflow"), key=lambda c: as_float(c["value"]), default=None)
    if underflow is not None:
        figures.underflow_share = as_float(underflow["value"])
        figures.underflow_module = underflow.get("module")
    stale = max(readings("stale_update"), key=lambda c: as_float(c["value"]), default=None)
    if stale is not None:
        figures.stale_share = as_float(stale["value"])
        figures.stale_module = stale.get("module")
