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

from loratui.control import send_command
from loratui.monitor import explain
from loratui.monitor.activations import FP16_MAX, ActivationPeaks, Peaks, parameter_module
from loratui.monitor.alerts import AlertBook
from loratui.monitor.autopilot import Autopilot
from loratui.monitor.detectors import (LossCollapse, LossSpikes, LossTrend, Reading, ScaleRegrowth, ScaleWatch,
                                       SkipWatch, check)
from loratui.monitor.forecast import HeadroomTrend, ScaleTrend
from loratui.monitor.motion import GradNormGrowth, WeightMotion
from loratui.monitor.parts import image_tokens_per_row, is_vision_language, parts_in_fp32, summarise_parts
from loratui.monitor.gradients import GradientCapture, GradientComparison, compare_gradients, reference_gradients
from loratui.monitor.schedule import ProbeSchedule
from loratui.monitor.staleness import UpdateWatch

SCALE_TREND_WINDOW = 8  # steps of loss-scale history the forecast fits its slope to
# The loss-trend median spans at least this many examples: a median of 5 single-example losses is
# far noisier than one of 5 batches of 8, and over hundreds of steps its lowest value is an extreme
# that an ordinary window of a batch-size-1 run exceeds by chance (a false divergence alarm).
TREND_MIN_EXAMPLES = 16

CHECK_NAMES = ("fp16_headroom", "underflow", "fidelity", "stale_update", "loss_scale", "skip_rate", "loss_trend",
               "weight_motion")


def _part(trainer, module: str | None) -> str | None:
    """The model part (vision_tower, projector, language_model) a reading's module belongs to."""
    return trainer.family.part_of(module) if module else None


@dataclass
class ProbeResults:
    step: int
    peaks: Peaks | None = None
    gradients: GradientComparison | None = None
    stale_measured: bool = False
    seconds: float = 0.0
    reference_loss: object = None  # the fp32 recomputation's loss (a tensor until read)
    target_tokens: object = None  # tokens of the batch whose label is trained on (a tensor until read)
    stale: object = None  # the stale-update figures (StaleFigures), once read


