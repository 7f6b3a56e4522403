"""The advisor's figures and decision rule on synthetic trial events (no training: fast).

The trials themselves run for real in test_advise_measure.py and test_advise_run.py;
here every branch of the rule is pinned down with figures chosen to sit on
either side of the monitor's thresholds.
"""

import math

import pytest

from loratui.advise.decide import FAILED, HEALTHY, REJECTED, UNSUPPORTED_HERE, judge, recommend
from loratui.advise.figures import INITIAL_SCALE_PROVEN_AFTER, trial_figures
from loratui.advise.trials import TrialPlan, TrialRecord
from loratui.config.schema import MonitorSection

THRESHOLDS = MonitorSection()
PLANS = {"fp32": TrialPlan("fp32", "fp32", "fp32"), "bf16": TrialPlan("bf16", "bf16", "fp32"),
         "bf16-pure": TrialPlan("bf16-pure", "bf16", "bf16"), "fp16": TrialPlan("fp16", "fp16", "fp32")}


def steps(n, *, skipped=(), nan=(), scale=None, tokens=100, seconds=0.1, slow=()):
    """Step events as the trainer publishes them; `slow` steps take ten times longer."""
    return [{"type": "step", "step": s, "loss": math.nan if s in nan else 5.0 - s / 10, "skipped": s in skipped,
             "scale": None if scale is None else scale / 2 ** sum(1 for k in skipped if k < s),
             "tokens": tokens, "step_time_s": seconds * (10 if s in slow else 1)} for s in range(1, n + 1)]


def health(step, **checks):
    """A health event; each check given as a value or (value, extra fields)."""
    entries = {}
    for name, spec in checks.items():
        value, extra = spec if isinstance(spec, tuple) else (spec, {})
        entries[name] = {"status": "ok", "value": value, "summary": "", **extra}
    return {"type": "health", "step": step, "checks": entries}


def record(name, support="native", error=None, steps_count=6):
    return TrialRecord(PLANS[name], support, f"{name} note", steps_count, attempt=0, error=error)


def verdict(name, events, **kwargs):
    return judge(record(name, **kwargs), trial_figures(events), THRESHOLDS)


# ---------------------------------------------------------------- figures


def test_speed_is_the_median_of_unprobed_steps_after_the_first():
    events = steps(8, slow={2, 5}) + [health(1), health(3), health(6)]
    figures = trial_figures(events)
    # Timed: steps 2, 4, 5, 7, 8 (1 is warm-up, 3 and 6 probed); two of them stalled.
    assert figures.timed_steps == 5
    assert figures.tokens_per_s == pytest.approx(1000.0)


def test_worst_probe_reading_is_the_trial_figure():
    events = steps(6) + [
        health(1, fp16_headroom=(900.0, {"module": "lm_head", "where": "output", "peak": 72.8}),
               fidelity=(0.9995, {"relative_error": 0.02}), stale_update=(0.01, {"module": "a"})),
        health(3, fp16_headroom=(12.5, {"module": "model.layers.1.mlp.down_proj", "where": "input", "peak": 5240.3}),
               fidelity=(0.9990, {"relative_error": 0.01}), stale_update=(0.30, {"module": "b"})),
        health(6, fp16_headroom=(None, {}), fidelity=(None, {}), stale_update=(0.05, {"module": "c"}))]
    figures = trial_figures(events)
    assert (figures.fp16_headroom, figures.headroom_module, figures.headroom_where) == (
        12.5, "model.layers.1.mlp.down_proj", "input")
    assert figures.peak_activation == 5240.3
    assert figures.fidelity_cosine == 0.9990 and figures.relative_error == 0.02
    assert (figures.stale_share, figures.stale_module) == (0.30, "b")
    assert figures.probes == 3


def calibration(figures) -> tuple[int, int, int, int]:
    return (figures.calibration_skips, figures.steps_after_calibration, figures.skipped_after_calibration,
            figures.most_consecutive_skips)


def test_skips_at_the_very_start_are_calibration_until_a_step_runs_clean():
    # Backing off from the initial scale at once: steps 1-2 skipped, then clean.
    assert calibration(trial_figures(steps(10, skipped={1, 2}, scale=65536.0))) == (2, 8, 0, 0)
    # The built-in model at batch 2: step 1 clean (the adapter starts at zero), step 2 overflows.
    assert calibration(trial_figures(steps(10, skipped={2}, scale=65536.0))) == (1, 8, 0, 0)
    # At batch 4: steps 1-2 clean, 3-4 skipped while it backs off, then clean.
    figures = trial_figures(steps(10, skipped={3, 4}, scale=65536.0))
    assert calibration(figures) == (2, 6, 0, 0) and figures.final_scale == 16384.0
    # The first skip on the last step the initial scale is still unproven: calibration too.
    assert calibration(trial_figures(steps(5, skipped={5}, scale=65536.0))) == (1, 0, 0, 0)


