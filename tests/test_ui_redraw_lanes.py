"""Redraw lanes: the header with every redraw; the charts every SLOW_SECONDS at most; the health panel and the
event list every ROWS_SECONDS at most.

A routine row (a checkpoint) waits for the next rows slot, while the header and
the charts move on; what a user waits on goes at once: an alert, their own
action, a health status that changed. The real app on a recorded live run, its
log appended to as the trainer would.
"""

from __future__ import annotations

import contextlib
import time

from test_ui_support import append_event, caught_up, overflow_alert, recorded_run, run_async, wait_for

from loratui.ui.app import DashboardApp
from loratui.ui.screens.dashboard import ROWS_SECONDS, SLOW_SECONDS
from loratui.ui.widgets.event_list import EventList
from loratui.ui.widgets.health_panel import HealthPanel
from loratui.ui.widgets.metric_chart import MetricChart


def latest(app):
    with app.model.lock:
        return app.model.snapshot()


def shown_texts(app) -> list[str]:
    return [entry.text for entry in app.query_one(EventList)._shown]


async def read_in(app, pilot, step: int) -> None:
    """The follower has the new event; then one redraw, as the timer does."""
    await wait_for(pilot, lambda: any(entry.step == step for entry in latest(app).entries),
                   "the follower to read the event")
    app.redraw()
    await pilot.pause()


def slot_just_taken(app) -> None:
    app.dashboard._slow_drawn_at = app.dashboard._rows_drawn_at = time.monotonic()


def charts_slot_due(app) -> None:
    app.dashboard._slow_drawn_at -= SLOW_SECONDS


def rows_slot_due(app) -> None:
    app.dashboard._rows_drawn_at -= ROWS_SECONDS


@contextlib.asynccontextmanager
async def live_dashboard(tmp_path):
    """The dashboard on a recorded run cut at step 45 (still live), a slow slot just taken."""
    run_dir = recorded_run("healthy_fp16", tmp_path, until_step=45)
    app = DashboardApp(run_dir)
    async with app.run_test(size=(160, 48)) as pilot:
        await caught_up(app, pilot)
        slot_just_taken(app)
        yield app, pilot, run_dir


@run_async
async def test_a_routine_row_waits_for_the_next_slot_while_the_header_moves_on(tmp_path):
    async with live_dashboard(tmp_path) as (app, pilot, run_dir):
        append_event(run_dir, {"type": "step", "step": 46, "loss": 1.5, "grad_norm": 1.0, "lr": 1e-4,
                               "precision": "fp16", "scale": 65536.0, "skipped": False, "step_time_s": 0.1})
        append_event(run_dir, {"type": "checkpoint", "step": 46, "path": str(run_dir / "checkpoints" / "step-000046"),
                               "reason": "interval", "loss": 1.5, "removed": []})
        await read_in(app, pilot, 46)
        assert app.dashboard.query_one("RunHeader").view.step == 46  # the header: at once
        loss = app.dashboard.query_one("#chart-loss", MetricChart)
        assert loss.data.revision != latest(app).charts.revision  # the charts: their slot
        assert not any("step 46" in text for text in shown_texts(app))  # the row: its slot
        charts_slot_due(app)
        app.redraw()
        await pilot.pause()
        assert loss.data.revision == latest(app).charts.revision
        assert not any("step 46" in text for text in shown_texts(app))  # routine rows wait longer
        rows_slot_due(app)
        app.redraw()
        await pilot.pause()
        assert any("step 46" in text for text in shown_texts(app))


@run_async
async def test_an_alert_goes_at_once(tmp_path):
    async with live_dashboard(tmp_path) as (app, pilot, run_dir):
        append_event(run_dir, overflow_alert(46))
        await read_in(app, pilot, 46)
        assert any("overflow" in text for text in shown_texts(app))


@run_async
async def test_the_users_own_action_goes_at_once(tmp_path):
    async with live_dashboard(tmp_path) as (app, pilot, run_dir):
        await pilot.press("s")  # save a checkpoint: the dashboard notes the request
        await pilot.pause()
        app.redraw()
        await pilot.pause()
        assert any(entry.kind == "ui" for entry in app.query_one(EventList)._shown[:1])


@run_async
async def test_a_health_status_change_goes_at_once_a_new_figure_waits(tmp_path):
    async with live_dashboard(tmp_path) as (app, pilot, run_dir):
        panel = app.dashboard.query_one(HealthPanel)
        checks = dict(panel.checks)
        same_statuses = {name: {**check, "value": 0.123} for name, check in checks.items()}
        append_event(run_dir, {"type": "health", "step": 46, "checks": same_statuses})
        await wait_for(pilot, lambda: latest(app).health_step == 46, "the probe to be read")
        app.redraw()
        await pilot.pause()
        assert panel.step != 46  # new figures, same statuses: the next slot
        name = next(iter(checks))
        changed = {**same_statuses, name: {**same_statuses[name], "status": "warn"}}
        append_event(run_dir, {"type": "health", "step": 47, "checks": changed})
        await wait_for(pilot, lambda: latest(app).health_step == 47, "the probe to be read")
        app.redraw()
        await pilot.pause()
        assert panel.step == 47 and panel.checks[name]["status"] == "warn"
