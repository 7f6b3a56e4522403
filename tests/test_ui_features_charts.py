"""Charts as users of TensorBoard and W&B look at them: smoothing, a window, a cursor, attempts, ASCII.

A small app holds the three charts of the dashboard, fed the history of a
recorded real run (tests/data/ui_*) folded by the dashboard's own model.
The keys that change these options on the dashboard are tested in
test_ui_features_keys.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_ui_support import DATA, run_async, screen_text
from textual.app import App, ComposeResult

from loratui.events.jsonl import read_events
from loratui.ui import format as fmt
from loratui.ui.chart_options import ChartOptions, ema
from loratui.ui.snapshot import read_run
from loratui.ui.widgets.metric_chart import MetricChart

BRAILLE = {chr(code) for code in range(0x2801, 0x2900)}


class Charts(App):
    def __init__(self, recording: str, options: ChartOptions):
        super().__init__()
        self.chart_data = read_run(DATA / f"ui_{recording}").history.chart_data()
        self.options = options

    def compose(self) -> ComposeResult:
        for metric in ("loss", "grad_norm", "scale"):
            yield MetricChart(metric, id=metric)

    def on_mount(self) -> None:
        for chart in self.query(MetricChart):
            chart.data = self.chart_data
            chart.options = self.options


async def chart_texts(recording: str, options: ChartOptions, size=(100, 45)) -> tuple[str, dict]:
    app = Charts(recording, options)
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        readings = {chart.metric: chart.reading for chart in app.query(MetricChart)}
        return screen_text(app), readings


def step_events(recording: str, attempt: int | None = None) -> dict[int, dict]:
    return {e["step"]: e for e in read_events(DATA / f"ui_{recording}" / "events.jsonl")
            if e["type"] == "step" and (attempt is None or e["attempt"] == attempt)}


def test_ema_is_tensorboards_debiased_average():
    values = np.array([1.0, 2.0, float("nan"), 3.0])
    smoothed = ema(values, 0.5)
    # TensorBoard: last = last * w + (1 - w) * v; shown: last / (1 - w ** n), n = finite values so far.
    assert smoothed[0] == 1.0
    assert smoothed[1] == (0.5 * 0.5 + 0.5 * 2.0) / (1 - 0.5 ** 2)
    assert np.isnan(smoothed[2])  # a non-finite value stays marked, the average carries on past it
    assert smoothed[3] == ((0.5 * 0.5 + 0.5 * 2.0) * 0.5 + 0.5 * 3.0) / (1 - 0.5 ** 3)
    assert np.array_equal(ema(values, 0.0)[[0, 1, 3]], values[[0, 1, 3]])


def tensorboards_loop(values: np.ndarray, weight: float) -> np.ndarray:
    out = np.full(values.shape, np.nan)
    last, count = 0.0, 0
    for index, value in enumerate(values.tolist()):
        if not np.isfinite(value):
            continue
        last = last * weight + (1 - weight) * value
        count += 1
        out[index] = last / (1 - weight ** count)
    return out


@pytest.mark.parametrize("weight", [0.6, 0.95, 0.999, 0.99999, 0.6 ** 5, 0.95 ** 50, 0.6 ** 30, 1e-7])
def test_ema_in_blocks_agrees_with_tensorboards_loop(weight):
    """The closed-form blocks (no Python loop per bucket) against the loop itself: long runs, values over
    eight decades, nan and inf among them, weights from a bucket of one step to buckets of hundreds."""
    rng = np.random.default_rng(int(weight * 1e6))
    for length in (0, 1, 7, 2048, 5000):
        values = rng.lognormal(0, 2, length) * rng.choice([1e-4, 1.0, 1e4])
        values[rng.random(length) < 0.05] = np.nan
        values[rng.random(length) < 0.01] = np.inf
        ours, loop = ema(values, weight), tensorboards_loop(values, weight)
        assert np.array_equal(np.isnan(ours), np.isnan(loop))
        finite = np.isfinite(loop)
        assert np.allclose(ours[finite], loop[finite], rtol=1e-9, atol=0)


def test_options_cycle_as_the_keys_do():
    options = ChartOptions()
    assert [options.smoothing, (o := options.next_smoothing()).smoothing, o.next_smoothing().smoothing,
            o.next_smoothing().next_smoothing().smoothing] == ["off", "light", "heavy", "off"]
    # Only windows shorter than the run so far: a 120-step run offers the last 50, then the whole run again.
    assert options.next_window(120).window == 50
    assert options.next_window(120).next_window(120).window is None
    assert options.next_window(5000).window == 1000
    cursor = options.toggle_cursor(60)
    assert cursor.cursor == 60
    assert cursor.move_cursor(+5, 1, 60).cursor == 60 and cursor.move_cursor(-70, 1, 60).cursor == 1
    assert cursor.toggle_cursor(60).cursor is None


@run_async
async def test_smoothing_draws_a_smoothed_line_over_the_raw_points():
    plain, _ = await chart_texts("healthy_fp16", ChartOptions(ascii=True))
    smooth, _ = await chart_texts("healthy_fp16", ChartOptions(smoothing="heavy", ascii=True))
    assert "heavy smoothing" in smooth and "smoothing" not in plain
    loss_plain, loss_smooth = (text.split("grad norm")[0] for text in (plain, smooth))
    # ASCII mode: raw points are '.', the line '*'. Both are there with smoothing; without it, no dots.
    assert loss_plain.count("*") > 20 and loss_plain.count(".") < 5
    assert loss_smooth.count(".") > 20 and loss_smooth.count("*") > 20
    assert "scale (log2)" in smooth and "smoothing" not in smooth.split("loss scale")[1]  # a staircase stays


@run_async
async def test_a_window_shows_the_last_steps_only():
    whole, _ = await chart_texts("healthy_fp16", ChartOptions())
    window, _ = await chart_texts("healthy_fp16", ChartOptions(window=20))
    axis = [line for line in window.splitlines() if line.strip().startswith("40")]
    assert "last 20" in window and axis, window
    whole_axis = [line.split() for line in whole.splitlines() if line.strip().startswith(("0 ", "20 "))]
    assert whole_axis and "20" in whole_axis[0]
    assert not any("20" in line.split() for line in axis)


@run_async
async def test_the_cursor_reads_the_logged_value_at_its_step():
    steps = step_events("healthy_fp16")
    _, readings = await chart_texts("healthy_fp16", ChartOptions(cursor=17))
    assert readings["loss"] == f"step 17: {fmt.number(steps[17]['loss'])}"
    assert readings["grad_norm"] == f"step 17: {fmt.number(steps[17]['grad_norm'])}"
    assert readings["scale"] == f"step 17: {fmt.number(steps[17]['scale'])}"
    text, readings = await chart_texts("healthy_fp16", ChartOptions(cursor=17, smoothing="light"))
    assert readings["loss"].startswith(f"step 17: {fmt.number(steps[17]['loss'])}, smoothed ")
    assert readings["loss"] in text  # in the chart's title


@run_async
async def test_the_cursor_reads_the_abandoned_attempt_where_the_new_one_has_no_value():
    # restart_bf16: fp16 to step 32, then bf16 from step 20; bf16 has no loss scale.
    old, new = step_events("restart_bf16", attempt=0), step_events("restart_bf16", attempt=1)
    _, readings = await chart_texts("restart_bf16", ChartOptions(cursor=25))
    assert readings["loss"] == f"step 25: {fmt.number(new[25]['loss'])}"
    assert readings["scale"] == f"step 25: {fmt.number(old[25]['scale'])} (attempt 0)"


@run_async
async def test_attempts_differ_by_character_not_only_colour(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    text, _ = await chart_texts("restart_bf16", ChartOptions())
    loss = text.split("grad norm")[0]
    assert "·" in loss and BRAILLE & set(loss)  # the abandoned branch in dots, the new attempt in braille
    single, _ = await chart_texts("healthy_fp16", ChartOptions())
    assert "·" not in single.split("grad norm")[0]
    ascii_text, _ = await chart_texts("restart_bf16", ChartOptions(ascii=True))
    ascii_loss = ascii_text.split("grad norm")[0]
    assert "o" in ascii_loss.replace("loss", "") and "*" in ascii_loss


@run_async
async def test_ascii_charts_hold_no_braille_or_box_drawing():
    text, _ = await chart_texts("restart_bf16", ChartOptions(ascii=True, smoothing="light", cursor=30))
    assert all(ord(character) < 128 for character in text), {c for c in text if ord(c) >= 128}
    unicode, _ = await chart_texts("restart_bf16", ChartOptions())
    assert any(ord(character) >= 128 for character in unicode)


def styled_cells(content) -> list[tuple]:
    cells = []
    for segment in content.render_segments():
        style = segment.style
        for character in segment.text:
            cells.append((character, str(style.color) if style and style.color else None,
                          str(style.bgcolor) if style and style.bgcolor else None, bool(style and style.bold)))
    return cells


@run_async
async def test_the_direct_picture_is_plotexts_own_drawing():
    """The chart reads plotext's matrix directly: every cell, colour and style as plotext's ANSI output has them."""
    from textual.content import Content
    from textual_plotext import PlotextPlot

    from loratui.ui.widgets.metric_chart import matrix_content

    app = Charts("restart_bf16", ChartOptions(smoothing="light", cursor=30))
    async with app.run_test(size=(100, 45)) as pilot:
        await pilot.pause()
        for chart in app.query(MetricChart):
            chart.signals.replay(chart.plt)  # plotext draws the lines and marks too (see test_ui_chart_signals.py)
            ansi_way = Content.from_rich_text(PlotextPlot.render(chart), console=app.console)
            direct = matrix_content(chart.plt.monitor.matrix, ascii_only=False)
            old, new = styled_cells(ansi_way), styled_cells(direct)
            assert old[-1][0] == "\n" and old[:-1] == new, chart.metric  # the ANSI text ends with a newline
            assert any(cell[1] for cell in new) and any(cell[2] for cell in new)  # coloured, on a background


@run_async
async def test_the_painted_strips_are_textuals_own_drawing_of_the_picture():
    """The chart paints strips built from the matrix: the same cells and styles as Textual's drawing of its Content."""
    from textual.visual import Visual

    for options in (ChartOptions(smoothing="light", cursor=30), ChartOptions(ascii=True)):
        app = Charts("restart_bf16", options)
        async with app.run_test(size=(100, 45)) as pilot:
            await pilot.pause()
            for chart in app.query(MetricChart):
                width, height = chart.size
                painted = [chart.render_line(y) for y in range(height)]
                drawn = Visual.to_strips(chart, chart.render(), width, height, chart.visual_style)
                assert [painted_cells(strip) for strip in painted] == [painted_cells(strip) for strip in drawn]
                assert all(strip.cell_length == width for strip in painted), chart.metric


