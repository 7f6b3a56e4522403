"""The health monitor the trainer calls: probes on some steps, detectors on every step, alerts, autopilot.

Every step costs only Python arithmetic on the figures the trainer already
read in its one host sync. Probe steps (the first `probe_first_steps` of
every attempt, so that a fault a config or a restart brings shows at once,
then every `probe_every` steps, further apart when a probe would take more than
`probe_budget` of the training time: schedule.py) add an fp32 recomputation of the last
micro-batch in fp16 and bf16 runs (headroom, underflow, fidelity) and a copy of
the adapter around the optimizer step (stale updates). A non-finite loss
adds a replay of that step's batch to say why. A `health` event reports
every probe; alerts open and close as episodes (see alerts.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from loratui.monitor import explain
from loratui.monitor.activations import FP16_MAX, ActivationPeaks, Peaks, display_name
from loratui.monitor.alerts import AlertBook
from loratui.monitor.autopilot import Autopilot
from loratui.monitor.detectors import LossSpikes, LossTrend, Reading, ScaleWatch, SkipWatch, check
from loratui.monitor.gradients import GradientCapture, GradientComparison, compare_gradients, reference_gradients
from loratui.monitor.schedule import ProbeSchedule
from loratui.monitor.staleness import UpdateWatch

CHECK_NAMES = ("fp16_headroom", "underflow", "fidelity", "stale_update", "loss_scale", "skip_rate", "loss_trend")


@dataclass
class ProbeResults:
    step: int
    peaks: Peaks | None = None
    gradients: GradientComparison | None = None
    stale_measured: bool = False
    seconds: float = 0.0


class HealthMonitor:
    def __init__(self, config, bus, *, lr_factor: float):
        self.config = config
        self.bus = bus
        self.book = AlertBook(publish=bus.publish, on_alert=self._on_alert)
        self.skips = SkipWatch(window=config.skip_window, rate_max=config.skip_rate_max,
                               consecutive_max=config.consecutive_skips_max)
        self.scale = ScaleWatch()
        self.spikes = LossSpikes(sigma=config.spike_sigma, window=config.spike_window)
        self.trend = LossTrend(window=config.divergence_window, rise=config.divergence_rise)
        self.capture = GradientCapture()
        self.updates = UpdateWatch()
        self.lr_factor = lr_factor
        self.autopilot = Autopilot(config.autopilot, lower_lr_factor=lr_factor)
        self.trainer = None
        self.probe: ProbeResults | None = None
        self.step_start_position = None
        self.schedule = ProbeSchedule(every=config.probe_every, first_steps=config.probe_first_steps,
                                      budget=config.probe_budget)
        self.refusals: list[str] = []
        self.last_checks: dict = {}

    # ------------------------------------------------------------ trainer hooks

    def attach(self, trainer) -> None:
        self.trainer = trainer
        self.start_attempt(trainer)

    def on_restart(self, trainer) -> None:
        self.book.resolve_all(trainer.step, f"restart from step {trainer.step} ({trainer.precision_name}, "
                                            f"lr {trainer.learning_rate:g})")
        self.autopilot.restarted()
        self.start_attempt(trainer)

    def start_attempt(self, trainer) -> None:
        loss_scaling = trainer.precision.scaler is not None
        # Skips are watched in every precision (the trainer skips any step with non-finite gradients);
        # only a loss scaler has a calibration whose skips are expected.
        self.skips.reset(kind="overflow" if trainer.precision_name == "fp16" else "nonfinite_grads",
                         calibration_steps=self.config.calibration_steps if loss_scaling else 0)
        self.scale.reset(applies=loss_scaling)
        self.spikes.reset()
        self.trend.reset()
        self.schedule.start_attempt(trainer.step)
        self.param_names = [display_name(name) for name, param in trainer.unwrapped_model.named_parameters()
                            if param.requires_grad]

    def wants_probe(self, trainer, step: int) -> bool:
        self.step_start_position = trainer.stream.position  # replaced, never mutated: safe to keep
        due = self.schedule.due(step)
        self.probe = ProbeResults(step) if due else None
        if due:
            self.capture.start(trainer.model, trainer.params)
        return due

    def probe_after_backward(self, trainer, batch) -> None:
        started = time.perf_counter()
        self.capture.finish()
        if trainer.precision_name in ("fp16", "bf16"):
            model = trainer.unwrapped_model
            recorder = ActivationPeaks(model)
            _, reference = reference_gradients(model, batch, trainer.params, self.capture.rng_state, recorder)
            scaler = trainer.precision.scaler
            self.probe.peaks = recorder.peaks()
            self.probe.gradients = compare_gradients(
                self.capture.grads, reference, self.param_names, scale=scaler.get_scale() if scaler else 1.0,
                accum=trainer.config.train.grad_accum, count_underflow=trainer.precision_name == "fp16")
        self.capture.grads = []
        self.probe.seconds += time.perf_counter() - started

    def probe_before_update(self, trainer) -> None:
        started = time.perf_counter()
        self.updates.before(trainer.optimizer.optimizer, trainer.params)
        self.probe.seconds += time.perf_counter() - started

    def probe_after_update(self, trainer) -> None:
        started = time.perf_counter()
        self.probe.stale_measured = self.updates.after(trainer.optimizer.optimizer, trainer.params, self.param_names)
        self.probe.seconds += time.perf_counter() - started

    def after_step(self, trainer, figures) -> None:
        step = trainer.step
        probe, self.probe = self.probe, None
        self.schedule.observe(step, figures.seconds, probe.seconds if probe is not None else None)
        self._report_refusals(trainer)
        checks = self._probe_checks(trainer, figures, probe) if probe is not None else None
        self._judge_loss(trainer, step, figures)
        readings = (self.skips.observe(step, figures.loss, figures.skipped, figures.scale,
                                       figures.nonfinite_grads),
                    self.scale.observe(figures.scale),
                    self.spikes.observe(figures.loss),
                    self.trend.observe(step, figures.loss, figures.lr))
        for reading in readings:
            if reading is not None:
                self._judge(trainer, step, reading)
        if checks is not None:
            checks.update(loss_scale=self.scale.check, skip_rate=self.skips.check, loss_trend=self.trend.check)
            self.last_checks = {name: checks[name] for name in CHECK_NAMES}
            self.bus.publish("health", step=step, precision=trainer.precision_name, checks=self.last_checks,
                             probe_seconds=round(probe.seconds, 4), next_probe_step=self.schedule.next_step,
                             open_alerts=self.book.open_kinds())

    def health_summary(self) -> dict:
        return {"open_alerts": self.book.open_kinds(), "alerts_raised": self.book.raised,
                "checks": {name: entry["status"] for name, entry in self.last_checks.items()},
                "autopilot_actions": self.autopilot.taken}

    # ------------------------------------------------------------- judgement

    def _judge(self, trainer, step: int, reading: Reading) -> None:
        if not reading.bad:
            self.book.healthy(reading.kind, reading.source, step)
            return
        if reading.kind == "scale_collapse" and self.book.is_open("overflow", "nonfinite_loss"):
            return  # the collapse follows from an overflow already reported
        if reading.kind == "loss_spike" and self.book.is_open("divergence"):
            return
        build = {
            "overflow": lambda: explain.overflow_in_gradients(trainer, step, reading.details,
                                                              self.skips.calibration_steps),
            "nonfinite_grads": lambda: explain.nonfinite_gradients(trainer, step, reading.details, self.lr_factor),
            "scale_collapse": lambda: explain.scale_collapse(trainer, step, reading.details),
            "loss_spike": lambda: explain.loss_spike(trainer, step, reading.details),
            "divergence": lambda: explain.divergence(trainer, step, reading.details,
                                                     self.config.divergence_lr_factor),
        }[reading.kind]
        self.book.bad(reading.kind, reading.source, build, healthy_needed=self._healthy_needed(reading.source))

    def _healthy_needed(self, source: str) -> int:
        return 1 if source.startswith("probe") else self.config.resolve_after

    def _judge_loss(self, trainer, step: int, figures) -> None:
        """A non-finite loss: explained by an open overflow, or replayed to find out why."""
        if math.isfinite(figures.loss):
            for kind in ("nonfinite_loss", "overflow"):
                self.book.healthy(kind, "loss", step)
            return
        if self.book.is_open("overflow", "nonfinite_loss"):
            for kind in ("overflow", "nonfinite_loss"):
                self.book.bad(kind, "loss", lambda: None, healthy_needed=self.config.resolve_after)
            return
        from loratui.monitor.diagnosis import diagnose

        diagnosis = diagnose(trainer, self.step_start_position, limit=FP16_MAX)
        structural = (trainer.precision_name == "fp16" and diagnosis.peak_module is not None
                      and diagnosis.largest >= FP16_MAX
                      and len(diagnosis.failing_only_in_run_precision) * 2 > diagnosis.rows)
        if structural:
            alert = explain.overflow_in_activations(trainer, step, diagnosis.peak_module,
                                                    len(diagnosis.failing_only_in_run_precision), diagnosis.rows,
                                                    self.config.fp16_headroom_min, loss_finite=False)
        else:
            alert = explain.nonfinite_loss(trainer, step, figures.loss, diagnosis)
        self.book.open(alert, "loss", self.config.resolve_after)

    def _probe_checks(self, trainer, figures, probe: ProbeResults) -> dict:
        """Judge what the probes measured on this step; returns the probe entries of the health event."""
        step = trainer.step
        precision = trainer.precision_name
        checks = {"fp16_headroom": self._headroom(trainer, step, figures, probe.peaks)}
        gradients = probe.gradients
        if gradients is None:
            checks["underflow"] = check("n/a", None, f"no fp16 gradients in {precision}")
            checks["fidelity"] = check("n/a", None, "fp32 is the reference itself")
        else:
            checks.update(self._gradient_checks(trainer, step, figures, gradients))
        checks["stale_update"] = self._stale(trainer, step, figures, probe.stale_measured)
        return checks

    def _headroom(self, trainer, step: int, figures, peaks: Peaks | None) -> dict:
        if peaks is None or peaks.worst is None:
            return check("n/a", None, "measured only in fp16 and bf16 runs (fp32 recomputation)")
        largest = peaks.worst
        headroom = FP16_MAX / largest.value if largest.value > 0 else math.inf
        minimum = self.config.fp16_headroom_min
        rows = len(peaks.row_peaks)
        rows_tight = len(peaks.rows_over(FP16_MAX / minimum))
        rows_beyond = len(peaks.rows_over(FP16_MAX))
        # The module named is the first past the margin (later modules inherit its values), else the
        # largest; `peak` is always the named module's own value. The check's value, the headroom,
        # is measured against the largest activation anywhere: that one is reported as largest_*.
        named = peaks.first_over(FP16_MAX / minimum) or largest
        extra = dict(module=named.module, where=named.where, peak=named.value, largest_module=largest.module,
                     largest_where=largest.where, largest_peak=largest.value, threshold=minimum,
                     rows_over=rows_tight, rows=rows)
        summary = (f"{named.module} {named.where} peaks at {named.value:.3g}: "
                   f"{FP16_MAX / named.value if named.value else math.inf:.3g}x headroom to fp16's 65504")
        if named is not largest:
            summary += f" (largest: {largest.module} {largest.where}, {largest.value:.3g})"
        if trainer.precision_name != "fp16":
            return check("n/a", round(headroom, 4), f"not running fp16 ({summary})", **extra)
        # Most rows past the margin: the model itself is too close to fp16's limit. A few rows: those
        # rows are (a NaN loss from them is judged as nonfinite_loss, with the rows named).
        structural = rows_tight * 2 > rows
        if structural:
            self.book.bad("overflow", "probe:headroom", lambda: explain.overflow_in_activations(
                trainer, step, named, rows_tight, rows, minimum, loss_finite=math.isfinite(figures.loss)),
                healthy_needed=1)
        else:
            self.book.healthy("overflow", "probe:headroom", step)
        status = "alert" if structural else ("warn" if rows_tight else "ok")
        if rows_beyond and not structural:
            summary += f"; {rows_beyond} of {rows} rows go past 65504"
        return check(status, round(headroom, 4), summary, **extra)

    def _gradient_checks(self, trainer, step: int, figures, gradients: GradientComparison) -> dict:
        config = self.config
        cosine = gradients.cosine
        fp16 = trainer.precision_name == "fp16"
        fidelity_low = cosine is not None and cosine < config.fidelity_min
        # Low fidelity is an underflow alert in fp16; bf16 has no underflow, so there it is a warning only.
        low_status = "alert" if fp16 else "warn"
        fidelity = check("n/a" if cosine is None else (low_status if fidelity_low else "ok"),
                         None if cosine is None else round(cosine, 6),
                         "gradients not finite on this step" if cosine is None else
                         f"cosine {cosine:.6f} against fp32, relative error {gradients.relative_error:.3g}",
                         relative_error=gradients.relative_error, threshold=config.fidelity_min)
        if not fp16:
            return {"underflow": check("n/a", None, f"{trainer.precision_name} has fp32's range"),
                    "fidelity": fidelity}
        if cosine is None:  # the gradients overflowed on this step: what underflowed says nothing
            return {"underflow": check("n/a", None, "gradients not finite on this step"), "fidelity": fidelity}
        share = gradients.underflow_share
        bad = (share is not None and share > config.underflow_max) or fidelity_low
        if bad:
            self.book.bad("underflow", "probe:gradients", lambda: explain.underflow(
                trainer, step, gradients, config.underflow_max, config.fidelity_min, figures.scale),
                healthy_needed=1)
        else:
            self.book.healthy("underflow", "probe:gradients", step)
        underflow = check("alert" if share is not None and share > config.underflow_max else "ok",
                          None if share is None else round(share, 6),
                          f"{gradients.underflowed} of {gradients.compared} gradient values zero or subnormal in "
                          f"fp16", module=gradients.worst_module, threshold=config.underflow_max)
        return {"underflow": underflow, "fidelity": fidelity}

    def _stale(self, trainer, step: int, figures, measured: bool) -> dict:
        if not measured:
            return check("n/a", None, "optimizer state is not Adam-like")
        if figures.skipped:
            self.updates.discard()
            return check("n/a", None, "step skipped: no update to measure")
        stale = self.updates.figures()
        over = stale.share > self.config.stale_max
        # Only half-precision adapter weights make this an alert: the fix is fp32 weights. fp32 weights
        # lose updates only when the update is ~1e-7 of the weight (a cosine schedule's last steps),
        # which the schedule meant to be negligible; shown as a warning, never an alert.
        bad = over and stale.dtype != "float32"
        if bad:
            self.book.bad("stale_update", "probe:stale", lambda: explain.stale_update(
                trainer, step, stale, self.config.stale_max, figures.lr), healthy_needed=1)
        else:
            self.book.healthy("stale_update", "probe:stale", step)
        return check("alert" if bad else ("warn" if over else "ok"), round(stale.share, 6),
                     f"{stale.stale} of {stale.intended} intended updates lost to {stale.dtype} rounding",
                     module=stale.worst_module, threshold=self.config.stale_max)

    # ------------------------------------------------------------- autopilot

    def _on_alert(self, alert) -> None:
        self.autopilot.consider(self.trainer, alert)

    def on_event(self, event: dict) -> None:
        """Every bus event (called under the bus lock: never publishes from here)."""
        if event.get("type") == "control":
            refusal = self.autopilot.acknowledged(event)
            if refusal:
                self.refusals.append(refusal)

    def _report_refusals(self, trainer) -> None:
        while self.refusals:
            trainer.bus.publish("notice", step=trainer.step, source="autopilot",
                                message=f"autopilot: the trainer refused the fix: {self.refusals.pop(0)}")