def test_a_skip_once_a_scale_has_worked_is_not_calibration():
    # After calibration ended (step 4 ran clean at the backed-off scale), step 7's skip counts.
    assert calibration(trial_figures(steps(10, skipped={3, 7}, scale=65536.0))) == (1, 7, 1, 1)
    # A first skip after the initial scale ran INITIAL_SCALE_PROVEN_AFTER steps clean counts...
    first = INITIAL_SCALE_PROVEN_AFTER + 1
    assert calibration(trial_figures(steps(10, skipped={first}, scale=65536.0))) == (0, 10, 1, 1)
    # ...on the trial's last step too,
    assert calibration(trial_figures(steps(30, skipped={30}, scale=65536.0))) == (0, 30, 1, 1)
    # and a burst in mid-trial after many clean steps is overflow, every skip of it.
    figures = trial_figures(steps(30, skipped=set(range(20, 25)), scale=65536.0))
    assert calibration(figures) == (0, 30, 5, 5) and not figures.ended_in_calibration


def test_without_a_loss_scaler_nothing_is_calibration():
    assert calibration(trial_figures(steps(6, skipped={1}))) == (0, 6, 1, 1)


# ---------------------------------------------------------------- verdicts


def test_fp16_rejected_for_headroom_naming_the_module():
    events = steps(6, scale=65536.0) + [health(3, fp16_headroom=(
        0.0025, {"module": "model.layers.1.mlp.down_proj", "where": "input", "peak": 2.6e7}))]
    result = verdict("fp16", events)
    assert result.status == REJECTED
    assert "model.layers.1.mlp.down_proj input" in result.reasons[0]
    assert "monitor.fp16_headroom_min = 4x" in result.reasons[0] and "beyond fp16's max" in result.reasons[0]


def test_fp16_headroom_above_the_margin_is_healthy():
    events = steps(6, scale=65536.0) + [health(3, fp16_headroom=(4.5, {"module": "m", "where": "output",
                                                                        "peak": 14556.4}))]
    assert verdict("fp16", events).status == HEALTHY


def test_fp16_rejected_for_skips_after_calibration():
    result = verdict("fp16", steps(10, skipped={2, 5, 8}, scale=65536.0))
    assert result.status == REJECTED
    assert "skipped 2 of the 8 steps after the loss scaler's calibration" in result.reasons[0]


def test_fp16_rejected_for_a_burst_of_skips_after_many_clean_steps():
    result = verdict("fp16", steps(30, skipped=set(range(20, 25)), scale=65536.0))
    assert result.status == REJECTED
    assert result.reasons == ["skipped 5 of the 30 steps after the loss scaler's calibration (17%, "
                              "monitor.skip_rate_max = 10%): the gradients overflow a scale that worked"]


def test_fp16_with_one_skip_on_its_last_step_is_healthy():
    # Once the initial scale has worked, a last-step skip is one skip in thirty.
    assert verdict("fp16", steps(30, skipped={30}, scale=65536.0)).status == HEALTHY
    # While it is still unproven, the trial simply ended as the scaler backed off: no rejection,
    # and a recommendation of fp16 says its trial ended calibrating.
    ended = steps(4, skipped={4}, scale=65536.0)
    assert verdict("fp16", ended, steps_count=4).status == HEALTHY
    records = [record("fp16", steps_count=4), record("fp32", steps_count=4)]
    figures = {"fp16": trial_figures(ended), "fp32": trial_figures(steps(4, seconds=1.0))}
    verdicts = {r.plan.name: judge(r, figures[r.plan.name], THRESHOLDS) for r in records}
    choice = recommend(records, figures, verdicts, "fp16", "prior note")
    assert choice.trial == "fp16"
    assert ("fp16's trial ended while its loss scaler was still calibrating (its last 1 of 4 steps skipped as it "
            "backed off from amp.init_scale): longer trials (--steps) would show whether it settles") in choice.reasons


def test_fp16_rejected_when_its_last_steps_all_skip():
    # Clean at first, then monitor.consecutive_skips_max skips in a row to the end: no working scale.
    result = verdict("fp16", steps(8, skipped=set(range(4, 9)), scale=65536.0))
    assert result.status == REJECTED
    assert result.reasons == ["the loss scaler never found a working scale: from step 4 on, all 5 steps skipped "
                              "to the end of the trial (monitor.consecutive_skips_max = 5)"]
    # One short of it: the trial ended while the scaler was backing off.
    assert verdict("fp16", steps(8, skipped=set(range(5, 9)), scale=65536.0)).status == HEALTHY


