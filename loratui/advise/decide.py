"""The decision rule: a verdict for each trial, then one recommendation with its reasons.

The hardware rule (bf16 where native, fp16 with loss scaling on older GPUs) is
the prior; the evidence decides, with the health monitor's thresholds
(config.monitor). The monitor judges one run as it goes, and alerts only where
a fix is called for; the advisor chooses among alternatives, so a precision
with a weaker reading loses to one without it even where the monitor would
only warn. A trial is rejected on:
  fp16  activation headroom under monitor.fp16_headroom_min at any probe (the
        monitor warns on it, and alerts when most rows of a batch are that
        tight); skips after the loss scaler's calibration (rate over
        monitor.skip_rate_max, or monitor.consecutive_skips_max in a row), with
        calibration timed by the advisor (figures._calibration), not the
        monitor's first monitor.calibration_steps steps, which would span a
        whole trial; a scaler that found no working scale; a loss scale below 1;
        gradient underflow over monitor.underflow_max (a monitor alert too)
  bf16 and fp16  gradient fidelity (cosine against fp32) under
        monitor.fidelity_min: a monitor alert in fp16, where it means underflow,
        and only a warning in a bf16 run, which has no underflow to fix; here a
        precision that computes the gradients more faithfully is the better choice
  pure-bf16 adapters  a stale-update share over monitor.stale_max (the monitor
        alerts on it with any adapter dtype; with fp32 adapters a stale share is
        the learning rate's doing, not the precision's, and rejects none)
  any   a loss that was not finite, or a trial that could not run to the end;
        a configuration whose estimated peak memory does not fit the device
        (advise/fit.py): it ran here, but would not run there
Of the healthy trials the fastest wins, unless the hardware rule's choice is
healthy and within the measurement's spread of it ("too close to call"): every
trial is timed in two passes, the second in reverse order (advise/trials.py),
and the spread is the larger of the two trials' relative differences between
their passes, never less than SPEED_TOLERANCE; there the prior stands. On a CPU the fastest is often
fp32: half precision there is emulated or converted op by op, and the
reasons say so. When only a quantized base fits, the recommendation is that
trial, with model.quantization and its memory figures in the first reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from loratui.advise.figures import TrialFigures
from loratui.advise.trials import TrialRecord
from loratui.hardware import EMULATED, UNSUPPORTED
from loratui.monitor.activations import FP16_MAX

HEALTHY, REJECTED, UNSUPPORTED_HERE, FAILED = "healthy", "rejected", "unsupported", "failed"
SPEED_TOLERANCE = 0.10


@dataclass
class Verdict:
    status: str  # healthy | rejected | unsupported | failed
    reasons: list[str] = field(default_factory=list)


@dataclass
class Recommendation:
    trial: str  # the winning trial's name (fp32, bf16, bf16-pure, fp16, e.g. bf16-nf4)
    precision: str
    adapter_dtype: str
    reasons: list[str]
    quantization: str = "none"  # the value for model.quantization


def judge(record: TrialRecord, figures: TrialFigures, thresholds) -> Verdict:
    """Is this trial's precision fit to train this model here? `thresholds` is config.monitor."""
    if record.support == UNSUPPORTED:
        return Verdict(UNSUPPORTED_HERE, [f"not supported on this machine: {record.support_note}"])
    if record.error:
        where = ("could not switch to it (reloading the base model)" if record.attempt is None
                 else f"stopped at step {figures.steps_done} of {record.steps}")
        return Verdict(FAILED, [f"{where}: {record.error}"])
    reasons = []
    fit = record.memory_plan
    if fit is not None and fit.fits is False:
        reasons.append(f"does not fit {fit.device}: estimated peak {_mib(fit.estimate.total)} MiB, over the "
                       f"{_mib(fit.usable)} MiB usable (its {_mib(fit.available)} MiB less a margin)")
    if figures.nonfinite_loss_steps:
        reasons.append(f"the loss was not finite on {figures.nonfinite_loss_steps} of {figures.steps_done} steps")
    if record.plan.precision == "fp16":
        reasons += _fp16_reasons(figures, thresholds)
    if record.plan.precision != "fp32" and figures.fidelity_cosine is not None \
            and figures.fidelity_cosine < thresholds.fidelity_min:
        reasons.append(f"gradient fidelity too low: cosine {figures.fidelity_cosine:.4f} against fp32 (relative "
                       f"error {_g(figures.relative_error)}), under monitor.fidelity_min = {thresholds.fidelity_min:g}")
    if record.plan.adapter_dtype == "bf16" and figures.stale_share is not None \
            and figures.stale_share > thresholds.stale_max:
        reasons.append(f"pure-bf16 adapters go stale: {figures.stale_share:.0%} of the intended updates are lost to "
                       f"bf16 rounding (worst in {figures.stale_module}), over monitor.stale_max = "
                       f"{thresholds.stale_max:.0%}; keep the adapter in fp32 (train.adapter_dtype = \"fp32\")")
    return Verdict(REJECTED if reasons else HEALTHY, reasons)


