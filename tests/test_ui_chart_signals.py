"""The charts' lines and marks, drawn with numpy (chart_signals.py), are plotext's own drawing cell for cell.

Each picture is built twice: the dashboard's way (plotext draws the frame,
ChartSignals the signals over it) and plotext's way (the same signals handed
to plotext, which draws everything). Every cell's character, colour, style and
background must agree: for the charts of recorded real runs with every option,
at several sizes, and for random signals (lines and scatters, braille and
single characters, points outside the limits, overlapping signals).
"""

from __future__ import annotations

import numpy as np
import pytest
from plotext._figure import _figure_class
from test_ui_features_charts import BRAILLE, Charts, HistoryCharts, history_of
from test_ui_support import run_async
from textual_plotext import PlotextPlot

from loratui.ui.chart_options import ChartOptions
from loratui.ui.chart_signals import ChartSignals, canvas_of, joined
from loratui.ui.widgets.metric_chart import FrameCalls, MetricChart

OPTIONS = (ChartOptions(), ChartOptions(smoothing="light", cursor=30), ChartOptions(smoothing="heavy", window=50),
           ChartOptions(ascii=True, cursor=12), ChartOptions(window=200, smoothing="light", ascii=True))


def cells(matrix) -> list[tuple]:
    return [(matrix.marker[row][col], matrix.fullground[row][col], matrix.style[row][col],
             matrix.background[row][col]) for row in range(len(matrix.marker)) for col in range(matrix.cols)]


def both_drawings(chart: MetricChart) -> tuple[list, list]:
    """(the dashboard's drawing, plotext's drawing of the same calls) of a chart on screen."""
    chart._drawn = None
    chart._current_strips()
    ours = cells(chart.plt.monitor.matrix)
    chart.signals.replay(chart.plt)
    PlotextPlot.render(chart)  # plotext builds the whole picture, signals included
    return ours, cells(chart.plt.monitor.matrix)


def plotexts_drawing(chart: MetricChart) -> list:
    """plotext's own drawing of the chart's data, on a figure cleared first (its frame's calls replayed)."""
    frame = FrameCalls()
    chart._plot_into(frame, chart.data, chart.options)
    frame.replay(chart.plt)
    chart.signals.replay(chart.plt)
    PlotextPlot.render(chart)
    return cells(chart.plt.monitor.matrix)


@pytest.mark.parametrize("recording", ["restart_bf16", "fp16_overflow", "healthy_fp16"])
@run_async
async def test_recorded_runs_chart_the_same_as_plotext_draws_them(recording):
    for size in ((100, 45), (58, 24)):
        for options in OPTIONS:
            app = Charts(recording, options)
            async with app.run_test(size=size) as pilot:
                await pilot.pause()
                drawn = ""
                for chart in app.query(MetricChart):
                    ours, plotexts = both_drawings(chart)
                    assert ours == plotexts, (recording, size, options, chart.metric)
                    drawn += "".join(cell[0] for cell in ours)
                assert options.ascii or set(drawn) & BRAILLE  # the comparison is not of empty charts


@run_async
async def test_marks_restarts_and_nonfinite_charts_are_plotexts_drawing_too():
    histories = (history_of(40, [float("nan")] * 40), history_of(40, np.linspace(3, 2, 40), restart_from=0),
                 history_of(300, np.r_[np.linspace(3, 1, 150), [float("inf")] * 3, np.linspace(1, 0.5, 147)]))
    for data in histories:
        for options in (ChartOptions(), ChartOptions(cursor=20, smoothing="heavy"), ChartOptions(ascii=True)):
            app = HistoryCharts(data, options)
            async with app.run_test(size=(90, 30)) as pilot:
                await pilot.pause()
                for chart in app.query(MetricChart):
                    ours, plotexts = both_drawings(chart)
                    assert ours == plotexts, (options, chart.metric)


def figure(width: int, height: int, xlim, ylim):
    plot = _figure_class()
    plot.plotsize(width, height)
    plot._set_size(width, height)
    plot.xlim(*xlim)
    plot.ylim(*ylim)
    # Ticks set, as the charts set them: plotext works them out from its own data only.
    xticks, yticks = np.linspace(*xlim, 5).tolist(), np.linspace(*ylim, 4).tolist()
    plot.xticks(xticks, [f"{tick:.0f}" for tick in xticks])
    plot.yticks(yticks, [f"{tick:.2f}" for tick in yticks])
    plot.title("random")
    return plot


