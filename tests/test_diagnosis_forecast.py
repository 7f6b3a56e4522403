"""Warn before the fault, and never crash after it: the loss scale's and the headroom's trends extrapolated; a
GradScaler left to halve for ever ends the attempt cleanly at monitor.min_loss_scale."""

import math

import pytest

from helpers import make_config, steps_of
from loratui.monitor.activations import FP16_MAX, ModulePeak, Peaks
from loratui.monitor.forecast import HeadroomTrend, ScaleTrend
from test_monitor_support import FULL, of_type, scenario_config, train_monitored


def peaks(**values) -> Peaks:
    return Peaks([ModulePeak(name, "output", value, order) for order, (name, value) in enumerate(values.items())], [])


def test_the_headroom_trend_extrapolates_the_fastest_closing_module():
    trend = HeadroomTrend(horizon=100, watch_below=64)
    assert not trend.observe(10, peaks(a=2000.0, b=10.0)).bad  # one probe: no trend yet
    reading = trend.observe(20, peaks(a=4000.0, b=20.0))  # a doubles in 10 steps; b doubles too, but is roomy
    assert reading.bad and reading.details["module"] == "a output"
    # 4000 -> 65504 at 2x per 10 steps: log2(16.4) * 10 = 40.3 steps.
    assert reading.details["estimated_steps"] == pytest.approx(10 * math.log2(FP16_MAX / 4000), abs=0.1)
    assert reading.details["estimated_step"] == 20 + math.ceil(10 * math.log2(FP16_MAX / 4000))
    assert not trend.observe(30, peaks(a=3000.0, b=10.0)).bad  # shrinking: no overflow ahead
    far = HeadroomTrend(horizon=20, watch_below=64)
    far.observe(10, peaks(a=2000.0))
    assert not far.observe(20, peaks(a=2100.0)).bad  # an overflow hundreds of steps away is not a warning


def test_the_scale_trend_counts_the_halvings_left_after_calibration():
    trend = ScaleTrend(window=4, horizon=50)
    trend.reset(calibration_steps=2)
    readings = [trend.observe(step, scale) for step, scale in
                enumerate([65536.0, 16384.0, 1024.0, 512.0, 256.0, 128.0], start=1)]
    assert readings[:5] == [None] * 5  # calibration, then a window to fill
    assert readings[5].bad and readings[5].details["estimated_steps"] == pytest.approx(7.0)
    steady = ScaleTrend(window=4, horizon=50)
    steady.reset(calibration_steps=0)
    assert [steady.observe(step, 1024.0) for step in range(1, 5)][-1].bad is False
    sporadic = ScaleTrend(window=4, horizon=50)  # one overflow in the window: a backoff, not a trend
    sporadic.reset(calibration_steps=0)
    readings = [sporadic.observe(step, scale) for step, scale in enumerate([64.0, 64.0, 4.0, 4.0], start=1)]
    assert readings[-1].bad is False


def test_a_warning_foretells_the_scale_collapse_and_the_dashboard_shows_it(tmp_path):
    """fp16 at lr 5: after the overflow every step is skipped and the scale halves; once calibration is over the
    trend says when it falls below 1, and the step it really does is read from the run's own step events."""
    config = make_config(tmp_path, ["train.precision=fp16", "train.learning_rate=5.0", "train.batch_size=2",
                                    "monitor.calibration_steps=5", "train.max_steps=22", "checkpoint.every_steps=1000",
                                    f'run.output_dir="{tmp_path}"'])
    code, events, run_dir = train_monitored(config)
    assert code == 0
    warnings = [e for e in of_type(events, "alert") if e["kind"] == "overflow_forecast"]
    assert warnings, [(e["kind"], e["step"]) for e in of_type(events, "alert")]
    warning = warnings[0]
    collapse = next(e["step"] for e in steps_of(events) if e["scale"] is not None and e["scale"] < 1)
    assert warning["step"] < collapse
    assert abs(warning["evidence"]["estimated_step"] - collapse) <= 2, (warning["evidence"], collapse)
    assert warning["severity"] == "warning" and warning["suggestion"] == "lower_lr"
    assert warning["fix"]["from_step"] == 0 and warning["fix"]["learning_rate"] < 5.0
    assert f"near step {warning['evidence']['estimated_step']}" in warning["message"]

    from loratui.ui.event_parser import parse_block
    from loratui.ui.run_model import RunModel

    model = RunModel(run_name="forecast")
    model.apply(parse_block(run_dir.events.read_bytes()))
    shown = [entry for entry in model.entries if entry.alert is not None and entry.alert["kind"] == "overflow_forecast"]
    assert shown and warning["message"] in shown[0].text and shown[0].severity == "warning"
    assert shown[0].fix_key is not None  # the lower-rate key is offered with it


def test_a_loss_scale_below_the_floor_ends_the_attempt_with_a_checkpoint(tmp_path):
    """The fp16-overflow scenario (every forward overflows), from a small initial scale so the floor comes soon."""
    config = scenario_config(tmp_path, "fp16-overflow", ["train.max_steps=1000", "amp.init_scale=0.001",
                                                         "checkpoint.every_steps=1000", "train.batch_size=2"])
    check_ends_at_the_floor(config)


@pytest.mark.slow
@pytest.mark.skipif(not FULL, reason="runs under `make torture` (LORATUI_TORTURE=full)")
def test_the_fp16_overflow_scenario_left_alone_for_1000_steps_ends_cleanly(tmp_path):
    config = scenario_config(tmp_path, "fp16-overflow", ["train.max_steps=1000"])
    check_ends_at_the_floor(config)


def check_ends_at_the_floor(config) -> None:
    code, events, run_dir = train_monitored(config)
    assert code == 0 and of_type(events, "run_failed") == []
    steps = steps_of(events)
    floor = config.monitor.min_loss_scale
    last = steps[-1]
    assert last["scale"] < floor and all(e["scale"] >= floor for e in steps[:-1])
    finished = of_type(events, "run_finished")[-1]
    assert "below monitor.min_loss_scale" in finished["reason"] and "Stopped with a checkpoint" in finished["reason"]
    checkpoints = [e for e in of_type(events, "checkpoint") if e["step"] == last["step"]]
    assert checkpoints, "no checkpoint at the stop"
    assert [e["kind"] for e in of_type(events, "alert")][0] == "overflow"
