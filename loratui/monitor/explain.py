"""Alerts in words: for each fault, the one-line message, the plain explanation and the fix.

Every function takes the numbers a detector or probe measured and returns an
Alert whose explanation says what was measured, why it is a problem, and why
the suggested fix addresses it. Precision is blamed only with evidence for it.
"""

from __future__ import annotations

from loratui.monitor import fixes
from loratui.monitor.activations import FP16_MAX
from loratui.monitor.alerts import Alert
from loratui.monitor.diagnosis import Diagnosis
from loratui.precision_facts import DTYPES

BF16_RANGE = "bf16 has fp32's range (up to 3.4e38), so it needs no loss scaling"
RANGE_WORDS = {"bf16": "bf16 reaches 3.4e38, as fp32 does", "fp32": "fp32 reaches 3.4e38"}
SIGNIFICANT_BITS = {"bfloat16": 8, "float16": 11, "float32": 24}


def _switch_fix(trainer, **kwargs) -> tuple[str, dict]:
    target = fixes.safer_precision(trainer, **kwargs)
    return ("switch_precision", {"precision": target}) if target else ("none", {})


def _target_words(trainer, fix: dict) -> str:
    """Why the suggested precision fixes it, true for the precision the run is in now."""
    precision = fix.get("precision")
    if precision == "bf16":
        return f"Restarting in bf16 fixes it: {BF16_RANGE}."
    if precision == "fp32" and trainer.precision_name == "fp16":
        # safer_precision moves fp16 to fp32 only where bf16 is not usable.
        return "Restarting in fp32 fixes it (bf16 would too, but it is not native on this device)."
    if precision == "fp32":
        return (f"Restarting in fp32 fixes it: fp32 has {trainer.precision_name}'s range with 24 significant bits "
                f"instead of {SIGNIFICANT_BITS[DTYPES[trainer.precision_name]]}.")
    return "There is no wider precision to move to."


def overflow_in_activations(trainer, step: int, peak, rows_over: int, rows: int, headroom_min: float,
                            loss_finite: bool) -> Alert:
    beyond = peak.value >= FP16_MAX
    verb = "received" if peak.where == "input" else "produced"
    suggestion, fix = _switch_fix(trainer)
    if beyond:
        message = f"fp16 overflows: {peak.module} {verb} {peak.value:.3g}, beyond fp16's maximum of 65504"
        consequence = ("so the forward pass produces inf/NaN and every such step is skipped"
                       if not loss_finite else "so those values become inf in fp16")
    else:
        message = (f"fp16 is close to overflowing: {peak.module} {verb} {peak.value:.3g}, "
                   f"only {FP16_MAX / peak.value:.2g}x below fp16's maximum of 65504")
        consequence = f"less than the {headroom_min:g}x margin a slightly larger batch or update needs"
    explanation = (f"fp16 tops out at 65504 and {peak.module} {verb} {peak.value:.3g} "
                   f"(measured in an fp32 recomputation of step {step}'s batch; {rows_over} of {rows} rows), "
                   f"{consequence}. Loss scaling cannot help: it scales gradients, not activations. "
                   + _target_words(trainer, fix))
    return Alert("overflow", "critical" if beyond else "warning", message, suggestion, fix, explanation,
                 {"module": peak.module, "where": peak.where, "value": peak.value, "fp16_max": FP16_MAX,
                  "headroom": FP16_MAX / peak.value if peak.value else None, "headroom_min": headroom_min,
                  "rows_over": rows_over, "rows": rows, "measured_in": "fp32 recomputation"}, step)


