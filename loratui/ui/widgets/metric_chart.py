"""A chart of one training metric over steps: loss, grad norm (log) or loss scale (log2).

Data arrives as bucketed history (min and max per bucket, one series per
attempt) and is merged once more down to one point per cell (the line between
points is drawn in braille dots; each point keeps its cell's min and max, so a
one-step spike still reaches the top). plotext draws the frame, ticks and
title; the lines and marks are drawn over it with numpy, exactly as plotext
would draw them (chart_signals.py), at a fraction of plotext's CPU. The
current attempt is drawn in colour, abandoned branches in grey and with a
different character (so they differ under NO_COLOR too); restarts are
vertical lines at the step they went back to; non-finite values and skipped
steps are marked with an x.

`options` (chart_options.py) says how to look: smoothing (an EMA drawn over
the raw points, which stay visible), a window of the last N steps, a cursor
whose (step, value) reading goes into the title, ASCII-only glyphs.

The app sets `data` from its redraw timer (every 2 s at most), never per
event: the whole picture is rebuilt on each change, and the chart paints
strips built once per picture (render_line). plotext's frame is built again
only when what it draws changed (`FrameCalls`): the x axis runs to the run's
max_steps and the y limits settle, so in a long run most changes are new
points under the same frame, and plotext's part was half of a chart's build.
"""

from __future__ import annotations

import math

import numpy as np
from rich.segment import Segment
from rich.text import Text
from textual.color import Color
from textual.content import Content, Span
from textual.reactive import reactive
from textual.strip import Strip
from textual.style import Style
from textual.visual import Visual
from textual_plotext import PlotextPlot

from loratui.ui import format as fmt
from loratui.ui.chart_options import ChartOptions, ema, steps_shown, window_start
from loratui.ui.chart_signals import ChartSignals
from loratui.ui.history import ChartData, ChartSeries

SHORT_TITLES = {"loss": "loss", "grad_norm": "grad norm (log)", "scale": "scale (log2) x=skip"}
NARROW = 40  # below this width a chart gets its short title
METRICS = {
    # name: (title, min field, max field, marks field, transform)
    "loss": ("loss", "loss_min", "loss_max", "nonfinite_loss", None),
    "grad_norm": ("grad norm (log)", "norm_min", "norm_max", "nonfinite_norm", "log10"),
    "scale": ("loss scale (log2) · x skipped", "scale_min", "scale_max", "skipped", "log2"),
}
# Colours of the current attempt on a dark and on a light background (the light ones darker,
# so a line on white keeps its contrast), then the shared ones.
LINE_COLOURS = {
    "loss": {True: (0, 175, 255), False: (0, 90, 190)},
    "grad_norm": {True: (255, 175, 0), False: (175, 95, 0)},
    "scale": {True: (175, 135, 255), False: (95, 55, 175)},
}
RAW_COLOURS = {True: (90, 110, 130), False: (165, 175, 185)}  # raw points under a smoothed line
OLD_ATTEMPT = {True: (110, 110, 110), False: (150, 150, 150)}
MARK = (255, 60, 60)
RESTART = (220, 80, 220)
CURSOR = {True: (230, 230, 230), False: (40, 40, 40)}
AXIS_ALLOWANCE = 9  # cells taken by y labels and the frame
HELD_LIMITS_SLACK = 1.25  # y limits are held while at most this much wider than a fresh fit of the values
ALL_NONFINITE_ROW = 0.97  # where the x marks of an all-nan/inf chart sit, on its 0..1 axis: the top row
# ASCII mode: plotext's frame and lines are box-drawing characters; each becomes its ASCII cousin
# (and the titles' middle dots a hyphen).
ASCII_FRAME = str.maketrans({"─": "-", "│": "|", "┌": "+", "┐": "+", "└": "+", "┘": "+", "┬": "+", "┴": "+",
                             "├": "+", "┤": "+", "┼": "+", "·": "-"})


class FrameCalls:
    """The plotext calls that set up a chart's frame (title, limits, ticks, restart lines), recorded.

    `_plot_into` makes them on this recorder; they reach plotext (`replay`) only when
    they differ from the calls of the frame plotext built last (`key`).
    """

    def __init__(self):
        self.calls: list[tuple[str, tuple, dict]] = []

    def __getattr__(self, name: str):
        def record(*args, **kwargs) -> None:
            self.calls.append((name, args, kwargs))
        return record

    def key(self) -> str:
        return repr(self.calls)

    def replay(self, plt) -> None:
        plt.clear_data()
        plt.clear_figure()
        for name, args, kwargs in self.calls:
            getattr(plt, name)(*args, **kwargs)


