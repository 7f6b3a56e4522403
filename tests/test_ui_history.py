"""Reading events.jsonl for the dashboard: the fast block parser, min/max buckets, bounded memory."""

from __future__ import annotations

import json
import math

import numpy as np
from test_ui_support import DATA

from loratui.events.encode import encode_event
from loratui.ui.event_follower import EventFollower
from loratui.ui.event_parser import _parse_line_by_line, parse_block
from loratui.ui.history import CAPACITY, RunHistory
from loratui.ui.run_model import MAX_ENTRIES, RunModel
from loratui.ui.widgets.metric_chart import _merged

RECORDED = DATA / "ui_restart_bf16" / "events.jsonl"


def step_line(step: int, loss: float = 2.0, *, attempt: int = 0, scale=None, skipped: bool = False) -> str:
    """A step event exactly as the trainer's encoder writes it."""
    return encode_event({"type": "step", "time": 1000.0 + step, "attempt": attempt, "step": step, "loss": loss,
                         "grad_norm": 1.5, "lr": 1e-3, "precision": "fp16" if scale else "fp32", "scale": scale,
                         "skipped": skipped, "nonfinite_grads": 0, "tokens": 100, "step_time_s": 0.1,
                         "tokens_per_s": 1000.0, "epoch": 0, "mem_allocated_mib": None,
                         "mem_reserved_mib": None, "mem_peak_mib": None}) + "\n"


def model_of(path) -> RunModel:
    model = RunModel("run")
    follower = EventFollower(path, model)
    while follower.read_block():
        pass
    return model


def test_fast_parse_matches_the_line_by_line_parse_on_a_real_log():
    block = RECORDED.read_bytes()
    fast, slow = parse_block(block), _parse_line_by_line(block)
    assert len(fast.steps) == len(slow.steps) == block.count(b'"type":"step"')
    for name in ("attempt", "step", "loss", "grad_norm", "scale", "skipped", "tail_time"):
        np.testing.assert_array_equal(getattr(fast.steps, name), getattr(slow.steps, name))
    assert [e["type"] for e in fast.others] == [e["type"] for e in slow.others]
    assert fast.last_step == slow.last_step


def test_a_real_restart_log_gives_two_attempts_and_a_restart_mark():
    model = model_of(RECORDED)
    charts = model.history.chart_data()
    assert [s.attempt for s in charts.series] == [0, 1]
    assert charts.series[1].steps[0] == 21 and charts.series[1].current
    assert [(m.from_step, m.precision) for m in charts.restarts] == [(20, "bf16")]
    assert (model.state, model.step, model.precision, model.attempt) == ("finished", 60, "bf16", 1)


def test_non_finite_values_and_missing_scales(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text(step_line(1, 2.0, scale=65536.0) + step_line(2, math.nan, scale=32768.0, skipped=True)
                    + step_line(3, math.inf) + step_line(4, 1.5))
    series = model_of(path).history.chart_data().series[0]
    assert series.nonfinite_loss.tolist() == [0, 1, 1, 0]
    assert series.skipped.tolist() == [0, 1, 0, 0]
    assert series.scale_max[:2].tolist() == [65536.0, 32768.0] and np.isnan(series.scale_max[2:]).all()
    assert np.isnan(series.loss_max[1:3]).all() and series.loss_max[3] == 1.5


def test_lines_written_by_another_tool_are_read_too(tmp_path):
    """A hand-written or foreign line (other key order, spaces) falls back to the strict decoder."""
    path = tmp_path / "events.jsonl"
    foreign = json.dumps({"step": 2, "type": "step", "loss": 3.0, "grad_norm": 1.0, "attempt": 0, "time": 5.0})
    path.write_text(step_line(1, 4.0) + foreign + "\n" + json.dumps({"time": 6.0, "type": "notice",
                                                                     "message": "by hand"}) + "\n")
    model = model_of(path)
    assert model.history.chart_data().series[0].loss_max.tolist() == [4.0, 3.0]
    assert model.entries[-1].text == "by hand"


def test_a_partial_last_line_waits_for_its_newline(tmp_path):
    path = tmp_path / "events.jsonl"
    whole = step_line(1, 4.0)
    path.write_text(whole + step_line(2, 3.0)[:40])
    model = RunModel("run")
    follower = EventFollower(path, model)
    follower.read_block()
    assert model.step == 1
    with open(path, "a") as file:
        file.write(step_line(2, 3.0)[40:])
    follower.read_block()
    assert model.step == 2


def test_a_replaced_log_is_read_again_from_the_start(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text("".join(step_line(s, 4.0) for s in range(1, 50)))
    model = RunModel("run")
    follower = EventFollower(path, model)
    follower.read_block()
    path.write_text(step_line(1, 9.0))
    follower.read_block()
    assert model.step == 1 and model.history.chart_data().series[0].loss_max.tolist() == [9.0]


def test_a_single_spike_survives_a_million_steps_of_buckets():
    history = RunHistory()
    steps = np.arange(1, 1_000_001)
    loss = np.full(steps.size, 2.0)
    loss[333_333] = 50.0
    for chunk in np.array_split(np.arange(steps.size), 40):  # as blocks arrive
        history.add_steps(np.zeros(chunk.size, np.int64), steps[chunk], loss[chunk], loss[chunk],
                          np.full(chunk.size, np.nan), np.zeros(chunk.size, bool))
    series = history.chart_data().series[0]
    assert len(series.steps) <= CAPACITY and history.width == 512
    assert series.loss_max.max() == 50.0 and series.loss_min.min() == 2.0
    # ... and on a 60-column chart, after the last merge down to its pixels.
    steps_px, _low, high, _marks = _merged(series, "loss_min", "loss_max", "nonfinite_loss", None, points=120)
    assert len(steps_px) <= 120 and high.max() == 50.0


def test_memory_stays_bounded_on_a_long_log(tmp_path):
    """200,000 steps and 20,000 other events: buckets and the event list keep fixed sizes."""
    path = tmp_path / "events.jsonl"
    template = step_line(0).replace('"step":0,', '"step":%d,').replace('"loss":2.0', '"loss":%.1f')
    with open(path, "w") as file:
        for start in range(0, 200_000, 10):
            file.write("".join(template % (s, 2.0 + (s % 7) / 10) for s in range(start + 1, start + 11)))
            file.write(encode_event({"type": "checkpoint", "time": 1.0, "attempt": 0, "step": start + 10,
                                     "path": "x", "reason": "interval", "loss": 2.0}) + "\n")
    model = model_of(path)
    assert model.step == 200_000
    assert len(model.entries) == MAX_ENTRIES
    series = model.history.chart_data().series[0]
    assert len(series.steps) <= CAPACITY and series.loss_max.max() == 2.6


def test_reading_a_large_log_coarse_to_fine_ends_as_reading_it_in_order(monkeypatch):
    from loratui.ui import event_follower

    in_order = model_of(RECORDED)
    monkeypatch.setattr(event_follower, "BLOCK_BYTES", 2000)  # this small log read as a "large" one
    monkeypatch.setattr(event_follower, "LARGE_LOG", 10_000)
    coarse = model_of(RECORDED)
    assert (coarse.state, coarse.step, coarse.attempt, coarse.precision) == ("finished", 60, 1, "bf16")
    assert [e.text for e in coarse.entries] == [e.text for e in in_order.entries]
    expected, got = in_order.history.chart_data(), coarse.history.chart_data()
    assert got.restarts == expected.restarts
    for a, b in zip(expected.series, got.series):
        np.testing.assert_array_equal(a.loss_max, b.loss_max)
        np.testing.assert_array_equal(a.skipped, b.skipped)