def overflow_from_training(trainer, step: int, what: str, start_step: int, start_peak, start_headroom: float,
                           peak, headroom_min: float, roomy_step: int | None, new_lr: float, how: str,
                           weight_growth) -> Alert:
    """fp16 overflows now, but the attempt started with room to spare: the updates grew the values."""
    start, new_lr, fix = fixes.lower_lr_to(trainer, new_lr, at_or_before=roomy_step)
    now = (f"; now {peak.module} {'receives' if peak.where == 'input' else 'produces'} {peak.value:.3g}"
           if peak is not None else "")
    growth = f" and the LoRA weights' norm is {weight_growth:.3g}x its start" if weight_growth else ""
    message = (f"fp16 overflows ({what}) because training grew the values: at step {start_step} the largest "
               f"activation was {start_peak.value:.3g}, {start_headroom:.3g}x below fp16's maximum{now}")
    explanation = (f"Cause: the training dynamics, not the model's range. At step {start_step} of this attempt, "
                   f"before the updates moved the weights, the largest activation ({start_peak.module} "
                   f"{start_peak.where}) was {start_peak.value:.3g}, {start_headroom:.3g}x below fp16's maximum of "
                   f"65504 (the margin needed is {headroom_min:g}x){now}{growth}. The updates grew the values "
                   f"until they passed fp16's range. Switching precision would hide the symptom and keep the cause: "
                   f"in bf16 the same rate goes on damaging the weights without an overflow to show it. Restart "
                   + (f"from step {start}, the last checkpoint while the headroom was healthy, " if start is not None
                      else "")
                   + f"with a lower peak learning rate, {new_lr:.3g} ({how}).")
    evidence = {"cause": "training_dynamics", "overflow_in": what, "start_step": start_step,
                "start_module": start_peak.module, "start_where": start_peak.where, "start_peak": start_peak.value,
                "start_headroom": start_headroom, "headroom_min": headroom_min, "fp16_max": FP16_MAX,
                "last_healthy_probe_step": roomy_step, "weight_growth": weight_growth}
    if peak is not None:
        evidence.update(module=peak.module, where=peak.where, value=peak.value,
                        headroom=FP16_MAX / peak.value if peak.value else None)
    return Alert("overflow", "critical", message, "lower_lr", fix, explanation, evidence, step)


def overflow_forecast(trainer, step: int, details: dict, new_lr: float, how: str) -> Alert:
    """A warning while the run is still healthy: the trend says fp16 overflows (or the scale collapses) soon."""
    start, new_lr, fix = fixes.lower_lr_to(trainer, new_lr, at_or_before=step)
    left, at = details["estimated_steps"], details["estimated_step"]
    if details["signal"] == "headroom":
        message = (f"fp16 will overflow in about {left:.0f} steps (near step {at}): {details['module']} peaks at "
                   f"{details['value']:.3g} and grows {details['growth_per_step']:.3g}x per step")
        trend = (f"{details['module']} peaks at {details['value']:.3g} (fp16's maximum is 65504) and has grown "
                 f"{details['growth_per_step']:.3g}x per step between this attempt's probes")
        fault = "fp16 overflows"
    else:
        message = (f"the fp16 loss scale will fall below 1 in about {left:.0f} steps (near step {at}): it is "
                   f"{details['value']:g} and falls {1 / details['growth_per_step']:.3g}x per step")
        trend = (f"The loss scale is {details['value']:g} and has fallen {1 / details['growth_per_step']:.3g}x per "
                 f"step over the last steps, after calibration: the GradScaler backs off on every overflow, so the "
                 f"gradients keep outgrowing fp16's range")
        fault = "the scale falls below 1 (a real overflow: the values pass 65504 even unscaled)"
    explanation = (f"{trend}. At this rate {fault} in about {left:.0f} steps, near step {at}. Values that grow "
                   f"step after step are the training dynamics, not the model's range: the updates are too large. "
                   f"Restart " + (f"from step {start}, a checkpoint taken before any damage, " if start is not None
                                  else "")
                   + f"with a lower peak learning rate, {new_lr:.3g} ({how}); waiting costs the steps until then "
                     f"and leaves the alert to come.")
    return Alert("overflow_forecast", "warning", message, "lower_lr", fix, explanation, details, step)


def loss_collapse(trainer, step: int, details: dict, facts: dict) -> Alert:
    """loss 0.0 with NaN gradients step after step: name the causes the probe's evidence supports."""
    precision = trainer.precision_name
    first = details["first_step"]
    evidence = {**details, "precision": precision, "probe": facts}
    message = (f"the loss is 0.0 with a non-finite gradient norm on {details['steps_in_a_row']} steps in a row "
               f"(since step {first}): every update is skipped")
    opening = (f"Since step {first} the loss has been exactly 0.0 while the gradient norm is {details['grad_norm']}: "
               f"not a model that has learned everything, but a loss replaced by zero (a masked or guarded loss) "
               f"over a computation that produced NaN, whose gradients are NaN; the trainer skips those steps. ")
    # Rows with nothing to learn (every label -100) never reach a batch: the data loader drops them.
    targets, fp32_loss = facts.get("target_tokens"), facts.get("fp32_loss")
    if precision != "fp32" and fp32_loss is not None and fp32_loss == fp32_loss and 0 < abs(fp32_loss) < 1e30:
        suggestion, fix = _switch_fix(trainer)
        explanation = (opening + f"The probe recomputed step {facts['step']}'s batch in fp32 and got a finite loss, "
                       f"{fp32_loss:.4g}, with {int(targets) if targets is not None else 'some'} target tokens: the "
                       f"NaN comes from {precision} arithmetic (in vision-language models typically vision-tower "
                       f"activations past fp16's 65504, or NaN after the resampler). " + _target_words(trainer, fix))
        return Alert("loss_collapse", "critical", message, suggestion, fix, explanation, evidence, step)
    measured = (f"The probe's fp32 recomputation of step {facts['step']}'s batch gave {fp32_loss}"
                if fp32_loss is not None else f"In {precision} there is no narrower arithmetic to blame")
    explanation = (opening + f"{measured}, and every row has labels to train on (rows without any are dropped when "
                   f"the data loads), so neither the data's labels nor the precision explains it: look at the "
                   f"model's code (an attention kernel that returns NaN for fully masked rows, a custom loss that "
                   f"zeroes NaN).")
    return Alert("loss_collapse", "critical", message, "none", {}, explanation, evidence, step)