class MetricChart(PlotextPlot):
    DEFAULT_CSS = """
    MetricChart {
        height: 1fr;
        min-height: 6;
    }
    """

    data: reactive[ChartData | None] = reactive(None, always_update=True)
    options: reactive[ChartOptions] = reactive(ChartOptions, always_update=True)

    def __init__(self, metric: str, **kwargs):
        super().__init__(**kwargs)
        self.metric = metric
        self._drawn: tuple | None = None
        self._strips: list[Strip] = []  # the last plot, reused while data, size, theme and options hold
        self._fallback: Content | None = None  # the picture when it came through plotext's ANSI text
        self.signals = ChartSignals()  # the lines and marks, drawn with numpy over plotext's frame
        self._frame_key: tuple | None = None  # what plotext's last frame was built from
        self._drawn_limits: tuple | None = None  # (window, y limits) drawn last (`_held_limits`)
        self._frame_cells: tuple | None = None  # that frame's cells, before the signals were drawn over them
        self.reading: str = ""  # the cursor's reading, as the title shows it

    def watch_data(self, data: ChartData | None) -> None:
        if (data.revision if data else None) != (self._drawn[0] if self._drawn else None):
            self.refresh()

    def watch_options(self, options: ChartOptions) -> None:
        if self._drawn is None or options != self._drawn[3]:
            self.refresh()

    def render_line(self, y: int) -> Strip:
        """One row of the picture, from strips built once per change (Textual's line API).

        Drawing from Content, Textual rebuilds every styled cell of the chart per
        change (a few ms of CPU each time, beside a training run on 2 cores); the
        strips come straight from plotext's matrix, one segment per run of a style.
        """
        strips = self._current_strips()
        if y < len(strips):
            return strips[y]
        return Strip.blank(self.size.width, self.visual_style.rich_style)

    def render(self) -> Content:
        """The same picture as Content (what Textual asks a widget for outside drawing: text selection)."""
        self._current_strips()
        if self._fallback is not None:
            return self._fallback
        return matrix_content(self.plt.monitor.matrix, self.options.ascii)

    def _current_strips(self) -> list[Strip]:
        """Rebuild the plot for the size it is drawn at, unless neither data, size, theme nor options changed.

        A relayout of the screen (a panel growing) paints every widget again: the
        chart then returns its last picture instead of building it anew.
        """
        data = self.data
        options = self.options
        key = (data.revision if data else None, self.size, self.app.theme, options, self.visual_style)
        if key != self._drawn:
            self._drawn = key
            frame = FrameCalls()
            self._plot_into(frame, data, options)
            self._strips = self._build_strips(options.ascii, frame)
        return self._strips

    def _build_strips(self, ascii_only: bool, frame: FrameCalls) -> list[Strip]:
        """plotext's character matrix straight into strips, in the form Textual paints.

        PlotextPlot.render has plotext write the picture as ANSI text, which is then
        parsed back into styled text: that round trip was half of a chart's build time
        in a profile of the dashboard beside a training run. Here the same sizing and
        theme steps run, then the matrix is read directly. Our colours are RGB; a named
        one (plotext's default theme, which a chart drawn right after a theme change gets
        until the new theme is registered with plotext) takes the old way.
        """
        plot = self.plt
        width, height = self.size
        theme = self._get_plotext_theme_name(self.app.theme)
        frame_key = (frame.key(), width, height, theme)
        if frame_key == self._frame_key:
            restore_cells(plot.monitor.matrix, self._frame_cells)  # the same frame, without the last lines
        else:
            frame.replay(plot)
            plot.plotsize(width, height)
            plot._set_size(width, height)  # as PlotextPlot.render does, see its comment
            plot.theme(theme)
            plot._set_sizes()
            plot._build_matrix()
            self._frame_key, self._frame_cells = frame_key, copy_cells(plot.monitor.matrix)
        self.signals.draw(plot.monitor)
        self._fallback = None
        try:
            return matrix_strips(plot.monitor.matrix, ascii_only, self.visual_style)
        except UnknownColour:
            self._frame_key = None  # plotext's figure gets the lines too: build the next frame afresh
            self.signals.replay(plot)
            text = PlotextPlot.render(self)
            if ascii_only:
                text = Text(text.plain.translate(ASCII_FRAME), spans=text.spans, end="")
            self._fallback = Content.from_rich_text(text, console=self.app.console)
            return Visual.to_strips(self, self._fallback, width, height, self.visual_style)

    def _plot_into(self, frame: FrameCalls, data: ChartData | None, options: ChartOptions) -> None:
        """The frame's plotext calls into `frame`, the lines and marks into `self.signals`."""
        title, low_field, high_field, marks_field, transform = METRICS[self.metric]
        dark = self.app.current_theme.dark
        colour, glyphs = LINE_COLOURS[self.metric][dark], options.glyphs
        short = SHORT_TITLES[self.metric]
        if self.size.width < NARROW:
            title = short
        signals = self.signals
        signals.clear()
        self.reading = ""
        if not data or not data.series or not self.size.width:
            frame.title(f"{title} · waiting" if self.size.width < NARROW else f"{title} · waiting for the first step")
            return
        earliest, latest = steps_shown(data)
        # The whole run starts at its earliest restart too: a restart back to step 0 is drawn at 0.
        earliest = min([earliest] + [mark.from_step for mark in data.restarts])
        first = window_start(latest, options.window, earliest)
        end = latest + 1 if options.window else max(latest + 1, data.max_steps or 0)
        visible = [_from_step(series, first, data.width) for series in data.series]
        visible = [series for series in visible if series is not None]
        points = max(8, self.size.width - AXIS_ALLOWANCE)  # one per cell: see the module's docstring
        merged = [(series, *_merged(series, low_field, high_field, marks_field, transform, points))
                  for series in visible]
        # Smoothed over the whole run, then windowed: a window shows the same curve, not a new start.
        whole = {series.attempt: series for series in data.series}
        smoothed = {series.attempt: _smoothed(whole[series.attempt], merged_steps, low_field, high_field, transform,
                                              options.smoothing_weight, data.width)
                    for series, merged_steps, *_ in merged if series.current and self.smooths(options)}
        if options.cursor is not None:
            self.reading = _reading(data, options.cursor, low_field, high_field, self.metric,
                                    options.smoothing_weight if self.smooths(options) else 0.0)
        title = self._title(title, short, options)
        # A restart back to the first step shown would sit on the y axis, unseen: one column of room.
        column = (end - first) / max(1, self.size.width - AXIS_ALLOWANCE)
        room = any(first <= mark.from_step < first + column for mark in data.restarts)
        frame.xlim(first - column if room else first, end)
        frame.scatter([], [], marker="x")  # a signal of plotext's own, or it leaves out the axes' ticks
        frame.xticks(*_step_ticks(first, end))
        finite = [np.concatenate([low[np.isfinite(low)], high[np.isfinite(high)]]) for _, _, low, high, _ in merged]
        finite = [values for values in finite if values.size]
        frame.title(title)
        if not finite:
            # Every value so far is nan/inf: nothing to draw a line through, so mark where they were,
            # along the top as on any other chart.
            marked = f"{title} · all nan/inf"
            frame.title(marked if len(marked) <= self.size.width - 2 else f"{short} · all nan/inf")
            for _series, steps, _low, _high, marks in merged:
                if marks.any():
                    signals.scatter(steps[marks], [ALL_NONFINITE_ROW] * int(marks.sum()), marker=glyphs.mark,
                                    color=MARK)
            frame.ylim(0, 1)
            frame.yticks([], [])
            self._cursor_line(options, first, end, 0, 1, dark)
            return
        low_value, high_value = float(min(v.min() for v in finite)), float(max(v.max() for v in finite))
        pad = (high_value - low_value) * 0.06 or 0.5
        bottom, top = self._held_limits(low_value, high_value, (low_value - pad, high_value + pad), options.window)
        # Earlier attempts first, so the current one is drawn over them.
        for series, steps, low, high, _marks in sorted(merged, key=lambda item: item[0].current):
            if series.current:
                line_colour = RAW_COLOURS[dark] if series.attempt in smoothed else colour
                marker = glyphs.raw if series.attempt in smoothed else glyphs.line
            else:
                line_colour, marker = OLD_ATTEMPT[dark], glyphs.earlier
            keep = np.isfinite(high)
            signals.plot(steps[keep], high[keep], marker=marker, color=line_colour)
            keep_low = np.isfinite(low)
            if not np.array_equal(low[keep_low], high[keep_low]):
                signals.plot(steps[keep_low], low[keep_low], marker=marker, color=line_colour)
        for steps, values in smoothed.values():
            keep = np.isfinite(values)
            signals.plot(steps[keep], values[keep], marker=glyphs.line, color=colour)
        for _series, steps, low, _high, marks in merged:
            if marks.any():
                # Skipped steps sit on the scale line they ran with; a non-finite value has no
                # place on the axis, so it is marked along the top.
                at = np.where(np.isfinite(low[marks]), low[marks], top) if self.metric == "scale" else \
                    np.full(int(marks.sum()), top - pad / 2)
                signals.scatter(steps[marks], at, marker=glyphs.mark, color=MARK)
        for mark in data.restarts:
            if first <= mark.from_step <= end:
                frame.vline(mark.from_step, color=RESTART)
        self._cursor_line(options, first, end, bottom, top, dark)
        frame.ylim(bottom, top)
        frame.yticks(*_apart(*_value_ticks(bottom, top, transform), bottom, top, rows=self.size.height - 4))

    def _held_limits(self, low: float, high: float, fitted: tuple[float, float],
                     window: int | None) -> tuple[float, float]:
        """The y limits: the last ones drawn while the values fit inside them and fill most of them, else
        `fitted` (the values with their margin). A new window (a zoom) is fitted afresh.

        A live run's newest points mostly land inside the limits already drawn: holding them
        keeps the frame (and its ticks) as it was, so plotext need not build it again
        (FrameCalls), and the axis does not shift by a hair with each new low.
        """
        if self._drawn_limits is not None and self._drawn_limits[0] == window:
            held = self._drawn_limits[1]
            if held[0] <= low and high <= held[1] and held[1] - held[0] <= (fitted[1] - fitted[0]) * HELD_LIMITS_SLACK:
                return held
        self._drawn_limits = (window, fitted)
        return fitted

    def _title(self, title: str, short: str, options: ChartOptions) -> str:
        """The title with what is on (window, smoothing, the cursor's reading), as much as fits.

        plotext leaves out a title wider than the chart, so a narrow chart drops words
        first, then the window and smoothing, and keeps the cursor's reading longest.
        """
        window = f"last {options.window}" if options.window else ""
        smoothing = options.smoothing if self.smooths(options) else ""
        candidates = [(title, window, f"{smoothing} smoothing" if smoothing else "", self.reading),
                      (short, window, smoothing, self.reading), (short, self.reading), (self.reading,),
                      (short, window, smoothing), (short,)]
        joined = [" · ".join(part for part in parts if part) for parts in candidates]
        return next((text for text in joined if text and len(text) <= self.size.width - 2), short)

    def smooths(self, options: ChartOptions) -> bool:
        """Loss and grad norm are smoothed; the loss scale is a staircase, shown as it is."""
        return options.smoothing != "off" and self.metric != "scale"

    def _cursor_line(self, options: ChartOptions, first: int, end: int, bottom: float, top: float,
                     dark: bool) -> None:
        """The cursor: a column of its own character (not a line, which a restart already is)."""
        if options.cursor is None or not first <= options.cursor <= end:
            return
        rows = max(2, self.size.height - 4)
        heights = np.linspace(bottom, top, rows).tolist()
        self.signals.scatter([options.cursor] * rows, heights, marker=options.glyphs.cursor, color=CURSOR[dark])


