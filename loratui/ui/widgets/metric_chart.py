"""A chart of one training metric over steps: loss, grad norm (log) or loss scale (log2).

Data arrives as bucketed history (min and max per bucket, one series per
attempt) and is merged once more down to the chart's own resolution (two
braille dots per cell), so a one-step spike still reaches the top. The
current attempt is drawn in colour, abandoned branches in grey; restarts
are vertical lines at the step they went back to; non-finite values and
skipped steps are marked with an x.

The app sets `data` from its redraw timer (a few times a second), never per
event: plotext rebuilds the whole picture on each change.
"""

from __future__ import annotations

import math

import numpy as np
from textual.content import Content
from textual.reactive import reactive
from textual_plotext import PlotextPlot

from loratui.ui.history import ChartData, ChartSeries

SHORT_TITLES = {"loss": "loss", "grad_norm": "grad norm (log)", "scale": "scale (log2) x=skip"}
NARROW = 40  # below this width a chart gets its short title
METRICS = {
    # name: (title, min field, max field, marks field, transform, colour of the current attempt)
    "loss": ("loss", "loss_min", "loss_max", "nonfinite_loss", None, (0, 175, 255)),
    "grad_norm": ("grad norm (log)", "norm_min", "norm_max", "nonfinite_norm", "log10", (255, 175, 0)),
    "scale": ("loss scale (log2) · x skipped", "scale_min", "scale_max", "skipped", "log2", (175, 135, 255)),
}
OLD_ATTEMPT = (110, 110, 110)
MARK = (255, 60, 60)
RESTART = (220, 80, 220)
AXIS_ALLOWANCE = 9  # cells taken by y labels and the frame


class MetricChart(PlotextPlot):
    DEFAULT_CSS = """
    MetricChart {
        height: 1fr;
        min-height: 6;
    }
    """

    data: reactive[ChartData | None] = reactive(None, always_update=True)

    def __init__(self, metric: str, **kwargs):
        super().__init__(**kwargs)
        self.metric = metric
        self._drawn: tuple | None = None
        self._picture: Content | None = None  # the last plot, reused while neither data, size nor theme changed

    def watch_data(self, data: ChartData | None) -> None:
        if (data.revision if data else None) != (self._drawn[0] if self._drawn else None):
            self.refresh()

    def render(self):
        """Rebuild the plot for the size it is drawn at, unless neither data, size nor theme changed.

        A relayout of the screen (a panel growing) renders every widget again: the
        chart then returns its last picture instead of building it anew.
        """
        data = self.data
        key = (data.revision if data else None, self.size, self.app.theme)
        if key != self._drawn:
            self._drawn = key
            self._plot_into(self.plt, data)
            # As Content, the form Textual would convert the text to on every render.
            self._picture = Content.from_rich_text(super().render(), console=self.app.console)
        return self._picture

    def _plot_into(self, plt, data: ChartData | None) -> None:
        title, low_field, high_field, marks_field, transform, colour = METRICS[self.metric]
        if self.size.width < NARROW:
            title = SHORT_TITLES[self.metric]
        plt.clear_data()
        plt.clear_figure()
        if not data or not data.series or not self.size.width:
            plt.title(f"{title} · waiting" if self.size.width < NARROW else f"{title} · waiting for the first step")
            return
        plt.title(title)
        points = max(8, (self.size.width - AXIS_ALLOWANCE) * 2)
        merged = [(series, *_merged(series, low_field, high_field, marks_field, transform, points))
                  for series in data.series]
        finite = [np.concatenate([low[np.isfinite(low)], high[np.isfinite(high)]]) for _, _, low, high, _ in merged]
        finite = [values for values in finite if values.size]
        first = min(int(series.steps[0]) for series in data.series)
        end = max(max(int(series.steps[-1]) + data.width for series in data.series), data.max_steps or 0)
        plt.xlim(first, end)
        plt.xticks(*_step_ticks(first, end))
        if not finite:
            # Every value so far is nan/inf: nothing to draw a line through, so mark where they were.
            plt.title(f"{self.metric.replace('_', ' ')}: all nan/inf")
            for _series, steps, _low, _high, marks in merged:
                if marks.any():
                    plt.scatter(steps[marks].tolist(), [0.5] * int(marks.sum()), marker="x", color=MARK)
            plt.ylim(0, 1)
            plt.yticks([], [])
            return
        bottom, top = float(min(v.min() for v in finite)), float(max(v.max() for v in finite))
        pad = (top - bottom) * 0.06 or 0.5
        bottom, top = bottom - pad, top + pad
        for series, steps, low, high, _marks in merged:
            line = colour if series.current else OLD_ATTEMPT
            keep = np.isfinite(high)
            plt.plot(steps[keep].tolist(), high[keep].tolist(), marker="braille", color=line)
            keep_low = np.isfinite(low)
            if not np.array_equal(low[keep_low], high[keep_low]):
                plt.plot(steps[keep_low].tolist(), low[keep_low].tolist(), marker="braille", color=line)
        for _series, steps, low, _high, marks in merged:
            if marks.any():
                # Skipped steps sit on the scale line they ran with; a non-finite value has no
                # place on the axis, so it is marked along the top.
                at = np.where(np.isfinite(low[marks]), low[marks], top) if self.metric == "scale" else \
                    np.full(int(marks.sum()), top - pad / 2)
                plt.scatter(steps[marks].tolist(), at.tolist(), marker="x", color=MARK)
        for mark in data.restarts:
            if first <= mark.from_step <= end:
                plt.vline(mark.from_step, color=RESTART)
        plt.ylim(bottom, top)
        plt.yticks(*_apart(*_value_ticks(bottom, top, transform), bottom, top, rows=self.size.height - 4))