def _skips_words(details: dict) -> str:
    if details["consecutive_skips"] >= details["consecutive_skips_max"]:
        return f"{details['consecutive_skips']} steps in a row were skipped"
    return f"{details['skipped_steps']} of the last {details['window_steps']} steps were skipped"


def overflow_in_gradients(trainer, step: int, details: dict, calibration_steps: int) -> Alert:
    """fp16 steps skipped for non-finite gradients with a finite loss: the gradients overflow fp16."""
    suggestion, fix = _switch_fix(trainer)
    what = _skips_words(details)
    if details["scale"] is None:
        message = f"fp16 gradients overflow: {what} (loss scaling is off)"
        explanation = (f"{what.capitalize()} with finite losses: with loss scaling off (amp.loss_scaling = false) "
                       f"the gradients, at their natural size, went past fp16's maximum of 65504 and became inf, "
                       f"and the trainer skips every step whose gradients are not finite, so each one is a lost "
                       f"update. " + _target_words(trainer, fix) + " Turning loss scaling on (amp.loss_scaling = "
                       f"true) also lets these steps through: the GradScaler backs its scale off on every overflow "
                       f"until the gradients fit, here below 1 (reported as scale_collapse), which then leaves "
                       f"small gradients to underflow.")
    else:
        message = f"fp16 gradients overflow: {what} after the loss scale settled"
        explanation = (f"The GradScaler skips a step whenever a gradient is inf or NaN and halves its scale; in the "
                       f"first {calibration_steps} steps that is calibration, afterwards skips should be rare. Here "
                       f"{what} with finite losses at scale {details['scale']:g}: the gradients exceed fp16's "
                       f"range and every skipped step is a lost update. " + _target_words(trainer, fix))
    return Alert("overflow", "critical", message, suggestion, fix, explanation, details, step)


def overflow_after_scale_growth(trainer, step: int, details: dict) -> Alert:
    """fp16 overflows each time the loss scale grows back: the scaler's growth interval is too short.

    The gradients fit at the scale just below (the clean steps ran there), so neither the model's range nor
    the learning rate is the cause; the scaler setting is. bf16 needs no scaler at all, so a restart in it
    (the existing key) removes the cause; the restart keeps the checkpoint's scaler, growth interval
    included, so staying in fp16 means a new run with the setting at its default.
    """
    suggestion, fix = _switch_fix(trainer)
    overflows, scales = details["overflow_steps"], details["overflow_scales"]
    grown_after = details["steps_before_growth"]
    configured = trainer.config.amp.growth_interval
    default = type(trainer.config.amp)().growth_interval
    steps = _and([f"{s} (scale {scale:g})" for s, scale in zip(overflows, scales)])
    message = (f"fp16 gradients overflow each time the loss scale grows back: it doubled after only {grown_after} "
               f"clean step(s) and the next step overflowed, at steps {_and([str(s) for s in overflows])}")
    explanation = (f"The GradScaler halves its scale on an overflow and doubles it after amp.growth_interval clean "
                   f"steps (this run: {configured}; the default is {default}, so that an overflow is followed by "
                   f"thousands of clean steps). Here the scale grew after only {grown_after} clean step(s) and "
                   f"overflowed at once, at steps {steps}: it oscillates around the largest value the gradients "
                   f"fit, and about one step in {grown_after + 1} is skipped, each a lost update. The gradients fit "
                   f"at the scale just below (the clean steps ran there), so neither the model's range nor the "
                   f"learning rate is the cause: the growth interval is too short. " + _target_words(trainer, fix)
                   + f" To stay in fp16, start a new run with amp.growth_interval at its default ({default}): a "
                     f"restart or resume keeps the checkpoint's loss scaler, this setting included.")
    evidence = {**details, "growth_interval": configured, "growth_interval_default": default}
    return Alert("overflow", "critical", message, suggestion, fix, explanation, evidence, step)


