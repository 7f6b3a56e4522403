"""SVG snapshots of the main screen, at 80x24 and 160x48, from recorded real runs.

Update after an intended change with `pytest tests/test_ui_snapshots.py --snapshot-update`
and look at the report before committing the new SVGs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_ui_support import caught_up, recorded_run

from loratui.ui.app import DashboardApp

ROOT = Path(__file__).resolve().parent.parent


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


def test_render_screenshots_refuses_to_run_without_its_recordings(tmp_path):
    """A missing recording is exit 1 naming it, not docs with stale pictures (the script, in a bare copy)."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "tests" / "data").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "render_screenshots.py", tmp_path / "scripts")
    shutil.copy(ROOT / "tests" / "test_ui_support.py", tmp_path / "tests")
    shutil.copytree(ROOT / "tests" / "data" / "ui_healthy_fp16", tmp_path / "tests" / "data" / "ui_healthy_fp16")
    result = subprocess.run([sys.executable, str(tmp_path / "scripts" / "render_screenshots.py")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "missing recordings: tests/data/ui_fp16_overflow, tests/data/ui_restart_bf16" in result.stderr
    assert not (tmp_path / "screenshots").exists()  # nothing rendered