def build(plot):
    plot._set_sizes()
    plot._build_matrix()
    return plot.monitor.matrix


@pytest.mark.parametrize("seed", range(12))
def test_random_signals_are_drawn_as_plotext_draws_them(seed):
    random = np.random.default_rng(seed)
    width, height = int(random.integers(12, 150)), int(random.integers(6, 40))
    xlim = (float(random.uniform(-50, 50)), float(random.uniform(60, 5000)))
    ylim = (float(random.uniform(-3, 0)), float(random.uniform(0.5, 4)))
    signals = ChartSignals()
    for index in range(int(random.integers(1, 5))):
        count = int(random.integers(1, 400))
        x = np.sort(random.uniform(xlim[0] - 20, xlim[1] + 20, count))  # some points outside the limits
        y = random.normal(0.5, 1.5, count)
        marker = str(random.choice(["braille", "braille", "·", "*", "x"]))
        colour = tuple(int(c) for c in random.integers(0, 256, 3))
        (signals.plot if random.random() < 0.7 else signals.scatter)(x, y, marker=marker, color=colour)

    ours = figure(width, height, xlim, ylim)
    ours.scatter([], [], marker="x")
    matrix = build(ours)
    signals.draw(ours.monitor)
    plotexts = figure(width, height, xlim, ylim)
    plotexts.scatter([], [], marker="x")
    signals.replay(plotexts)
    drawn = cells(matrix)
    assert drawn == cells(build(plotexts))
    colours = {signal.color for signal in signals.signals}
    assert any(cell[1] in colours for cell in drawn)  # the signals are in the picture, not only the frame


def test_the_canvas_is_what_the_frame_encloses():
    plot = figure(40, 12, (0, 10), (0, 1))
    plot.scatter([], [], marker="x")
    matrix = build(plot)
    canvas = canvas_of(matrix)
    rows = ["".join(matrix.marker[row]) for row in range(len(matrix.marker))]
    assert rows[canvas.row - 1][canvas.col - 1] == "└" and rows[canvas.row + canvas.height][canvas.col + canvas.width] == "┐"
    assert set(rows[canvas.row][canvas.col:canvas.col + canvas.width]) == {" "}


def test_a_line_has_a_point_per_step_of_its_longer_side():
    x, y = joined(np.array([0, 4, 4]), np.array([0, 1, 7]))
    assert list(zip(x.tolist(), y.tolist())) == [(0, 0), (1, 0), (2, 0), (3, 0), (4, 1), (4, 2), (4, 3), (4, 4),
                                                 (4, 5), (4, 6), (4, 7)]


@run_async
async def test_new_points_under_the_same_frame_reuse_plotexts_frame_and_still_draw_what_plotext_draws(monkeypatch):
    """A growing run whose axes hold (x runs to max_steps, the first steps set the y limits): plotext builds
    each chart's frame once, and every picture is still plotext's own drawing of its data, cell for cell."""
    from loratui.ui.history import RunHistory
    from loratui.ui.widgets import metric_chart

    built = []
    replay = metric_chart.FrameCalls.replay
    monkeypatch.setattr(metric_chart.FrameCalls, "replay", lambda self, plt: built.append(1) or replay(self, plt))
    rng = np.random.default_rng(5)
    loss = np.r_[[3.0, 1.0], rng.uniform(1.2, 2.8, 298)]
    history = RunHistory()
    history.expect_steps(300)

    def grown_to(steps: int, done: list[int] = [0]):
        start, done[0] = done[0], steps
        history.add_steps(np.zeros(steps - start, np.int64), np.arange(start + 1, steps + 1), loss[start:steps],
                          np.ones(steps - start), np.full(steps - start, np.nan), np.zeros(steps - start, bool))
        return history.chart_data()

    app = HistoryCharts(grown_to(100), ChartOptions(smoothing="light"))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        chart = app.query_one("#loss", MetricChart)
        assert len(built) == 3  # a frame per chart (loss, grad norm, scale) for the first picture
        pictures = []
        for steps in (150, 200, 299):
            chart.data = grown_to(steps)
            await pilot.pause()
            assert len(built) == 3  # the same frame: plotext builds nothing
            ours = cells(chart.plt.monitor.matrix)
            assert ours == plotexts_drawing(chart), steps
            del built[3:]  # plotext's own drawing just now built a frame too
            pictures.append(ours)
        assert pictures[0] != pictures[1] != pictures[2]  # the lines moved on