class UnknownColour(Exception):
    """A plotext colour given by name or palette number: left to plotext's own ANSI output."""


PLOTEXT_STYLES = {"bold": "bold", "dim": "dim", "italic": "italic", "underline": "underline", "inverted": "reverse"}


def _colour(value) -> Color | None:
    if isinstance(value, tuple):
        return Color(*value)
    if value in ("default", ""):
        return None
    raise UnknownColour(value)


def _style(foreground, style, background, cache: dict) -> Style | None:
    key = (foreground, style, background)
    if key not in cache:
        flags = {PLOTEXT_STYLES[word]: True for word in str(style).split() if word in PLOTEXT_STYLES}
        fg, bg = _colour(foreground), _colour(background)
        cache[key] = Style(foreground=fg, background=bg, **flags) if fg or bg or flags else None
    return cache[key]


def style_runs(matrix, ascii_only: bool):
    """A plotext matrix (rows bottom-up, a character and three style grids), top row first: each row's
    characters and its runs of one style, as (start, end, (foreground, style, background))."""
    width = matrix.cols
    for row in reversed(matrix.Rows):
        cells = list(zip(matrix.fullground[row], matrix.style[row], matrix.background[row]))
        line = "".join(matrix.marker[row])
        runs, start = [], 0
        for column in range(1, width + 1):
            if column == width or cells[column] != cells[start]:
                runs.append((start, column, cells[start]))
                start = column
        yield (line.translate(ASCII_FRAME) if ascii_only else line), runs


