"""Reading a long log with helper processes: the same model as reading it alone, even when a helper dies."""

from __future__ import annotations

import numpy as np
import pytest
from test_ui_history import RECORDED, model_of, step_line

from loratui.events.encode import encode_event
from loratui.ui import event_follower, parse_helpers
from loratui.ui.event_parser import parse_block
from loratui.ui.parse_helpers import ParseHelper


def health_line(step: int) -> str:
    return encode_event({"type": "health", "time": 1.0, "attempt": 0, "step": step,
                         "checks": {"fidelity": {"status": "ok", "value": 1.0}}}) + "\n"


def test_a_block_parsed_by_a_helper_equals_one_parsed_here(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text("".join(step_line(s) + (health_line(s) if s % 5 == 0 else "") for s in range(1, 41)))
    helper = ParseHelper()
    try:
        helper.ask(7, str(path), 0, path.stat().st_size, ("health",))
        index, parsed = helper.answer()
    finally:
        helper.close()
    here = parse_block(path.read_bytes(), latest_only=("health",))
    assert index == 7 and parsed.others == here.others and parsed.last_step == here.last_step
    np.testing.assert_array_equal(parsed.steps.loss, here.steps.loss)


def test_only_the_last_valid_event_of_a_superseded_type_is_kept():
    block = (health_line(1) + step_line(1) + health_line(2) + '{"type":"health","step":3,"broken}\n'
             + step_line(2)).encode()
    parsed = parse_block(block, latest_only=("health",))
    assert [e["step"] for e in parsed.others] == [2]
    assert [e["step"] for e in parse_block(block).others] == [1, 2]


def coarse_model(monkeypatch):
    monkeypatch.setattr(event_follower, "BLOCK_BYTES", 2000)  # this small log read as a "large" one
    monkeypatch.setattr(event_follower, "LARGE_LOG", 10_000)
    monkeypatch.setattr(event_follower, "helper_count", lambda: 2)
    return model_of(RECORDED)


def assert_same_run(expected, got):
    assert (got.state, got.step, got.attempt, got.precision) == (expected.state, expected.step, expected.attempt,
                                                                 expected.precision)
    assert [e.text for e in got.entries] == [e.text for e in expected.entries]
    for a, b in zip(expected.history.chart_data().series, got.history.chart_data().series):
        np.testing.assert_array_equal(a.loss_max, b.loss_max)
        np.testing.assert_array_equal(a.norm_min, b.norm_min)


def test_reading_with_helpers_ends_as_reading_in_order(monkeypatch):
    assert_same_run(model_of(RECORDED), coarse_model(monkeypatch))


@pytest.mark.parametrize("failure", ["dies at once", "cannot start"])
def test_a_helper_that_fails_leaves_its_blocks_to_the_follower(monkeypatch, failure):
    in_order = model_of(RECORDED)

    class FailingHelper(ParseHelper):
        def __init__(self):
            if failure == "cannot start":
                raise OSError("no processes here")
            super().__init__()
            self.process.kill()

    monkeypatch.setattr(parse_helpers, "ParseHelper", FailingHelper)
    assert_same_run(in_order, coarse_model(monkeypatch))
