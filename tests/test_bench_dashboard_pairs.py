"""The dashboard-cost benchmark's pairing: each window with the dashboard against the stopped windows beside it.

The machine drifts (steps 17 to 23 ms within a minute on 2 shared cores); a
window compared with its own neighbours must cancel a drift both share, and
a window at the end has one neighbour.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_dashboard_cost import paired_ratios  # noqa: E402


def windows(values: list[float]) -> list[dict]:
    return [{"wall": value} for value in values]


def test_each_running_window_is_set_against_the_mean_of_the_stopped_windows_beside_it():
    running = windows([22.0, 33.0, 40.0])  # 10% over a machine that slows from 20 to 40 ms a step
    stopped = windows([20.0, 40.0])
    assert paired_ratios(running, stopped, "wall") == pytest.approx([1.1, 1.1, 1.0])


def test_a_drift_both_sides_share_cancels():
    slow = [20.0 + 0.5 * index for index in range(9)]  # running and stopped windows in turn, drifting up
    running, stopped = windows(slow[0::2]), windows(slow[1::2])
    ratios = paired_ratios(running, stopped, "wall")
    assert ratios[1:-1] == pytest.approx([1.0] * 3)  # inside: neighbours on both sides
    assert ratios[0] < 1 < ratios[-1]  # one neighbour each: the drift shows, in opposite directions