def copy_cells(matrix) -> tuple:
    """plotext's matrix cells (characters, colours, styles), copied."""
    return tuple([row[:] for row in rows] for rows in (matrix.marker, matrix.fullground, matrix.background,
                                                        matrix.style))


def restore_cells(matrix, cells: tuple) -> None:
    matrix.marker, matrix.fullground, matrix.background, matrix.style = ([row[:] for row in rows] for rows in cells)


def matrix_strips(matrix, ascii_only: bool, base: Style) -> list[Strip]:
    """The picture as strips, top row first: one segment per run of a style, on `base` (the widget's style)."""
    strips, styles, rich_styles = [], {}, {}
    for line, runs in style_runs(matrix, ascii_only):
        segments = []
        for start, end, key in runs:
            if key not in rich_styles:
                cell_style = _style(*key, styles)
                rich_styles[key] = (base + cell_style if cell_style is not None else base).rich_style
            segments.append(Segment(line[start:end], rich_styles[key]))
        strips.append(Strip(segments, matrix.cols))
    return strips


def matrix_content(matrix, ascii_only: bool) -> Content:
    """The picture as Content, top row first."""
    lines, spans, offset, styles = [], [], 0, {}
    for line, runs in style_runs(matrix, ascii_only):
        for start, end, key in runs:
            run_style = _style(*key, styles)
            if run_style is not None:
                spans.append(Span(offset + start, offset + end, run_style))
        lines.append(line)
        offset += len(line) + 1
    return Content("\n".join(lines), spans)


