"""Detectors over the per-step figures (loss, grad norm, loss scale, skipped): pure Python, no device work.

Each detector is fed one step at a time and answers with a Reading: its
signal is bad (with the numbers that show it) or healthy, or it has nothing
to say yet. Each also keeps a `check` for the `health` event. They start
over at every attempt: a restart brings a new loss scale, a new learning
rate, and a loss level that earlier steps say nothing about.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field


@dataclass
class Reading:
    kind: str  # the alert kind this signal stands for
    source: str  # which signal: an episode is closed only by the signal that opened it
    bad: bool
    details: dict = field(default_factory=dict)


def check(status: str, value, summary: str, **extra) -> dict:
    """One entry of a health event's `checks`."""
    return {"status": status, "value": value, "summary": summary, **extra}


NOT_YET = check("n/a", None, "no data yet")


class SkipWatch:
    """Steps skipped because the *gradients* were not finite while the loss was, in every precision.

    The trainer skips every step whose gradient norm is not finite, whatever the
    precision, so a run can lose every update with a normal-looking loss. In
    fp16 with a loss scaler some skips are expected: while the scaler
    calibrates after a start or restart it halves its scale on every overflow
    until the gradients fit, so skips in the first `calibration_steps` are not
    judged. Without a scaler (fp16 with loss scaling off, bf16, fp32) there is
    nothing to calibrate and every skip counts. A skip rate above
    `skip_rate_max` over the last `skip_window` steps, or
    `consecutive_skips_max` skips in a row, is an alert of the kind given at
    reset: `overflow` in fp16, `nonfinite_grads` where the precision's range is
    not the explanation.
    """

    def __init__(self, *, window: int, rate_max: float, consecutive_max: int):
        self.window = window
        self.rate_max = rate_max
        self.consecutive_max = consecutive_max
        self.reset(kind="overflow", calibration_steps=0)

    def reset(self, *, kind: str, calibration_steps: int) -> None:
        self.kind = kind
        self.calibration_steps = calibration_steps
        self.recent: deque[tuple[int, bool]] = deque(maxlen=self.window)  # (step, skipped with a finite loss)
        self.consecutive = 0
        self.steps = 0
        self.calibration_skips = 0
        self.check = NOT_YET

    def observe(self, step: int, loss: float, skipped: bool, scale: float | None,
                nonfinite_grads: int) -> Reading | None:
        self.steps += 1
        gradients_failed = skipped and math.isfinite(loss)  # a NaN loss is the forward's fault: its own alert
        if self.steps <= self.calibration_steps:
            self.calibration_skips += gradients_failed
            self.check = check("ok", None, f"calibrating the loss scale (step {self.steps} of "
                               f"{self.calibration_steps}); {self.calibration_skips} skip(s) so far are expected",
                               calibrating=True)
            return None
        self.recent.append((step, gradients_failed))
        self.consecutive = self.consecutive + 1 if gradients_failed else 0
        skipped_steps = [s for s, failed in self.recent if failed]
        rate = len(skipped_steps) / len(self.recent)
        judged = len(self.recent) >= min(self.window, 20)  # a rate over a handful of steps says little
        bad = self.consecutive >= self.consecutive_max or (judged and rate > self.rate_max)
        status = "alert" if bad else ("warn" if skipped_steps else "ok")
        cause = "gradient overflow" if self.kind == "overflow" else "non-finite gradients"
        self.check = check(status, round(rate, 4), f"{len(skipped_steps)} of the last {len(self.recent)} steps "
                           f"skipped ({cause}), {self.consecutive} in a row", threshold=self.rate_max)
        return Reading(self.kind, "skips", bad, {
            "skipped_steps": len(skipped_steps), "window_steps": len(self.recent), "skip_rate": round(rate, 4),
            "consecutive_skips": self.consecutive, "first_skipped_step": skipped_steps[0] if skipped_steps else None,
            "scale": scale, "nonfinite_grads": nonfinite_grads, "skip_rate_max": self.rate_max,
            "consecutive_skips_max": self.consecutive_max})


