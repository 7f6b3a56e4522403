"""SVG snapshots of the main screen, at 80x24 and 160x48, from recorded real runs.

Update after an intended change with `pytest tests/test_ui_snapshots.py --snapshot-update`
and look at the report before committing the new SVGs.
"""

from __future__ import annotations

import time

import pytest
from test_ui_support import caught_up, recorded_run

from loratui.ui.app import DashboardApp


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
def test_live_fp16_run(snap_compare, tmp_path, size):
    app = DashboardApp(recorded_run("healthy_fp16", tmp_path, until_step=45))
    assert snap_compare(app, terminal_size=size, run_before=lambda pilot: caught_up(app, pilot))


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
def test_finished_run_after_a_switch_to_bf16(snap_compare, tmp_path, size):
    app = DashboardApp(recorded_run("restart_bf16", tmp_path))
    assert snap_compare(app, terminal_size=size, run_before=lambda pilot: caught_up(app, pilot))


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
def test_fp16_overflow_with_its_alert(snap_compare, tmp_path, size):
    app = DashboardApp(recorded_run("fp16_overflow", tmp_path))
    assert snap_compare(app, terminal_size=size, run_before=lambda pilot: caught_up(app, pilot))