def _fp16_reasons(figures: TrialFigures, thresholds) -> list[str]:
    reasons = []
    if figures.fp16_headroom is not None and figures.fp16_headroom < thresholds.fp16_headroom_min:
        peak = figures.peak_activation
        reasons.append(f"fp16 headroom {_g(figures.fp16_headroom)}x, under monitor.fp16_headroom_min = "
                       f"{thresholds.fp16_headroom_min:g}x: {figures.headroom_module} {figures.headroom_where} peaks "
                       f"at {_g(peak)}" + (" (beyond fp16's max, 65504)" if peak is not None and peak >= FP16_MAX
                                           else " (fp16's max is 65504)"))
    if figures.ended_in_calibration:
        # Its last steps all skipped: too many in a row (or every step) is a scaler that finds no
        # scale; fewer is a trial that ended while the scaler backed off (recommend() says so).
        backing_off = figures.calibration_skips
        if backing_off == figures.steps_done or backing_off >= thresholds.consecutive_skips_max:
            since = figures.steps_done - backing_off + 1
            reasons.append(f"the loss scaler never found a working scale: "
                           + (f"all {backing_off} steps skipped" if since == 1 else
                              f"from step {since} on, all {backing_off} steps skipped to the end of the trial")
                           + f" (monitor.consecutive_skips_max = {thresholds.consecutive_skips_max})")
    elif figures.steps_after_calibration:
        rate = figures.skipped_after_calibration / figures.steps_after_calibration
        if rate > thresholds.skip_rate_max or figures.most_consecutive_skips >= thresholds.consecutive_skips_max:
            reasons.append(f"skipped {figures.skipped_after_calibration} of the {figures.steps_after_calibration} "
                           f"steps after the loss scaler's calibration ({rate:.0%}, monitor.skip_rate_max = "
                           f"{thresholds.skip_rate_max:.0%}): the gradients overflow a scale that worked")
    if figures.final_scale is not None and figures.final_scale < 1:
        reasons.append(f"the loss scale fell to {_g(figures.final_scale)}: below 1 the unscaled gradients "
                       f"themselves overflow fp16")
    if figures.underflow_share is not None and figures.underflow_share > thresholds.underflow_max:
        reasons.append(f"{figures.underflow_share:.1%} of the gradient values underflow in fp16 (worst in "
                       f"{figures.underflow_module}), over monitor.underflow_max = {thresholds.underflow_max:.0%}")
    return reasons