class ScaleRegrowth:
    """fp16 overflows right after the loss scale grew back: the scaler's growth interval is too short.

    GradScaler halves its scale on an overflow and doubles it only after
    `amp.growth_interval` clean steps (2000 by default). So in a healthy run the
    scale never grows soon after a change: calibration's skips come at falling
    scales, and a later overflow is followed by thousands of clean steps. A scale
    that grows after fewer than `quick` steps at its level and overflows at once
    will do so again and again, every `quick` steps or sooner: a skip rate above
    monitor.skip_rate_max (quick = 1 / skip_rate_max), and no calibration, so it is
    judged from the first step (the skip-rate rule waits for its window, and for
    the end of calibration). `repeats` such overflows close together are the alert:
    one could follow a level whose length this attempt did not see from its start.
    """

    def __init__(self, *, quick: int, repeats: int = 2):
        self.quick = quick
        self.repeats = repeats
        self.reset(applies=False)

    def reset(self, *, applies: bool, clean_steps_counted: int = 0) -> None:
        """`clean_steps_counted`: clean steps the scaler has counted at its level already (a checkpoint's)."""
        self.applies = applies
        self.counted = clean_steps_counted
        self.scale: float | None = None
        self.level_since: int | None = None  # the first step at the current scale
        self.grown_after: int | None = None  # steps at the level before the last growth; None after a fall
        self.overflows: list[tuple[int, float, int]] = []  # (step, scale, steps at the level before it grew)
        self.check: dict | None = None  # the skip-rate entry of a health event while the pattern lasts

    def observe(self, step: int, loss: float, skipped: bool, scale: float | None) -> Reading | None:
        """`scale` is the one the step ran with (a skip halves the next step's)."""
        if not self.applies or scale is None:
            return None
        if self.scale is None:
            self.level_since = step - self.counted
        elif scale != self.scale:
            self.grown_after = step - self.level_since if scale > self.scale else None
            self.level_since = step
        self.scale = scale
        gradients_failed = skipped and math.isfinite(loss)  # a NaN loss is the forward's fault
        if gradients_failed and self.grown_after is not None and self.grown_after < self.quick:
            self.overflows.append((step, scale, self.grown_after))
        recent = [o for o in self.overflows if step - o[0] < self.quick * self.repeats]
        self.check = None
        if not recent:
            return Reading("overflow", "regrowth", False) if self.overflows else None
        grown_after = max(o[2] for o in recent)
        bad = len(recent) >= self.repeats
        if bad:  # the skip-rate entry says so: calibration's "skips are expected" would contradict the alert
            self.check = check("alert", round(1 / (grown_after + 1), 4), f"the loss scale overflowed each time it "
                               f"grew back, after {grown_after} clean step(s): about 1 step in {grown_after + 1} "
                               f"skipped", steps=[o[0] for o in recent])
        return Reading("overflow", "regrowth", bad, {
            "overflow_steps": [o[0] for o in recent], "overflow_scales": [o[1] for o in recent],
            "steps_before_growth": grown_after, "first_step": recent[0][0], "scale": scale,
            "quick_growth_steps": self.quick})


class ScaleWatch:
    """A loss scale below 1 shrinks the loss: the unscaled values themselves overflow fp16."""

    def __init__(self):
        self.reset(applies=False)

    def reset(self, *, applies: bool) -> None:
        self.applies = applies
        self.highest: float | None = None
        self.check = NOT_YET if applies else check("n/a", None, "no loss scaling in this precision")

    def observe(self, scale: float | None) -> Reading | None:
        if not self.applies or scale is None:
            return None
        self.highest = scale if self.highest is None else max(self.highest, scale)
        bad = scale < 1.0
        self.check = check("alert" if bad else "ok", scale,
                           f"loss scale {scale:g}" + (" (below 1: the values overflow even unscaled)" if bad else ""),
                           threshold=1.0)
        return Reading("scale_collapse", "scale", bad, {"scale": scale, "highest_scale": self.highest})