def _merged(series: ChartSeries, low_field: str, high_field: str, marks_field: str, transform: str | None,
            points: int):
    """Buckets merged down to at most `points`, transformed; and where to put an x."""
    steps, low, high = series.steps, getattr(series, low_field), getattr(series, high_field)
    marks = getattr(series, marks_field)
    if len(steps) > points:
        group = math.ceil(len(steps) / points)
        starts = np.arange(0, len(steps), group)
        steps = steps[starts]
        with np.errstate(all="ignore"):
            low = np.fmin.reduceat(low, starts)
            high = np.fmax.reduceat(high, starts)
        marks = np.add.reduceat(marks, starts)
    if transform:
        log = np.log10 if transform == "log10" else np.log2
        with np.errstate(all="ignore"):
            low, high = log(np.where(low > 0, low, np.nan)), log(np.where(high > 0, high, np.nan))
    return steps, low, high, marks > 0


def _nice_step(span: float, count: int) -> float:
    raw = span / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)


def _step_ticks(first: int, end: int, count: int = 5) -> tuple[list[int], list[str]]:
    step = max(1, int(_nice_step(max(end - first, 1), count)))
    ticks = list(range(int(math.ceil(first / step) * step), end + 1, step))
    return ticks, [_short_int(t) for t in ticks]


def _value_ticks(bottom: float, top: float, transform: str | None, count: int = 4):
    """Round values on the axis; for log axes, powers when the range spans them, else round values."""
    if transform == "log2":
        stride = max(1, math.ceil((top - bottom) / count))
        ticks = [float(p) for p in range(math.ceil(bottom), math.floor(top) + 1, stride)]
        return (ticks, [f"2^{int(p)}" for p in ticks]) if ticks else ([bottom], [f"2^{bottom:.1f}"])
    if transform == "log10":
        low, high = 10 ** bottom, 10 ** top
        if top - bottom >= 2:
            stride = max(1, math.ceil((top - bottom) / count))
            ticks = [float(p) for p in range(math.ceil(bottom), math.floor(top) + 1, stride)]
            return ticks, [_label(10 ** p) for p in ticks]
        values = [v for v in _one_two_five(low, high)] or _linear(low, high, count)
        return [math.log10(v) for v in values], [_label(v) for v in values]
    values = _linear(bottom, top, count)
    return values, [_label(v) for v in values]


def _one_two_five(low: float, high: float) -> list[float]:
    """1, 2, 5, 10, 20, ... inside [low, high]: about evenly spaced on a log axis."""
    values = []
    for exponent in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        for mantissa in (1, 2, 5):
            value = mantissa * 10.0 ** exponent
            if low <= value <= high:
                values.append(value)
    return values


def _apart(ticks: list[float], labels: list[str], bottom: float, top: float, rows: int):
    """Drop ticks that would share a text row (plotext would show one of their labels at random)."""
    gap = (top - bottom) / max(rows, 1) * 2
    kept: list[tuple[float, str]] = []
    for tick, label in zip(ticks, labels):
        if not kept or tick - kept[-1][0] >= gap:
            kept.append((tick, label))
    return [t for t, _ in kept], [label for _, label in kept]


def _linear(low: float, high: float, count: int) -> list[float]:
    step = _nice_step(high - low, count)
    first = math.ceil(low / step) * step
    values = []
    value = first
    while value <= high + step * 1e-9:
        if value > 0 or low <= 0:
            values.append(round(value, 12))
        value += step
    return values or [low]


def _label(value: float) -> str:
    return f"{value:.3g}" if 1e-3 <= abs(value) < 1e4 or value == 0 else f"{value:.0e}"


def _short_int(value: int) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if value >= 10_000:
        return f"{value / 1000:g}k"
    return str(value)