def painted_cells(strip) -> list[tuple]:
    cells = []
    for segment in strip:
        style = segment.style
        for character in segment.text:
            cells.append((character, style.color, style.bgcolor, style.bold, style.dim))
    return cells


@run_async
async def test_a_light_theme_draws_darker_lines():
    from loratui.ui.widgets.metric_chart import LINE_COLOURS

    colours = {}
    for theme in ("textual-dark", "textual-light"):
        app = Charts("healthy_fp16", ChartOptions())
        async with app.run_test(size=(100, 45)) as pilot:
            app.theme = theme
            await pilot.pause()
            chart = app.query_one("#loss", MetricChart)
            chart.render()
            colours[theme] = {colour for row in chart.plt.monitor.matrix.fullground for colour in row}
    assert LINE_COLOURS["loss"][True] in colours["textual-dark"] - colours["textual-light"]
    assert LINE_COLOURS["loss"][False] in colours["textual-light"] - colours["textual-dark"]


class HistoryCharts(Charts):
    """The charts fed a history built step by step (for shapes no recording has)."""

    def __init__(self, chart_data, options: ChartOptions = ChartOptions()):
        App.__init__(self)
        self.chart_data = chart_data
        self.options = options


def history_of(steps: int, loss, restart_from: int | None = None):
    from loratui.ui.history import RestartMark, RunHistory

    history = RunHistory()
    history.expect_steps(steps)
    step = np.arange(1, steps + 1)
    attempt = np.zeros(steps, np.int64)
    if restart_from is not None:
        history.mark_restart(RestartMark(steps // 2, restart_from, 1, "fp32", 1e-3))
        attempt[steps // 2:] = 1
        step[steps // 2:] = np.arange(restart_from + 1, restart_from + 1 + steps - steps // 2)
    history.add_steps(attempt, step, np.asarray(loss, float), np.ones(steps), np.full(steps, np.nan),
                      np.zeros(steps, bool))
    return history.chart_data()


def canvas_rows(chart) -> list[str]:
    """The chart's picture, top row first."""
    matrix = chart.plt.monitor.matrix
    return ["".join(matrix.marker[row]) for row in reversed(matrix.Rows)]


@run_async
async def test_all_nonfinite_values_are_marked_along_the_top():
    app = HistoryCharts(history_of(40, [float("nan")] * 40))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        chart = app.query_one("#loss", MetricChart)
        rows = canvas_rows(chart)
        marked = [index for index, row in enumerate(rows) if row.count("x") > 5]
        frame_top = next(index for index, row in enumerate(rows) if "┌" in row)
        assert marked == [frame_top + 1], rows  # the first row inside the frame
        assert "all nan/inf" in rows[0]


@run_async
async def test_a_restart_to_the_first_step_is_drawn_beside_the_axis_not_on_it():
    from loratui.ui.widgets.metric_chart import RESTART

    app = HistoryCharts(history_of(40, np.linspace(3, 2, 40), restart_from=0))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        chart = app.query_one("#loss", MetricChart)
        matrix = chart.plt.monitor.matrix
        rows = canvas_rows(chart)
        axis = next(row for row in rows if "┤" in row).index("┤")
        restart_columns = {column for row in matrix.Rows for column in range(matrix.cols)
                           if matrix.fullground[row][column] == RESTART}
        assert restart_columns and min(restart_columns) > axis, (axis, restart_columns)


@run_async
async def test_the_y_axis_holds_while_new_values_fit_and_fits_again_when_they_leave_or_shrink():
    """A live chart keeps its y limits (and so its frame) while the values stay inside them and fill most
    of them; a value outside, values filling less than 1/1.25 of the axis, or a new window fit it again."""
    from loratui.ui.history import RunHistory

    history = RunHistory()
    history.expect_steps(400)
    added = [0]

    def grown(values) -> object:
        start, added[0] = added[0], added[0] + len(values)
        count = len(values)
        history.add_steps(np.zeros(count, np.int64), np.arange(start + 1, added[0] + 1), np.asarray(values, float),
                          np.ones(count), np.full(count, np.nan), np.zeros(count, bool))
        return history.chart_data()

    def limits(chart) -> tuple[float, float]:
        return tuple(chart.plt.monitor.ylim[0])

    app = HistoryCharts(grown(np.r_[3.0, np.linspace(2.9, 1.0, 99)]))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        chart = app.query_one("#loss", MetricChart)
        fitted = limits(chart)
        assert fitted[0] < 1.0 and fitted[1] > 3.0
        # A new low inside the axis's margin (a fresh fit would lower the axis by its own margin): held.
        chart.data = grown(np.r_[np.linspace(1.2, 2.8, 99), 0.95])
        await pilot.pause()
        assert limits(chart) == fitted
        chart.data = grown([0.5] * 20)  # below the axis: fitted again
        await pilot.pause()
        lower = limits(chart)
        assert lower[0] < 0.5 < fitted[0]
        chart.options = ChartOptions(window=50)  # a zoom: fitted afresh to the steps it shows
        await pilot.pause()
        zoomed = limits(chart)
        assert zoomed != lower and zoomed[0] < 0.5
        chart.data = grown([0.55] * 10)  # inside the zoomed axis: held as the window slides
        await pilot.pause()
        assert limits(chart) == zoomed
        chart.data = grown(np.tile([0.5, 0.6], 30))  # the window now holds 0.5 to 0.6: fitted around them
        await pilot.pause()
        assert 0.49 < limits(chart)[0] < 0.5 and 0.6 < limits(chart)[1] < 0.61
