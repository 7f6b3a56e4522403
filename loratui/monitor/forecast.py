"""Warn before fp16 overflows: the trend of each module's headroom, and of the loss scale, extrapolated.

GradScaler, DeepSpeed, Megatron and Transformer Engine all react after the
inf. Here the probes' fp32 recomputations measure every module's largest
activation; when those grow from probe to probe, the growth per step
(geometric: updates scale activations multiplicatively) says in how many steps
the fastest-closing module reaches 65504. The loss scale, read on every step,
says the same for "the scale falls below 1" once calibration is over. Either
estimate within `horizon` steps is a warning while the run is still healthy,
so the fix can start from a checkpoint taken before any damage.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from loratui.monitor.activations import FP16_MAX
from loratui.monitor.detectors import Reading


@dataclass
class Estimate:
    steps_left: float
    module: str | None  # None: the loss scale's estimate
    value: float  # the module's peak, or the scale, now
    rate: float  # growth of log(value) per step (negative for a falling scale)


class HeadroomTrend:
    """Per module, its largest activation at each probe of the attempt; the soonest overflow they point to."""

    def __init__(self, *, horizon: int, watch_below: float):
        self.horizon = horizon
        # Peaks vary from batch to batch: only a module already this close to 65504 (headroom below
        # `watch_below`) is extrapolated, so that noise on a roomy module never reads as a trend.
        self.watch_below = watch_below
        self.reset()

    def reset(self) -> None:
        self.history: dict[tuple[str, str], list[tuple[int, float]]] = {}

    def observe(self, step: int, peaks) -> Reading | None:
        for peak in peaks.modules:
            if peak.value > 0 and math.isfinite(peak.value):
                self.history.setdefault((peak.module, peak.where), []).append((step, peak.value))
        soonest = None
        for (module, where), points in self.history.items():
            if len(points) < 2 or points[-1][0] != step or not FP16_MAX / self.watch_below < points[-1][1] < FP16_MAX:
                continue
            (first_step, first), (last_step, last) = points[-3:][0], points[-1]
            if last_step == first_step or last <= first:
                continue
            rate = math.log(last / first) / (last_step - first_step)
            left = math.log(FP16_MAX / last) / rate
            if soonest is None or left < soonest.steps_left:
                soonest = Estimate(left, f"{module} {where}", last, rate)
        if soonest is None:
            return Reading("overflow_forecast", "probe:forecast", False)
        return Reading("overflow_forecast", "probe:forecast", soonest.steps_left <= self.horizon,
                       _details(step, soonest, self.horizon))


class ScaleTrend:
    """The loss scale's log2 slope over the last `window` steps after calibration; steps until it falls below 1."""

    def __init__(self, *, window: int, horizon: int):
        self.window = window
        self.horizon = horizon
        self.reset(calibration_steps=0)

    def reset(self, *, calibration_steps: int) -> None:
        self.calibration_steps = calibration_steps
        self.seen = 0
        self.recent: deque[tuple[int, float]] = deque(maxlen=self.window)

    def observe(self, step: int, scale: float | None) -> Reading | None:
        if scale is None:
            return None
        self.seen += 1
        if self.seen <= self.calibration_steps or not scale > 0:
            return None
        self.recent.append((step, math.log2(scale)))
        if len(self.recent) < self.window or scale < 1:
            return None  # below 1 is scale_collapse's
        slope = _slope(self.recent)
        # A sustained backoff, not a sporadic overflow or two (normal after calibration): the scale fell on at
        # least half of the window's steps.
        falls = sum(later < earlier for (_, earlier), (_, later) in zip(self.recent, list(self.recent)[1:]))
        if slope >= 0 or falls * 2 < len(self.recent) - 1:
            return Reading("overflow_forecast", "scale_trend", False)
        left = math.log2(scale) / -slope
        return Reading("overflow_forecast", "scale_trend", left <= self.horizon,
                       _details(step, Estimate(left, None, scale, slope * math.log(2)), self.horizon))


def _details(step: int, estimate: Estimate, horizon: int) -> dict:
    return {"estimated_steps": round(estimate.steps_left, 1), "estimated_step": step + math.ceil(estimate.steps_left),
            "module": estimate.module, "value": estimate.value, "growth_per_step": round(math.exp(estimate.rate), 4),
            "horizon_steps": horizon, "signal": "scale" if estimate.module is None else "headroom"}


def _slope(points) -> float:
    """Least-squares slope of (x, y) points."""
    xs, ys = zip(*points)
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread if spread else 0.0