class HealthMonitor:
    def __init__(self, config, bus, *, lr_factor: float):
        self.config = config
        self.bus = bus
        self.book = AlertBook(publish=bus.publish, on_alert=self._on_alert)
        self.skips = SkipWatch(window=config.skip_window, rate_max=config.skip_rate_max,
                               consecutive_max=config.consecutive_skips_max)
        self.scale = ScaleWatch()
        # A scale that grows back within 1 / skip_rate_max steps of its last change skips more often than that rate
        # allows (skip_rate_max = 0, where any skip is too many: within the skip window).
        self.regrowth = ScaleRegrowth(quick=min(config.skip_window, max(2, math.ceil(1 / config.skip_rate_max)))
                                      if config.skip_rate_max > 0 else config.skip_window)
        self.spikes = LossSpikes(sigma=config.spike_sigma, window=config.spike_window)
        self.trend = LossTrend(window=config.divergence_window, rise=config.divergence_rise)
        self.collapse = LossCollapse()
        self.probe_facts: dict = {}  # the newest probe's fp32 loss and target tokens: a collapse's evidence
        self.motion = WeightMotion(ratio_max=config.update_ratio_max, growth_max=config.weight_growth_max)
        self.grad_growth = GradNormGrowth(window=config.divergence_window, growth_max=config.grad_norm_growth_max)
        self.headroom_trend = HeadroomTrend(horizon=config.forecast_horizon,
                                            watch_below=16 * config.fp16_headroom_min)
        self.scale_trend = ScaleTrend(window=SCALE_TREND_WINDOW, horizon=config.forecast_horizon)
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
        self.stop_requested = False
        self.baseline: tuple[int, object] | None = None  # (step, the attempt's first measured largest activation)
        self.last_roomy_step: int | None = None  # the last probe whose headroom was still above the margin

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
        train = trainer.config.train
        examples_per_step = train.batch_size * train.grad_accum * trainer.world_size
        self.trend.window = max(self.config.divergence_window, math.ceil(TREND_MIN_EXAMPLES / examples_per_step))
        # Skips are watched in every precision (the trainer skips any step with non-finite gradients);
        # only a loss scaler has a calibration whose skips are expected.
        self.skips.reset(kind="overflow" if trainer.precision_name == "fp16" else "nonfinite_grads",
                         calibration_steps=self.config.calibration_steps if loss_scaling else 0)
        self.scale.reset(applies=loss_scaling)
        # One read of the scaler's count of clean steps at its level (a restored checkpoint's), once per attempt.
        self.regrowth.reset(applies=loss_scaling, clean_steps_counted=int(
            trainer.precision.scaler.state_dict().get("_growth_tracker", 0)) if loss_scaling else 0)
        self.scale_trend.reset(calibration_steps=self.config.calibration_steps if loss_scaling else 0)
        self.headroom_trend.reset()
        self.spikes.reset()
        self.trend.reset()
        self.collapse.reset()
        self.probe_facts = {}
        self.motion.reset(trainer.params)
        self.grad_growth.reset()
        self.schedule.start_attempt(trainer.step)
        self.stop_requested = False
        self.baseline = None
        self.last_roomy_step = None
        self.latest_headroom = math.inf
        self.param_names = [parameter_module(name) for name, param in trainer.unwrapped_model.named_parameters()
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
        if "labels" in batch:
            self.probe.target_tokens = (batch["labels"][..., 1:] != -100).sum()  # shifted, as the loss sees them
        if trainer.precision_name in ("fp16", "bf16"):
            model = trainer.unwrapped_model
            part_of = trainer.family.part_of
            recorder = ActivationPeaks(model, part_of=part_of)
            self.probe.reference_loss, reference = reference_gradients(
                model, batch, trainer.params, self.capture.rng_state, recorder,
                image_tokens_per_row(trainer.family, trainer.tokenizer, batch))
            scaler = trainer.precision.scaler
            self.probe.peaks = recorder.peaks()
            self.probe.gradients = compare_gradients(
                self.capture.grads, reference, self.param_names, scale=scaler.get_scale() if scaler else 1.0,
                accum=trainer.config.train.grad_accum, count_underflow=trainer.precision_name == "fp16",
                part_of=part_of, fp32_parts=parts_in_fp32(trainer))
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

    def after_update(self, trainer, step: int, lr: float, skipped: bool) -> None:
        """Every step, after optimizer.step: measurements that stay on the device until the next transfer."""
        self.motion.measure(step, trainer.params, lr, skipped)

    def carried_figures(self):
        """A device tensor for the trainer's next one-transfer-per-step read (the weights' motion), or None."""
        return self.motion.carried()

    def after_step(self, trainer, figures) -> None:
        step = trainer.step
        probe, self.probe = self.probe, None
        self.schedule.observe(step, figures.seconds, probe.seconds if probe is not None else None)
        self._report_refusals(trainer)
        checks = self._probe_checks(trainer, figures, probe) if probe is not None else None
        if probe is not None:
            self._note_probe_facts(probe)
        self._judge_loss(trainer, step, figures)
        readings = (self.skips.observe(step, figures.loss, figures.skipped, figures.scale,
                                       figures.nonfinite_grads),
                    self.scale.observe(figures.scale),
                    self.regrowth.observe(step, figures.loss, figures.skipped, figures.scale),
                    self.spikes.observe(figures.loss),
                    self.trend.observe(step, figures.loss, figures.lr),
                    self.motion.observe(figures.carried),
                    self.grad_growth.observe(step, figures.grad_norm, figures.skipped),
                    self.scale_trend.observe(step, figures.scale),
                    self.collapse.observe(step, figures.loss, figures.grad_norm))
        for reading in readings:
            if reading is not None:
                self._judge(trainer, step, reading)
        self._end_below_scale_floor(trainer, step, figures.scale)
        if checks is not None:
            checks.update(loss_scale=self.scale.check, skip_rate=self.regrowth.check or self.skips.check,
                          loss_trend=self.trend.check, weight_motion=self.motion.check)
            self.last_checks = {name: checks[name] for name in CHECK_NAMES}
            # A vision-language run's probe also says where each figure stands in every part of the model.
            parts = summarise_parts(trainer, self.config, checks, probe.peaks, probe.gradients, probe.stale) \
                if is_vision_language(trainer.family) else None
            self.bus.publish("health", step=step, precision=trainer.precision_name, checks=self.last_checks,
                             probe_seconds=round(probe.seconds, 4), next_probe_step=self.schedule.next_step,
                             open_alerts=self.book.open_kinds(), **({"parts": parts} if parts else {}))

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
        if reading.kind == "overflow_forecast" and self.book.is_open("scale_collapse"):
            return  # what it foretold is here
        if reading.kind == "overflow_forecast" and not self._weights_run_away():
            # A trend is only read as the training dynamics (and the fix as the rate) with the weights' evidence:
            # peaks that differ from batch to batch (rows with outliers) and a scaler set to grow every step
            # (amp.growth_interval = 1) move the same figures, and the other alerts judge those.
            return
        if reading.source == "regrowth":
            self.book.bad(reading.kind, reading.source, lambda: explain.overflow_after_scale_growth(
                trainer, step, reading.details), healthy_needed=self.config.resolve_after)
            return
        build = {
            "overflow": lambda: self._overflow_cause(trainer, step, "gradients", None) or
            explain.overflow_in_gradients(trainer, step, reading.details, self.skips.calibration_steps),
            "nonfinite_grads": lambda: explain.nonfinite_gradients(trainer, step, reading.details, self.lr_factor),
            "scale_collapse": lambda: self._overflow_cause(trainer, step, "loss scale", None) or
            explain.scale_collapse(trainer, step, reading.details),
            "loss_spike": lambda: explain.loss_spike(trainer, step, reading.details),
            "loss_collapse": lambda: explain.loss_collapse(trainer, step, reading.details, self.probe_facts),
            "overflow_forecast": lambda: explain.overflow_forecast(trainer, step, reading.details,
                                                                   *self._lower_rate(trainer)),
            "divergence": lambda: explain.divergence(trainer, step, reading.details, *self._lower_rate(trainer)),
        }[reading.kind]
        self.book.bad(reading.kind, reading.source, build, healthy_needed=self._healthy_needed(reading.source))

    def _weights_run_away(self) -> bool:
        """The learning rate's evidence: the LoRA weights moving too fast (WeightMotion) or grown 2x."""
        return self.motion.first_over_step is not None or (self.motion.check.get("growth") or 1.0) >= 2

    def _note_probe_facts(self, probe: ProbeResults) -> None:
        """Read the probe's fp32 loss and target count (one transfer, probe steps only)."""
        import torch

        values = [probe.reference_loss, probe.target_tokens]
        present = [v for v in values if v is not None]
        if not present:
            return
        read = iter(torch.stack([v.detach().float().cpu() for v in present]).tolist())
        self.probe_facts = {"step": probe.step, **{name: next(read) for name, v in
                                                   zip(("fp32_loss", "target_tokens"), values) if v is not None}}

    def _overflow_cause(self, trainer, step: int, what: str, peak):
        """An overflow that the updates caused: the alert that says so, with the fix; None for the others.

        The first probe of an attempt measures the model before its updates moved it (step 1's forward runs
        on the starting weights). Headroom above the margin there and an overflow now: the training dynamics
        grew the values, so the fix is the learning rate, from before they grew. Headroom already short at the
        start is the model's own range (bf16-pretrained outliers), for which the precision is the fix.
        """
        if self.baseline is None or trainer.precision_name != "fp16":
            return None
        start_step, start_peak = self.baseline
        start_headroom = FP16_MAX / start_peak.value if start_peak.value > 0 else math.inf
        if start_headroom < self.config.fp16_headroom_min:
            return None
        # And evidence that the values did grow: weights moving too fast or grown, or the headroom shrunk. Without
        # it an overflow from healthy values (one bad batch, a bug) is not blamed on the learning rate.
        if not (self._weights_run_away() or self.latest_headroom * 2 <= start_headroom):
            return None
        rate, how = self._lower_rate(trainer)
        onset = self.motion.first_over_step
        roomy = self.last_roomy_step if onset is None else min(onset - 1, self.last_roomy_step or onset - 1)
        return explain.overflow_from_training(trainer, step, what, start_step, start_peak, start_headroom, peak,
                                              self.config.fp16_headroom_min, roomy, rate, how,
                                              self.motion.check.get("growth"))

    def _lower_rate(self, trainer) -> tuple[float, str]:
        """The peak learning rate a learning-rate fix suggests, and how it was computed (in words).

        Computed from how far the weights moved per unit of rate (WeightMotion), at most half the current
        peak; the configured factor (monitor.divergence_lr_factor) when no update was measured.
        """
        target = self.config.update_ratio_target
        computed = self.motion.suggested_rate(target)
        if computed is None:
            factor = self.config.divergence_lr_factor
            return float(f"{trainer.learning_rate * factor:.3g}"), f"{1 / factor:g}x lower"
        return min(computed, float(f"{trainer.learning_rate * 0.5:.2g}")), (
            f"computed so that a step moves the LoRA weights about {target:.1%} of their norm, as measured on "
            f"this run")

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
            alert = self._overflow_cause(trainer, step, "activations", diagnosis.peak_module) or \
                explain.overflow_in_activations(trainer, step, diagnosis.peak_module,
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
        checks["stale_update"] = self._stale(trainer, step, figures, probe)
        return checks

    def _headroom(self, trainer, step: int, figures, peaks: Peaks | None) -> dict:
        if peaks is not None:
            peaks = peaks.without(parts_in_fp32(trainer))  # a part kept in fp32 never holds an fp16 value
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
        if self.baseline is None:
            self.baseline = (step, largest)
        self.latest_headroom = headroom
        if headroom >= minimum:
            self.last_roomy_step = step
        extra = dict(module=named.module, part=_part(trainer, named.module), where=named.where, peak=named.value,
                     largest_module=largest.module,
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
            self.book.bad("overflow", "probe:headroom", lambda: self._overflow_cause(
                trainer, step, "activations", named) or explain.overflow_in_activations(
                trainer, step, named, rows_tight, rows, minimum, loss_finite=math.isfinite(figures.loss)),
                healthy_needed=1)
        else:
            self.book.healthy("overflow", "probe:headroom", step)
            self._judge(trainer, step, self.headroom_trend.observe(step, peaks))
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
                          f"fp16", module=gradients.worst_module, part=_part(trainer, gradients.worst_module),
                          threshold=config.underflow_max)
        return {"underflow": underflow, "fidelity": fidelity}

    def _stale(self, trainer, step: int, figures, probe: ProbeResults) -> dict:
        if not probe.stale_measured:
            return check("n/a", None, "optimizer state is not Adam-like")
        if figures.skipped:
            self.updates.discard()
            return check("n/a", None, "step skipped: no update to measure")
        stale = probe.stale = self.updates.figures(trainer.family.part_of)
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
                     module=stale.worst_module, part=_part(trainer, stale.worst_module),
                     threshold=self.config.stale_max)

    def _end_below_scale_floor(self, trainer, step: int, scale: float | None) -> None:
        """A loss scale under monitor.min_loss_scale can no longer train: end the attempt with a checkpoint.

        GradScaler halves its scale on every overflow, without a floor (DeepSpeed holds min_loss_scale). Left
        alone, a run whose every step overflows halves it to 0.0 and would go on skipping every step. The
        weights are intact (skipped steps change nothing), so a stop, which saves a checkpoint, keeps them for
        a restart with the alert's fix; the stop's reason says why in run_finished.
        """
        floor = self.config.min_loss_scale
        if scale is None or scale >= floor or self.stop_requested or not trainer.is_main:
            return
        self.stop_requested = True
        reason = (f"the fp16 loss scale fell to {scale:.3g} at step {step}, below monitor.min_loss_scale "
                  f"({floor:.3g}): the scaled loss is smaller than fp16's smallest value, so no step can train. "
                  f"Stopped with a checkpoint; restart it with the open alert's fix")
        self.bus.publish("notice", step=step, source="monitor", message=reason)
        send_command(trainer.run_dir.control, "stop", reason=reason)

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
