"""Learning-rate faults on signals that small-batch noise does not drown: how far the weights move per step.

The loss of a batch of 2 or 8 rows is too noisy to show a learning rate that
is too high until the damage is done (a loss that wanders at 4-5 instead of
falling to 2 looks like a plateau). The weights themselves say it at once:

- WeightMotion: the LoRA weights' update-to-weight ratio ||w_t - w_(t-1)|| /
  ||w_(t-1)|| on every applied step, and their norm against the attempt's
  start. AdamW moves every weight by about the learning rate whatever the
  gradient's size, so the ratio per unit of learning rate (`sensitivity`) is a
  property of the model: the rate that gives a healthy ratio can be computed.
- GradNormGrowth: the gradient norm's median over a few steps against its
  early level in this attempt.

Both answer with a Reading of kind "divergence" (the learning-rate alert) and
start over at every attempt. The motion costs one fp32 copy of the adapter
(not of the model) and no transfer of its own: its three norms are measured on
the device after each update and ride in the next step's one transfer (the
trainer carries them), so a step's motion is judged one step later.
"""

from __future__ import annotations

import math
import statistics
from collections import deque

from loratui.monitor.detectors import NOT_YET, Reading, check


class WeightMotion:
    """Per applied step: the update-to-weight ratio of the LoRA weights and their norm's growth."""

    def __init__(self, *, ratio_max: float, growth_max: float, patience: int = 2):
        self.ratio_max = ratio_max
        self.growth_max = growth_max
        self.patience = patience
        self.previous: list | None = None
        self.pending: tuple | None = None  # (step, lr, device tensor of three norms) awaiting the next transfer
        self.in_flight: tuple | None = None  # the pending figures the current step's transfer carries
        self.check = NOT_YET

    def reset(self, params) -> None:
        import torch

        with torch.no_grad():
            self.previous = [param.detach().float().clone() for param in params]
            self.previous_norm = _norm(self.previous)  # on the device: the next measure's "before"
            self.start_norm = float(self.previous_norm)
        self.pending = self.in_flight = None
        self.over = 0
        self.first_over_step: int | None = None
        self.sensitivity = 0.0  # the largest ratio per unit of learning rate seen in this attempt
        self.largest_ratio = 0.0
        self.check = NOT_YET

    def measure(self, step: int, params, lr: float, skipped: bool) -> None:
        """After the optimizer step: the update's norms, left on the device for the next step's transfer."""
        if self.previous is None or skipped or lr <= 0:
            return  # a skipped step moved nothing; a zero rate (warmup's first step) says nothing
        import torch

        with torch.no_grad():
            current = [param.detach().float() for param in params]
            moved = torch._foreach_sub(current, self.previous)
            current_norm = _norm(current)
            self.pending = (step, lr, torch.stack([_norm(moved), self.previous_norm, current_norm]))
            torch._foreach_copy_(self.previous, current)
            self.previous_norm = current_norm

    def carried(self):
        """The device tensor the trainer's next transfer carries, or None."""
        self.in_flight, self.pending = self.pending, None
        return self.in_flight[2] if self.in_flight is not None else None

    def observe(self, carried: list[float]) -> Reading | None:
        """Judge the update measured one step ago, from the values the trainer's transfer brought back."""
        if self.in_flight is None or len(carried) != 3:
            return None
        (step, lr, _), self.in_flight = self.in_flight, None
        moved_norm, previous_norm, norm = carried
        if not all(map(math.isfinite, (moved_norm, previous_norm, norm))) or previous_norm <= 0:
            return None
        ratio = moved_norm / previous_norm
        growth = norm / self.start_norm if self.start_norm > 0 else 1.0
        self.sensitivity = max(self.sensitivity, ratio / lr)
        self.largest_ratio = max(self.largest_ratio, ratio)
        fast, grown = ratio > self.ratio_max, growth > self.growth_max
        self.over = self.over + 1 if fast else 0
        if not (fast or grown):
            self.first_over_step = None
        elif self.first_over_step is None:
            self.first_over_step = step
        bad = self.over >= self.patience or grown
        status = "alert" if bad else ("warn" if fast else "ok")
        self.check = check(status, round(ratio, 6), f"LoRA weights moved {ratio:.2%} in one step (alert above "
                           f"{self.ratio_max:.0%}); their norm is {growth:.3g}x the attempt's start",
                           threshold=self.ratio_max, growth=round(growth, 4))
        return Reading("divergence", "updates", bad, {
            "signal": "update_ratio" if self.over >= self.patience else "weight_growth",
            "update_ratio": round(ratio, 6), "update_ratio_max": self.ratio_max, "steps_over": self.over,
            "first_step_over": self.first_over_step, "weight_norm": round(norm, 6),
            "weight_norm_at_start": round(self.start_norm, 6), "weight_growth": round(growth, 4),
            "weight_growth_max": self.growth_max, "lr": lr, "sensitivity": round(self.sensitivity, 4)})

    def suggested_rate(self, target_ratio: float) -> float | None:
        """The peak rate at which the steps measured so far would have moved the weights by `target_ratio`."""
        if self.sensitivity <= 0:
            return None
        return float(f"{target_ratio / self.sensitivity:.2g}")


class GradNormGrowth:
    """The gradient norm's median over `window` steps, sustained `growth_max` times above its early level.

    The early level is the median of the attempt's first `window` finite norms.
    A median: one bad batch is a loss spike, not a trend.
    """

    def __init__(self, *, window: int, growth_max: float, patience: int = 2):
        self.window = window
        self.growth_max = growth_max
        self.patience = patience
        self.reset()

    def reset(self) -> None:
        self.early: list[float] = []
        self.recent: deque[float] = deque(maxlen=self.window)
        self.over = 0
        self.first_over_step: int | None = None

    def observe(self, step: int, grad_norm: float, skipped: bool) -> Reading | None:
        if skipped or not math.isfinite(grad_norm):
            return None  # skips are judged by SkipWatch
        if len(self.early) < self.window:
            self.early.append(grad_norm)
            return None
        self.recent.append(grad_norm)
        if len(self.recent) < self.window:
            return None
        early = statistics.median(self.early)
        median = statistics.median(self.recent)
        growth = median / early if early > 0 else 1.0
        self.over = self.over + 1 if growth > self.growth_max else 0
        if self.over == 1:
            self.first_over_step = step
        return Reading("divergence", "grad_norm", self.over >= self.patience, {
            "signal": "grad_norm_growth", "grad_norm_median": round(median, 6), "grad_norm_early": round(early, 6),
            "grad_norm_growth": round(growth, 4), "grad_norm_growth_max": self.growth_max,
            "first_step_over": self.first_over_step, "window_steps": self.window})


def _norm(tensors):
    import torch

    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors))) if tensors else torch.zeros(())