class LossSpikes:
    """A finite loss above mean + sigma * std of the previous `window` finite losses."""

    def __init__(self, *, sigma: float, window: int):
        self.sigma = sigma
        self.window = window
        self.reset()

    def reset(self) -> None:
        self.recent: deque[float] = deque(maxlen=self.window)

    def observe(self, loss: float) -> Reading | None:
        if not math.isfinite(loss):
            return None  # non-finite losses are their own alert and would poison the statistics
        reading = None
        if len(self.recent) >= max(10, self.window // 2):
            mean = sum(self.recent) / len(self.recent)
            std = math.sqrt(sum((x - mean) ** 2 for x in self.recent) / (len(self.recent) - 1))
            limit = mean + self.sigma * std
            reading = Reading("loss_spike", "loss", loss > limit, {
                "loss": loss, "window_mean": round(mean, 4), "window_std": round(std, 4), "limit": round(limit, 4),
                "sigma": self.sigma, "window_steps": len(self.recent)})
        self.recent.append(loss)
        return reading


class LossTrend:
    """Divergence: the loss's median over a few steps, sustained well above the lowest such median.

    Training loss is noisy step to step but its short-window medians only drift
    down (or flatten) in a healthy run. When the median of the last `window`
    finite losses stays `rise` (relative) above the lowest median seen in this
    attempt for `patience` steps, the run has turned around. A median, not a
    mean: one bad batch is a loss_spike, and must not drag the window's figure
    up as if the whole run had turned (over 5 steps it takes 3 high losses).

    The lowest of many noisy medians sits below the loss's level, the more so the
    noisier the loss and the longer the run: late in a run whose loss is small
    against its step-to-step noise (a tiny vision-language model near 0.2, its
    steps 0.16 to 0.43 at batch 4), an ordinary median came out 31% above the
    lowest. So the rise must also exceed `NOISE_MARGIN` times the loss's own
    step-to-step noise, estimated over the steps before the current window (a
    turn inside the window must not raise the bar it has to clear).
    """

    NOISE_STEPS = 20  # the losses before the window the noise is estimated over (at least half of them)
    NOISE_MARGIN = 4.0

    def __init__(self, *, window: int, rise: float, patience: int = 2):
        self.window = window
        self.rise = rise
        self.patience = patience
        self.reset()

    def reset(self) -> None:
        self.losses: deque[float] = deque(maxlen=self.NOISE_STEPS + self.window)  # the noise's steps, the window
        self.best: float = math.inf
        self.best_step: int | None = None
        self.best_lr: float | None = None
        self.rising = 0
        self.check = NOT_YET

    def observe(self, step: int, loss: float, lr: float) -> Reading | None:
        if not math.isfinite(loss):
            return None
        self.losses.append(loss)
        if len(self.losses) < self.window:
            return None
        losses = list(self.losses)
        median = statistics.median(losses[-self.window:])
        noise = step_noise(losses[:-self.window], self.NOISE_STEPS // 2)
        margin = max(self.rise * self.best, self.NOISE_MARGIN * noise)
        ratio = median / self.best if self.best < math.inf and self.best > 0 else 1.0
        limit = 1 + margin / self.best if self.best < math.inf and self.best > 0 else 1 + self.rise
        self.rising = self.rising + 1 if ratio > limit else 0
        bad = self.rising >= self.patience
        if median < self.best:
            self.best, self.best_step, self.best_lr = median, step, lr
        status = "alert" if bad else ("warn" if ratio > (1 + limit) / 2 else "ok")
        self.check = check(status, round(ratio, 4), f"median loss of the last {self.window} steps {median:.4g}, "
                           f"lowest {self.best:.4g} (step {self.best_step})", threshold=round(limit, 4))
        return Reading("divergence", "trend", bad, {
            "recent_median_loss": round(median, 4), "lowest_median_loss": round(self.best, 4),
            "lowest_at_step": self.best_step, "lr_at_lowest": self.best_lr, "lr": lr, "window_steps": self.window,
            "rise": round(ratio - 1, 4), "rise_max": round(limit - 1, 4), "rising_steps": self.rising,
            "step_noise": round(noise, 4)})


def step_noise(losses: list[float], fewest: int) -> float:
    """The loss's step-to-step noise as a standard deviation, from the median absolute difference between
    neighbouring steps (robust to a spike, and to a slow trend): 0.0 from fewer than `fewest` losses."""
    if len(losses) < fewest:
        return 0.0
    differences = [abs(b - a) for a, b in zip(losses, losses[1:])]
    # For independent normal noise, |x_t - x_(t-1)| has median 0.6745 * sqrt(2) * sigma.
    return statistics.median(differences) / (0.6745 * math.sqrt(2))


class LossCollapse:
    """`loss 0.0` with a non-finite gradient norm, step after step: the pattern MiniCPM-V users report.

    A loss of exactly 0.0 whose gradients are NaN is not a model that learned everything: something
    replaced a non-finite or empty loss by zero (a masked loss whose mask kept nothing, code that
    zeroes NaN losses), and every step is skipped. `consecutive` such steps in a row are the alert.
    """

    def __init__(self, *, consecutive: int = 2):
        self.consecutive = consecutive
        self.reset()

    def reset(self) -> None:
        self.run = 0
        self.first_step: int | None = None

    def observe(self, step: int, loss: float, grad_norm: float) -> Reading | None:
        collapsed = loss == 0.0 and not math.isfinite(grad_norm)
        if not collapsed:
            was = self.run
            self.reset()
            return Reading("loss_collapse", "collapse", False) if was else None
        self.run += 1
        if self.first_step is None:
            self.first_step = step
        return Reading("loss_collapse", "collapse", self.run >= self.consecutive, {
            "loss": loss, "grad_norm": grad_norm, "steps_in_a_row": self.run, "first_step": self.first_step})
