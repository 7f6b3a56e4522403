"""What the panels show for the events other engineers' parts write: phases, health checks, GPUs."""

from __future__ import annotations

import json
import time

import pytest
from test_ui_support import append_event, caught_up, recorded_run, run_async, screen_text, wait_for

from loratui.ui.app import DashboardApp


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


def loading_run(tmp_path):
    """The recorded run cut while the trainer was still loading (phase events, no run_started yet)."""
    run_dir = recorded_run("healthy_fp16", tmp_path)
    lines = (run_dir / "events.jsonl").read_text().splitlines(keepends=True)
    first_started = next(i for i, line in enumerate(lines) if json.loads(line)["type"] == "run_started")
    (run_dir / "events.jsonl").write_text("".join(lines[:first_started - 1]))
    return run_dir


@run_async
async def test_loading_shows_phase_progress(tmp_path):
    app = DashboardApp(loading_run(tmp_path))
    async with app.run_test(size=(120, 40)) as pilot:
        await caught_up(app, pilot)
        header = app.view.header
        assert header.state == "loading" and header.phase is not None
        name, done, total = header.phase
        assert f"{name.replace('_', ' ')} {done}/{total}" in screen_text(app)


@run_async
async def test_health_checks_one_row_each_with_status_figure_and_reason(tmp_path):
    run_dir = recorded_run("healthy_fp16", tmp_path, until_step=45)
    app = DashboardApp(run_dir)
    async with app.run_test(size=(160, 48)) as pilot:
        await caught_up(app, pilot)
        append_event(run_dir, {"type": "health", "step": 45, "checks": {
            "fp16_headroom": {"status": "warn", "value": 3.1, "summary": "largest activation 2.1e4 of 65504"},
            "underflow": {"status": "ok", "value": 0.002, "summary": "0.2% of gradients flush to zero"},
            "stale_update": {"status": "alert", "value": 0.62, "summary": "62% of adapter weights unchanged"},
            "loss_trend": {"status": "n/a", "value": None, "summary": "too few steps"}}})
        await wait_for(pilot, lambda: app.view.health.get("stale_update", {}).get("status") == "alert",
                       "the health event")
        await pilot.pause()
        shown = screen_text(app)
        for row in ("fp16 headroom", "! WARN", "3.1", "largest activation", "underflow", "✓ OK",
                    "stale updates", "✗ ALERT", "62% of", "loss trend", "· n/a"):
            assert row in shown, row


@run_async
async def test_gpu_devices_and_the_no_gpu_state(tmp_path):
    run_dir = recorded_run("healthy_fp16", tmp_path, until_step=45)
    app = DashboardApp(run_dir)
    async with app.run_test(size=(160, 48)) as pilot:
        await caught_up(app, pilot)
        assert "No GPU: training on CPU" in screen_text(app)
        append_event(run_dir, {"type": "gpu", "devices": [
            {"index": 0, "name": "NVIDIA A100-SXM4-80GB", "util_pct": 97.0, "mem_used_mib": 61440.0,
             "mem_total_mib": 81920.0, "temperature_c": 64.0, "power_w": 312.0, "process_mem_mib": 60000.0}]})
        await wait_for(pilot, lambda: app.view.gpu_devices, "the gpu event")
        await pilot.pause()
        shown = screen_text(app)
        for figure in ("0 NVIDIA A100-SXM4-80GB", "97% util · 60.0 GiB/80.0 GiB 75% · 64°C · 312 W"):
            assert figure in shown, figure