def recommend(records: list[TrialRecord], figures: dict[str, TrialFigures], verdicts: dict[str, Verdict],
              prior: str, prior_why: str) -> Recommendation:
    """The fastest healthy trial, the hardware rule's choice where the two are within measurement noise."""
    healthy = [r for r in records if verdicts[r.plan.name].status == HEALTHY
               and figures[r.plan.name].tokens_per_s is not None]
    rejections = [f"not {name}: {reason}" for name, verdict in verdicts.items()
                  if verdict.status != HEALTHY for reason in verdict.reasons]
    prior_trial = _prior_trial(records, prior)
    if not healthy:
        return _nothing_healthy(records, figures, rejections)

    def speed(record: TrialRecord) -> float:
        return figures[record.plan.name].tokens_per_s

    def spread(record: TrialRecord) -> float:
        return figures[record.plan.name].speed_spread or 0.0

    def close(a: TrialRecord, b: TrialRecord) -> float | None:
        """The margin two speeds must differ by to count: the larger of the passes' spreads and SPEED_TOLERANCE."""
        margin = max(SPEED_TOLERANCE, spread(a), spread(b))
        return margin if speed(a) >= speed(b) * (1 - margin) else None

    fastest = max(healthy, key=speed)
    winner = fastest
    margin = close(prior_trial, fastest) if prior_trial in healthy and prior_trial is not fastest else None
    if margin is not None:
        winner = prior_trial
    others = ", ".join(f"{r.plan.name} {speed(r):.0f}" for r in healthy if r is not winner)
    reasons = [f"{winner.plan.name} is the fastest healthy precision here: {speed(winner):.0f} tokens/s"
               + (f" (healthy too, in tokens/s: {others})" if others else "")
               if winner is fastest else
               f"too close to call: {winner.plan.name}, the hardware rule's choice, and the fastest "
               f"({fastest.plan.name}) differ by less than the measurement's spread ({margin:.0%}): "
               f"{speed(winner):.0f} against {speed(fastest):.0f} tokens/s, so the hardware rule's choice stands"]
    runner_up = max((r for r in healthy if r is not fastest), key=speed, default=None)
    if winner is fastest and runner_up is not None and close(runner_up, fastest) is not None:
        reasons.append(f"too close to call on speed: {fastest.plan.name} and {runner_up.plan.name} differ by less "
                       f"than the measurement's spread ({close(runner_up, fastest):.0%}): {speed(fastest):.0f} "
                       f"against {speed(runner_up):.0f} tokens/s")
    passes = [f"{r.plan.name} {' then '.join(f'{v:.0f}' for v in figures[r.plan.name].tokens_per_s_passes)}"
              for r in healthy if len(figures[r.plan.name].tokens_per_s_passes) == 2]
    if passes:
        reasons.append("each trial timed twice, the second pass in reverse order so that a change in the "
                       "machine's load cannot decide (tokens/s: " + "; ".join(passes) + ")")
    if prior_trial is not None and prior_trial is not winner:
        status = verdicts[prior_trial.plan.name].status
        outcome = (f"measured on this machine, {winner.plan.name} is {speed(winner) / speed(prior_trial):.1f}x as fast"
                   if status == HEALTHY else "it cannot run here" if status == UNSUPPORTED_HERE
                   else f"measured, it was {status} (see below)")
        reasons.append(f"the hardware rule alone would pick {prior_trial.plan.name} ({prior_why}); {outcome}")
    if winner.support == EMULATED:
        reasons.append(f"{winner.plan.precision} is emulated on this machine ({winner.support_note})")
    won = figures[winner.plan.name]
    if won.ended_in_calibration:
        reasons.append(f"{winner.plan.name}'s trial ended while its loss scaler was still calibrating (its last "
                       f"{won.calibration_skips} of {won.steps_done} steps skipped as it backed off from "
                       f"amp.init_scale): longer trials (--steps) would show whether it settles")
    quantized = _only_quantized_fits(winner, records)
    if quantized:
        reasons.insert(0, quantized)
    return Recommendation(winner.plan.name, winner.plan.precision, winner.plan.adapter_dtype, reasons + rejections,
                          winner.plan.quantization)


def _only_quantized_fits(winner: TrialRecord, records: list[TrialRecord]) -> str | None:
    """The first reason when the winner is the quantized trial added because the full-precision base does not fit."""
    if winner.plan.quantization == "none" or winner.memory_plan is None:
        return None
    unquantized = [r for r in records if r.plan.quantization == "none" and r.memory_plan is not None]
    if not unquantized or any(r.memory_plan.fits is not False for r in unquantized):
        return None
    fit = winner.memory_plan
    measured = (f"; measured peak here {winner.peak_memory_mib:.0f} MiB ({winner.memory_measure})"
                if winner.peak_memory_mib is not None else "")
    smallest = min(unquantized, key=lambda r: r.memory_plan.estimate.total)
    return (f'only the quantized base fits {fit.device}: model.quantization = "{winner.plan.quantization}" '
            f"with train.precision = \"{winner.plan.precision}\", estimated peak {_mib(fit.estimate.total)} MiB of "
            f"{_mib(fit.usable)} MiB usable{measured} (in full precision the smallest, {smallest.plan.name}, "
            f"needs {_mib(smallest.memory_plan.estimate.total)} MiB)")


def _prior_trial(records: list[TrialRecord], prior: str) -> TrialRecord | None:
    """The trial that is the hardware rule's choice: its precision, with the adapter dtype the config asks for."""
    candidates = [r for r in records if r.plan.precision == prior]
    return max(candidates, key=lambda r: r.plan.adapter_dtype == "bf16", default=None)


def _nothing_healthy(records: list[TrialRecord], figures: dict[str, TrialFigures],
                     rejections: list[str]) -> Recommendation:
    loss = figures["fp32"].final_loss if "fp32" in figures else None
    if loss is not None and not math.isfinite(loss):
        why = ("no precision trained cleanly, fp32 included: the fault is not the precision; check the data "
               "and the learning rate")
    else:
        why = "no precision trained cleanly here; fp32 is the safest to start from"
    fp32 = next((r for r in records if r.plan.name == "fp32"), None)
    return Recommendation("fp32", "fp32", "fp32", [why] + rejections, fp32.plan.quantization if fp32 else "none")


def _mib(size: int | None) -> str:
    from loratui.model.memory_plan import MIB

    return "-" if size is None else f"{size / MIB:.1f}"


def _g(value) -> str:
    return "-" if value is None else format(value, ".3g")