def _from_step(series: ChartSeries, first: int, width: int) -> ChartSeries | None:
    """The part of a series at or after `first` (a window); None when nothing is left."""
    if int(series.steps[0]) + width > first:
        return series
    keep = series.steps + width > first
    if not keep.any():
        return None
    fields = {name: getattr(series, name) for name in series.__dataclass_fields__}
    for name, value in fields.items():
        if isinstance(value, np.ndarray):
            fields[name] = value[keep]
    return ChartSeries(**fields)


def _smoothed(series: ChartSeries, merged_steps: np.ndarray, low_field: str, high_field: str,
              transform: str | None, weight: float, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The EMA of a series' values at the chart's resolution, transformed like the axis.

    It runs over every bucket (each bucket's midpoint: the value itself at one step per
    bucket), its weight raised to the bucket width so that heavy smoothing means the same
    number of steps however long the run; then it is sampled where the chart has points.
    """
    low, high = getattr(series, low_field), getattr(series, high_field)
    with np.errstate(all="ignore"):
        middle = np.where(np.isfinite(low) & np.isfinite(high), (low + high) / 2, np.nan)
    values = ema(middle, weight ** width)
    values = values[np.searchsorted(series.steps, merged_steps)]
    if transform:
        log = np.log10 if transform == "log10" else np.log2
        with np.errstate(all="ignore"):
            values = log(np.where(values > 0, values, np.nan))
    return merged_steps, values


def _reading(data: ChartData, step: int, low_field: str, high_field: str, metric: str, weight: float) -> str:
    """What the cursor reads: `step 42: 2.31` (a range where a bucket holds several steps).

    The current attempt is read first; an earlier one where the current has no value
    there (the branch it abandoned, or a loss scale the new precision does not have).
    """
    ordered = sorted(data.series, key=lambda series: (series.current, series.attempt), reverse=True)
    for series in ordered:
        index = int(np.searchsorted(series.steps, step, side="right")) - 1
        if index < 0 or int(series.steps[index]) + data.width <= step:
            continue
        lows, highs = getattr(series, low_field), getattr(series, high_field)
        low, high = float(lows[index]), float(highs[index])
        if math.isnan(high):
            if metric == "scale":
                continue  # no loss scaler in this attempt
            value = "nan/inf"
        else:
            value = fmt.number(high) if low == high else f"{fmt.number(low)}..{fmt.number(high)}"
        if series.current and weight:
            with np.errstate(all="ignore"):
                smooth = ema((lows[: index + 1] + highs[: index + 1]) / 2, weight ** data.width)[-1]
            if math.isfinite(smooth):
                value += f", smoothed {fmt.number(float(smooth))}"
        attempt = "" if series.current else f" (attempt {series.attempt})"
        return f"step {step}: {value}{attempt}"
    return f"step {step}: no value"


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
