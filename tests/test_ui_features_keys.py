"""The dashboard's keys for looking: m smoothing, z window, c and arrows for the cursor, g and / for the logs;
the host panel; the light theme. Real keys through Textual's pilot on the real app, fed recorded real runs.
"""

from __future__ import annotations

from test_ui_support import append_event, caught_up, recorded_run, run_async, screen_text, wait_for

from loratui.events.jsonl import read_events
from loratui.ui import format as fmt
from loratui.ui.app import DashboardApp
from loratui.ui.screens.log_view import EVENTS, LogView
from loratui.ui.widgets.host_panel import HostPanel
from loratui.ui.widgets.metric_chart import MetricChart

SIZE = (160, 48)


def loss_title(app) -> str:
    """The loss chart's title line, without the side panels beside it."""
    line = next(line for line in screen_text(app).splitlines() if line.strip().startswith("loss"))
    return line.split("╭")[0].split("│")[0].strip()


async def settled(pilot) -> None:
    await pilot.pause(0.2)


@run_async
async def test_m_cycles_smoothing_off_light_heavy_off(tmp_path):
    app = DashboardApp(recorded_run("healthy_fp16", tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        await caught_up(app, pilot)
        assert "smoothing" not in loss_title(app)
        titles = []
        for _ in range(3):
            await pilot.press("m")
            await settled(pilot)
            titles.append(loss_title(app))
        assert "light smoothing" in titles[0] and "heavy smoothing" in titles[1] and "smoothing" not in titles[2]
        assert all(chart.options.smoothing == "off" for chart in app.screen.query(MetricChart))


@run_async
async def test_z_narrows_the_window_to_the_last_steps_and_back(tmp_path):
    app = DashboardApp(recorded_run("healthy_fp16", tmp_path))  # 60 steps: the last 50, then the whole run
    async with app.run_test(size=SIZE) as pilot:
        await caught_up(app, pilot)
        await pilot.press("z")
        await settled(pilot)
        assert "last 50" in loss_title(app)
        await pilot.press("z")
        await settled(pilot)
        assert "last" not in loss_title(app)


@run_async
async def test_the_cursor_reads_each_step_as_the_arrows_move_it(tmp_path):
    steps = {e["step"]: e for e in read_events(recorded_run("healthy_fp16", tmp_path / "ref") / "events.jsonl")
             if e["type"] == "step"}
    app = DashboardApp(recorded_run("healthy_fp16", tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        await caught_up(app, pilot)
        await pilot.press("c")
        await settled(pilot)
        assert f"step 60: {fmt.number(steps[60]['loss'])}" in loss_title(app)
        await pilot.press("z", "z")  # the window does not move the cursor
        await pilot.press("shift+left")
        await settled(pilot)
        cursor = app.screen.chart_options.cursor
        assert cursor < 60 and f"step {cursor}: {fmt.number(steps[cursor]['loss'])}" in loss_title(app)
        await pilot.press("right")
        await settled(pilot)
        moved = app.screen.chart_options.cursor
        assert cursor < moved <= 60 and f"step {moved}: {fmt.number(steps[moved]['loss'])}" in loss_title(app)
        await pilot.press("c")
        await settled(pilot)
        assert "step" not in loss_title(app)
        await pilot.press("left")  # an arrow with no cursor puts it on the newest step
        await settled(pilot)
        assert "step 60:" in loss_title(app)


@run_async
async def test_g_opens_the_logs_and_slash_searches_the_events(tmp_path):
    run_dir = recorded_run("fp16_overflow", tmp_path)
    (run_dir / "trainer.log").write_text("loratui: loading the model\nstep 10 loss nan\n")
    app = DashboardApp(run_dir)
    async with app.run_test(size=SIZE) as pilot:
        await caught_up(app, pilot)
        await pilot.press("g")
        await settled(pilot)
        assert isinstance(app.screen, LogView) and "trainer.log · 2 lines" in screen_text(app)
        await pilot.press("escape")
        assert not isinstance(app.screen, LogView)
        await pilot.press("slash")
        await settled(pilot)
        assert isinstance(app.screen, LogView) and app.screen.shown == EVENTS
        await pilot.press(*"overflow", "enter")
        await settled(pilot)
        assert "'overflow': match" in screen_text(app)


@run_async
async def test_the_host_panel_shows_the_newest_host_event(tmp_path):
    run_dir = recorded_run("healthy_fp16", tmp_path, until_step=30)
    app = DashboardApp(run_dir)
    async with app.run_test(size=SIZE) as pilot:
        await caught_up(app, pilot)
        assert "no host figures yet" in screen_text(app)
        append_event(run_dir, {"type": "host", "step": 30, "cpu_pct": 64.0, "cpu_count": 2,
                               "process_cpu_pct": 97.0, "rss_mib": 1843.2, "ram_used_mib": 22118.4,
                               "ram_total_mib": 24576.0})
        figures = ("CPU 64% of 2 cores", "trainer 97%", "RAM 21.6 GiB/24.0 GiB 90%", "trainer RSS 1.8 GiB")
        # All of them: the panel grows a line with the new text, one frame after its first line shows.
        await wait_for(pilot, lambda: all(figure in screen_text(app) for figure in figures), "the host figures")
        assert app.screen.query_one(HostPanel).region.y > 0


@run_async
async def test_the_light_theme_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LORATUI_THEME", "light")
    app = DashboardApp(recorded_run("healthy_fp16", tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        await caught_up(app, pilot)
        assert app.theme == "textual-light" and not app.current_theme.dark
    monkeypatch.setenv("LORATUI_THEME", "neon")  # under `run` a bad value is said in the list, not fatal
    app = DashboardApp(recorded_run("healthy_fp16", tmp_path / "bad"))
    async with app.run_test(size=SIZE) as pilot:
        await caught_up(app, pilot)
        assert app.theme == "textual-dark"
        assert "LORATUI_THEME: 'neon' is not a theme" in screen_text(app), screen_text(app)


@run_async
async def test_help_lists_the_looking_keys_and_scrolls_on_a_small_terminal(tmp_path):
    app = DashboardApp(recorded_run("healthy_fp16", tmp_path, until_step=30))
    async with app.run_test(size=(80, 24)) as pilot:
        await caught_up(app, pilot)
        await pilot.press("question_mark")
        await settled(pilot)
        keys = set(help_keys(app))
        assert "esc or ?: close" not in screen_text(app)  # taller than the terminal ...
        await pilot.press("end")
        await settled(pilot)
        assert "esc or ?: close" in screen_text(app)  # ... and scrolled to its end
        keys |= set(help_keys(app))
        assert {"m", "z", "c", "g", "/"} <= keys and "left" not in keys  # aliases without a tooltip stay out


def help_keys(app) -> list[str]:
    """The first word of each row of the help's key table on screen."""
    return [line.strip("█ ").split()[0] for line in screen_text(app).splitlines()
            if line.startswith("█   ") and len(line.strip("█ ").split()) > 1]