def test_fp16_rejected_when_the_scaler_never_settles_or_the_scale_collapses():
    result = verdict("fp16", steps(20, skipped=set(range(1, 21)), nan=set(range(1, 21)), scale=65536.0))
    assert result.status == REJECTED
    text = " | ".join(result.reasons)
    assert "loss was not finite on 20 of 20 steps" in text
    assert "never found a working scale: all 20 steps skipped" in text
    assert "loss scale fell to 0.125" in text


def test_fp16_rejected_for_underflow():
    events = steps(6, scale=1.0) + [health(3, underflow=(0.2, {"module": "model.layers.0.mlp.up_proj"}))]
    result = verdict("fp16", events)
    assert result.status == REJECTED and "20.0% of the gradient values underflow" in result.reasons[0]
    assert "model.layers.0.mlp.up_proj" in result.reasons[0]


def test_bf16_rejected_for_low_fidelity_where_the_monitor_only_warns():
    # In a bf16 run the monitor marks this reading "warn" and raises no alert (bf16 has no underflow
    # to fix); the advisor, choosing among precisions, rejects it all the same.
    low = health(3, fidelity=(0.95, {"relative_error": 0.3}))
    low["checks"]["fidelity"]["status"] = "warn"
    result = verdict("bf16", steps(6) + [low])
    assert result.status == REJECTED
    assert "cosine 0.9500" in result.reasons[0] and "monitor.fidelity_min = 0.98" in result.reasons[0]
    assert verdict("bf16-pure", steps(6) + [low]).status == REJECTED
    at_threshold = health(3, fidelity=(THRESHOLDS.fidelity_min, {"relative_error": 0.01}))
    assert verdict("bf16", steps(6) + [at_threshold]).status == HEALTHY


def test_fidelity_rejects_fp16_too_but_never_the_fp32_reference():
    low = [health(3, fidelity=(0.95, {"relative_error": 0.3}))]
    assert verdict("fp16", steps(6, scale=65536.0) + low).status == REJECTED
    assert verdict("fp32", steps(6) + low).status == HEALTHY


def test_stale_share_rejects_only_pure_bf16_adapters():
    events = steps(6) + [health(3, stale_update=(0.6, {"module": "model.layers.2.mlp.down_proj"}))]
    pure = verdict("bf16-pure", events)
    assert pure.status == REJECTED
    assert "60% of the intended updates are lost to bf16 rounding" in pure.reasons[0]
    assert 'train.adapter_dtype = "fp32"' in pure.reasons[0]
    assert verdict("bf16", events).status == HEALTHY


def test_unsupported_and_failed_trials():
    unsupported = judge(record("bf16", support="unsupported"), trial_figures([]), THRESHOLDS)
    assert unsupported.status == UNSUPPORTED_HERE and "bf16 note" in unsupported.reasons[0]
    failed = verdict("fp32", steps(2), error="OutOfMemoryError: CUDA out of memory")
    assert failed.status == FAILED and "stopped at step 2 of 6" in failed.reasons[0]
    # Its switch failed (no attempt of its own): it never began, and says so rather than "step 0 of 6".
    never_began = TrialRecord(PLANS["fp16"], "native", "", 6, attempt=None, error="OutOfMemoryError: CUDA out of memory")
    assert judge(never_began, trial_figures([]), THRESHOLDS).reasons == [
        "could not switch to it (reloading the base model): OutOfMemoryError: CUDA out of memory"]


# ---------------------------------------------------------------- recommendation


def decide(speeds: dict, *, prior="bf16", rejected=(), support=None):
    """recommend() over trials with the given tokens/s; `rejected` trials get a low fidelity."""
    records, figures, verdicts = [], {}, {}
    for name, speed in speeds.items():
        rec = record(name, support=(support or {}).get(name, "native"))
        events = steps(6, seconds=100 / speed) + ([health(3, fidelity=(0.5, {"relative_error": 1.0}))]
                                                  if name in rejected else [])
        records.append(rec)
        figures[name] = trial_figures(events)
        verdicts[name] = judge(rec, figures[name], THRESHOLDS)
    return recommend(records, figures, verdicts, prior, "prior note")


def test_fastest_healthy_wins_and_says_the_hardware_rule_was_overruled():
    choice = decide({"bf16": 300.0, "fp16": 280.0, "fp32": 1200.0}, support={"bf16": "emulated"})
    assert (choice.trial, choice.precision, choice.adapter_dtype) == ("fp32", "fp32", "fp32")
    assert choice.reasons[0].startswith("fp32 is the fastest healthy precision here: 1200 tokens/s")
    assert "the hardware rule alone would pick bf16 (prior note)" in choice.reasons[1]
    assert "4.0x as fast" in choice.reasons[1]