def nonfinite_gradients(trainer, step: int, details: dict, lr_factor: float) -> Alert:
    """bf16 or fp32 steps skipped for non-finite gradients with a finite loss: not the precision's range."""
    what = _skips_words(details)
    precision = trainer.precision_name
    # Every skipped step leaves the weights as they were, so the run is stuck at weights that give
    # non-finite gradients. Rolling back alone would not help: from a checkpoint the trainer replays
    # the same batches with the same weights and RNG, so it reaches the same state again. A lower
    # learning rate from the last checkpoint before the skips takes another, gentler path there.
    first = details.get("first_skipped_step")
    start, new_lr, fix = fixes.lower_lr_fix(trainer, lr_factor, at_or_before=first - 1 if first is not None else None)
    message = f"gradients are not finite: {what} in {precision}, with finite losses"
    explanation = (f"{what.capitalize()} because their gradients held inf or NaN ({details['nonfinite_grads']} "
                   f"value(s) on the last one) while the loss was finite; the trainer skips such steps, so each is "
                   f"a lost update. This is not a range problem of {precision}: {RANGE_WORDS[precision]}. "
                   f"Something in the backward pass produced them: weights or activations grown so large that "
                   f"their gradients pass that range, or an operation undefined at the values it met (a square "
                   f"root or logarithm at zero). Restart "
                   + (f"from step {start}, the last checkpoint before the first skip (step {first}), "
                      if start is not None else "")
                   + f"with a {1 / lr_factor:g}x lower peak learning rate, {new_lr:.3g}: replaying the same steps "
                     f"at the same rate would reach the same state again.")
    return Alert("nonfinite_grads", "critical", message, "lower_lr", fix, explanation, details, step)


def scale_collapse(trainer, step: int, details: dict) -> Alert:
    suggestion, fix = _switch_fix(trainer)
    message = f"fp16 loss scale collapsed to {details['scale']:g}: the values overflow even unscaled"
    explanation = (f"The GradScaler halves its scale after every overflow; it started at "
                   f"{details['highest_scale']:g} and is now {details['scale']:g}. Below 1 the loss is scaled "
                   f"down, not up, so this is a real overflow, not calibration, and small gradients now also "
                   f"underflow. " + _target_words(trainer, fix))
    return Alert("scale_collapse", "critical", message, suggestion, fix, explanation, details, step)