def test_the_prior_stands_within_measurement_noise():
    choice = decide({"bf16": 950.0, "fp16": 1000.0, "fp32": 400.0})
    assert choice.trial == "bf16"
    assert choice.reasons[0].startswith("too close to call: bf16, the hardware rule's choice, and the fastest (fp16) "
                                        "differ by less than the measurement's spread (10%)")


def decide_two_passes(passes: dict, *, prior="bf16"):
    """recommend() over trials timed in two passes: {name: (first pass tokens/s, reverse pass tokens/s)}."""
    records, figures, verdicts = [], {}, {}
    for name, (first, second) in passes.items():
        rec = record(name)
        records.append(rec)
        figures[name] = trial_figures(steps(6, seconds=100 / first), steps(6, seconds=100 / second))
        verdicts[name] = judge(rec, figures[name], THRESHOLDS)
    return figures, recommend(records, figures, verdicts, prior, "prior note")


def test_two_passes_average_the_speed_and_their_difference_is_the_spread():
    figures, _ = decide_two_passes({"bf16": (600.0, 1000.0), "fp32": (500.0, 500.0)})
    assert figures["bf16"].tokens_per_s_passes == [600.0, 1000.0]
    assert figures["bf16"].tokens_per_s == pytest.approx(800.0) and figures["bf16"].speed_spread == pytest.approx(0.5)
    assert figures["fp32"].speed_spread == 0.0 and figures["bf16"].timed_steps == 10


def test_a_difference_inside_the_spread_is_too_close_to_call():
    """The load changed during the first pass (fp32 ran while the machine was idle): the reverse pass shows it,
    the spread covers the difference, and the hardware rule's choice stands."""
    _, choice = decide_two_passes({"bf16": (400.0, 900.0), "fp32": (1000.0, 800.0)})
    assert choice.trial == "bf16"
    assert choice.reasons[0].startswith("too close to call: bf16, the hardware rule's choice, and the fastest (fp32)")
    assert any("bf16 400 then 900; fp32 1000 then 800" in reason for reason in choice.reasons)


def test_a_difference_beyond_the_spread_decides_and_a_close_runner_up_is_named():
    _, choice = decide_two_passes({"bf16": (300.0, 310.0), "fp32": (1000.0, 1020.0), "fp16": (960.0, 990.0)})
    assert choice.trial == "fp32" and choice.reasons[0].startswith("fp32 is the fastest healthy precision here")
    assert any(r.startswith("too close to call on speed: fp32 and fp16 differ by less than the measurement's "
                            "spread") for r in choice.reasons)


def test_rejected_trials_never_win_and_their_reasons_are_listed():
    choice = decide({"bf16": 2000.0, "fp16": 100.0, "fp32": 500.0}, rejected={"bf16"})
    assert choice.trial == "fp32"
    assert any(r.startswith("not bf16: gradient fidelity too low") for r in choice.reasons)
    assert any("measured, it was rejected" in r for r in choice.reasons)


def test_emulated_winner_is_marked():
    choice = decide({"bf16": 2000.0, "fp32": 500.0}, support={"bf16": "emulated"})
    assert choice.trial == "bf16" and "bf16 is emulated on this machine (bf16 note)" in choice.reasons


def test_bf16_with_fp32_adapters_is_recommended_when_pure_bf16_goes_stale():
    records = [record("bf16"), record("bf16-pure"), record("fp32")]
    stale = [health(3, stale_update=(0.9, {"module": "m"}))]
    figures = {"bf16": trial_figures(steps(6, seconds=0.1)), "bf16-pure": trial_figures(steps(6, seconds=0.08) + stale),
               "fp32": trial_figures(steps(6, seconds=0.2))}
    verdicts = {r.plan.name: judge(r, figures[r.plan.name], THRESHOLDS) for r in records}
    choice = recommend(records, figures, verdicts, "bf16", "prior note")
    assert (choice.precision, choice.adapter_dtype) == ("bf16", "fp32")
    assert any(r.startswith("not bf16-pure: pure-bf16 adapters go stale") for r in choice.reasons)


def test_nothing_healthy_falls_back_to_fp32_and_blames_the_right_thing():
    nan_everywhere = {"bf16": 100.0, "fp32": 100.0}
    records = [record(name) for name in nan_everywhere]
    figures = {name: trial_figures(steps(6, nan={6})) for name in nan_everywhere}
    verdicts = {r.plan.name: judge(r, figures[r.plan.name], THRESHOLDS) for r in records}
    choice = recommend(records, figures, verdicts, "bf16", "prior note")
    assert choice.precision == "fp32" and "the fault is not the precision" in choice.reasons[0]