def nonfinite_loss(trainer, step: int, loss: float, diagnosis: Diagnosis) -> Alert:
    """The loss of a step is NaN/inf; what the replay of its batch found decides the fix."""
    failing = diagnosis.failing
    evidence = {"loss": loss, "rows": diagnosis.rows, "failing_rows": len(failing), "precision": trainer.precision_name,
                "rows_detail": [vars(row) for row in failing[:5]], "largest_fp32_activation": diagnosis.largest}
    if diagnosis.peak_module is not None:
        evidence.update(module=diagnosis.peak_module.module, where=diagnosis.peak_module.where)
    precision_rows = diagnosis.failing_only_in_run_precision
    fp32_rows = diagnosis.failing_in_fp32
    where = f"{len(failing)} of {diagnosis.rows} rows"
    if not failing:
        return Alert("nonfinite_loss", "warning", f"the loss was {loss} at step {step}, but a replay of its batch "
                     f"is finite", "none", {},
                     f"Step {step}'s loss was {loss}; replaying the same batch without dropout gives a finite loss "
                     f"in {trainer.precision_name} and in fp32, so the cause is not in the data or the precision's "
                     f"range. The step was skipped, so the adapter is intact; if it recurs, look at the model code "
                     f"(e.g. attention kernels).", evidence, step)
    if precision_rows and not fp32_rows:
        suggestion, fix = _switch_fix(trainer)
        row = precision_rows[0]
        module = diagnosis.peak_module
        module_words = (f"{module.module} {'receives' if module.where == 'input' else 'produces'} "
                        f"{diagnosis.largest:.3g}" if module else f"activations reach {diagnosis.largest:.3g}")
        precision = trainer.precision_name
        if precision == "fp16":
            message = (f"the loss is {loss} at step {step}: {where} overflow fp16 ({module_words}, beyond fp16's "
                       f"maximum of 65504)")
            cause = "fp16's range"
        else:  # bf16 has fp32's range: what fails only in bf16 is its rounding
            message = f"the loss is {loss} at step {step}: {where} fail only in {precision} ({module_words})"
            cause = (f"{precision}'s rounding (it keeps {SIGNIFICANT_BITS[DTYPES[precision]]} significant bits; "
                     f"its range is fp32's)")
        explanation = (f"In fp32 the same rows give a finite loss ({row.fp32_loss:.4g} for {row.position}: "
                       f"\"{row.text}\"), so it is {cause}, triggered by these rows: "
                       f"{module_words}. The step was skipped, so the adapter is intact, but every batch with "
                       f"such rows will fail the same way. " + _target_words(trainer, fix))
        return Alert("nonfinite_loss", "critical", message, suggestion, fix, explanation, evidence, step)
    if len(fp32_rows) == diagnosis.rows:
        last_good = fixes.checkpoint_at_or_before(trainer, step - 1)
        fix = {"from_step": last_good} if last_good is not None else {}
        message = f"the loss is {loss} at step {step} for every row, in fp32 too: the weights are damaged"
        explanation = (f"Every row of step {step}'s batch gives a non-finite loss even in fp32 arithmetic, so "
                       f"neither the data nor the precision's range explains it: the model's weights hold "
                       f"non-finite or huge values. Going back to the checkpoint at step {last_good} restores "
                       f"weights that trained normally.")
        return Alert("nonfinite_loss", "critical", message, "rollback" if fix else "none", fix, explanation,
                     evidence, step)
    row = fp32_rows[0]
    message = f"the loss is {loss} at step {step}: {len(fp32_rows)} row(s) give a non-finite loss even in fp32"
    explanation = (f"The rows, not the precision: {row.position} (\"{row.text}\") gives {row.fp32_loss} in fp32 "
                   f"arithmetic too. The step was skipped, so the adapter is intact; remove or repair these rows "
                   f"(every epoch will meet them again).")
    return Alert("nonfinite_loss", "warning", message, "none", {}, explanation, evidence, step)


def underflow(trainer, step: int, figures, underflow_max: float, fidelity_min: float, scale) -> Alert:
    suggestion, fix = _switch_fix(trainer)
    scale_words = "loss scaling off" if scale is None else f"the loss scale at {scale:g}"
    share = figures.underflow_share or 0.0
    message = (f"fp16 gradients underflow: {share:.0%} of LoRA gradient values are zero or subnormal in fp16 "
               f"(nonzero in fp32)")
    explanation = (f"fp16's smallest normal number is 6.1e-5; below it values lose precision and then flush to "
                   f"zero. With {scale_words}, {figures.underflowed} of {figures.compared} gradient values fall "
                   f"there (most in {figures.worst_module}); against an fp32 recomputation of the same batch the "
                   f"gradients have cosine {_fmt(figures.cosine)} and relative error {_fmt(figures.relative_error)}. "
                   f"Dynamic loss scaling (amp.loss_scaling = true) lifts gradients into fp16's range. "
                   + _target_words(trainer, fix))
    evidence = {"underflow_share": share, "underflow_max": underflow_max, "underflowed": figures.underflowed,
                "compared": figures.compared, "module": figures.worst_module,
                "module_underflow_share": figures.worst_module_share, "fidelity_cosine": figures.cosine,
                "fidelity_min": fidelity_min, "relative_error": figures.relative_error, "loss_scale": scale}
    return Alert("underflow", "critical" if share > 2 * underflow_max else "warning", message, suggestion, fix,
                 explanation, evidence, step)


def stale_update(trainer, step: int, stale, stale_max: float, lr: float) -> Alert:
    suggestion, fix = _switch_fix(trainer, keep_adapter_fp32=True)
    bits = SIGNIFICANT_BITS.get(stale.dtype, 24)
    resolution = stale.mean_abs_weight * 2.0 ** -(bits + 1)
    message = (f"{stale.share:.0%} of adapter updates are lost to {stale.dtype} rounding: the weights did not "
               f"change")
    explanation = (f"{stale.dtype} keeps {bits} significant bits, so an update smaller than about "
                   f"|w|*2^-{bits + 1} rounds away. The adapter's mean |w| is {stale.mean_abs_weight:.2g} "
                   f"(resolution about {resolution:.2g}) but AdamW's mean update at lr {lr:.3g} is "
                   f"{stale.mean_abs_update:.2g}: "
                   f"{stale.stale} of {stale.intended} weights the optimizer meant to move stayed where they were "
                   f"(most in {stale.worst_module}). Keep the adapter in fp32 (train.adapter_dtype = \"fp32\"): "
                   f"restarting in fp32 does that for this run.")
    evidence = {"stale_share": stale.share, "stale_max": stale_max, "stale": stale.stale, "intended": stale.intended,
                "mean_abs_weight": stale.mean_abs_weight, "mean_abs_update": stale.mean_abs_update,
                "resolution": resolution, "adapter_dtype": stale.dtype, "learning_rate": lr,
                "module": stale.worst_module, "module_stale_share": stale.worst_module_share}
    return Alert("stale_update", "warning", message, suggestion, fix, explanation, evidence, step)


def loss_spike(trainer, step: int, details: dict) -> Alert:
    message = (f"loss spiked to {details['loss']:.4g} at step {step} (mean {details['window_mean']:.4g} "
               f"± {details['window_std']:.2g} over the last {details['window_steps']} steps)")
    explanation = (f"The loss is more than {details['sigma']:g} standard deviations above its recent mean. A "
                   f"single spike is often absorbed (gradients are clipped); if the loss does not come back "
                   f"down, the divergence alert follows with a fix.")
    return Alert("loss_spike", "warning", message, "none", {}, explanation, details, step)


def divergence(trainer, step: int, details: dict, new_lr: float, how: str) -> Alert:
    """The learning rate is too high: the loss climbed back, or the weights or gradients grew out of proportion."""
    signal = details.get("signal", "loss_trend")
    onset = details["lowest_at_step"] if signal == "loss_trend" else details["first_step_over"] - 1
    start, new_lr, fix = fixes.lower_lr_to(trainer, new_lr, at_or_before=onset)
    peak = trainer.learning_rate
    if signal == "loss_trend":
        message = (f"the loss is diverging: median {details['recent_median_loss']:.4g} over the last "
                   f"{details['window_steps']} steps, up {details['rise']:.0%} from "
                   f"{details['lowest_median_loss']:.4g} at step {onset}")
        measured = f"The loss fell until step {onset} (lr {details['lr_at_lowest']:.3g}) and has climbed since"
    elif signal == "update_ratio":
        message = (f"the learning rate is too high: the LoRA weights moved {details['update_ratio']:.0%} of their "
                   f"norm in one step ({details['steps_over']} steps in a row above "
                   f"{details['update_ratio_max']:.0%})")
        measured = (f"Since step {details['first_step_over']} each step has moved the LoRA weights by more than "
                    f"{details['update_ratio_max']:.0%} of their norm (now {details['update_ratio']:.2%} at lr "
                    f"{details['lr']:.3g}; healthy fine-tuning moves them about 0.1-1% per step), so every "
                    f"update overshoots what the gradient measured; the loss cannot settle and the weights "
                    f"grow ({details['weight_growth']:.3g}x their norm at the attempt's start)")
    elif signal == "weight_growth":
        message = (f"the learning rate is too high: the LoRA weights' norm grew {details['weight_growth']:.3g}x "
                   f"since the attempt's start (alert above {details['weight_growth_max']:g}x)")
        measured = (f"The LoRA weights' norm went from {details['weight_norm_at_start']:.3g} to "
                    f"{details['weight_norm']:.3g} (the last step moved them {details['update_ratio']:.2%}); an "
                    f"adapter that healthy training shapes stays near its starting size")
    else:
        message = (f"the learning rate is too high: the gradient norm's median {details['grad_norm_median']:.3g} "
                   f"is {details['grad_norm_growth']:.3g}x its early level ({details['grad_norm_early']:.3g})")
        measured = (f"Over the last {details['window_steps']} steps the gradient norm's median rose to "
                    f"{details['grad_norm_growth']:.3g}x its level in the attempt's first steps: the updates "
                    f"have carried the weights where the loss is steeper, not flatter")
    explanation = (f"{measured}: the learning rate (peak {peak:.3g}) is too high for this model. Restart "
                   + (f"from step {start}, the last checkpoint before the trouble began (step {onset + 1}), "
                      if start is not None else "")
                   + f"with a lower peak learning rate, {new_lr:.3g} ({how}).")
    return Alert("divergence", "critical", message, "lower_lr", fix, explanation, details, step)


def _and(items: list[str]) -> str:
    """"a, b and c"."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4g}"
