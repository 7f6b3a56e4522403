"""A chart's lines and marks, drawn with numpy into plotext's matrix exactly as plotext draws them.

plotext draws a line point by point in Python: it interpolates between data
points on a grid of sub-cells, then groups the sub-cells into braille
characters, a few ms per chart per change (most of a chart's build, beside a
training run on 2 cores). `ChartSignals` takes the same `plot` and `scatter`
calls and does that work with numpy arrays, with plotext's own arithmetic:

- a value's sub-cell is `floor(round8(0.5 + (bins - 1) * (v - low) / (high - low)))`
  (plotext's `get_matrix_data`, its `round` rounding halves up);
- a line between two points has `max(|dx|, |dy|) + 1` points, each truncated to an
  integer (`get_line`), the last one left to the next segment;
- a braille cell is 2x4 sub-cells, and each signal sets whole cells (`hd_group`): a
  later signal overwrites an earlier one's cells, as plotext's draw order does.

plotext still draws the frame, ticks, labels, title and vertical lines (restarts);
the signals go on top, into the canvas that plotext's frame encloses.
`replay` hands the same calls to plotext instead, for the chart's fallback path.
tests/test_ui_chart_signals.py checks the two drawings cell for cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BRAILLE = "braille"
# The bit of each braille dot by its sub-cell in a cell: [row from the bottom][column] (Unicode's dot order).
BRAILLE_BITS = np.array([[0x40, 0x80], [0x04, 0x20], [0x02, 0x10], [0x01, 0x08]], dtype=np.int64)
BRAILLE_CHARS = np.array([chr(0x2800 + code) for code in range(256)], dtype=object)


@dataclass(frozen=True)
class Signal:
    x: np.ndarray
    y: np.ndarray
    marker: str
    color: tuple
    lines: bool  # plot (points joined) or scatter


@dataclass(frozen=True)
class Canvas:
    """The area inside plotext's frame, in matrix cells (rows counted from the bottom)."""

    col: int
    row: int
    width: int
    height: int


class ChartSignals:
    """The data a chart draws, in plotext's call order; drawn in one pass once plotext has built the frame."""

    def __init__(self):
        self.signals: list[Signal] = []

    def clear(self) -> None:
        self.signals.clear()

    def plot(self, x, y, marker: str, color: tuple) -> None:
        self.signals.append(Signal(np.asarray(x, dtype=float), np.asarray(y, dtype=float), marker, color, True))

    def scatter(self, x, y, marker: str, color: tuple) -> None:
        self.signals.append(Signal(np.asarray(x, dtype=float), np.asarray(y, dtype=float), marker, color, False))

    def replay(self, plt) -> None:
        """Hand the signals to plotext itself (the chart's fallback, which has plotext draw everything)."""
        for signal in self.signals:
            draw = plt.plot if signal.lines else plt.scatter
            draw(signal.x.tolist(), signal.y.tolist(), marker=signal.marker, color=signal.color)

    def draw(self, monitor) -> None:
        """Each signal into the canvas of a built plotext figure (its monitor), at the limits plotext drew the
        frame's ticks with, later signals over earlier ones."""
        canvas = canvas_of(monitor.matrix)
        if canvas is None or not self.signals:
            return
        xlim, ylim = monitor.xlim[0], monitor.ylim[0]  # the lower x and left y axes, the ones the signals use
        matrix = monitor.matrix
        for signal in self.signals:
            if not signal.x.size:
                continue
            braille = signal.marker == BRAILLE
            x_bins, y_bins = (canvas.width * 2, canvas.height * 4) if braille else (canvas.width, canvas.height)
            x, y = to_bins(signal.x, xlim, x_bins), to_bins(signal.y, ylim, y_bins)
            if signal.lines:
                x, y = joined(x, y)
            if braille:
                columns, rows, characters = braille_cells(x, y)
            else:
                columns, rows = x, y
                characters = None
            inside = (columns >= 0) & (columns < canvas.width) & (rows >= 0) & (rows < canvas.height)
            columns, rows = columns[inside] + canvas.col, rows[inside] + canvas.row
            characters = characters[inside] if characters is not None else None
            # plotext's insert_element, without its per-cell checks: every cell here is inside the canvas.
            markers, colours = matrix.marker, matrix.fullground
            cells = zip(columns.tolist(), rows.tolist(), characters.tolist() if characters is not None else
                        [signal.marker] * len(columns))
            for column, row, marker in cells:
                markers[row][column] = marker
                colours[row][column] = signal.color


def canvas_of(matrix) -> Canvas | None:
    """The canvas between the frame's bottom-left and top-right corners (None without a whole frame)."""
    bottom_left = top_right = None
    for row, cells in enumerate(matrix.marker):
        line = "".join(cells)
        if bottom_left is None and "└" in line:
            bottom_left = (line.index("└"), row)
        if "┐" in line:
            top_right = (line.rindex("┐"), row)
    if bottom_left is None or top_right is None:
        return None
    col, row = bottom_left[0] + 1, bottom_left[1] + 1
    width, height = top_right[0] - col, top_right[1] - row
    return Canvas(col, row, width, height) if width > 0 and height > 0 else None


def to_bins(values: np.ndarray, lim: tuple[float, float], bins: int) -> np.ndarray:
    """plotext's get_matrix_data: floor(round(0.5 + (bins - 1) * (v - low) / (high - low), 8)), halves rounded up."""
    change = 0.5 + (bins - 1) * (values - lim[0]) / (lim[1] - lim[0])
    scaled = change * 10 ** 8
    whole = np.floor(scaled)
    rounded = np.where(scaled - whole < 0.5, whole, np.ceil(scaled)) * 10 ** -8
    return np.floor(rounded).astype(np.int64)


def joined(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """plotext's get_lines: each segment's points (but its last), then the last point."""
    if x.size < 2:
        return x, y
    dx, dy = np.diff(x), np.diff(y)
    counts = np.maximum(np.abs(dx), np.abs(dy))  # points per segment, its end left out
    total = int(counts.sum())
    segment = np.repeat(np.arange(dx.size), counts)
    k = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    divisor = counts[segment]  # a segment with points has at least one
    # lower + k * slope with slope = (upper - lower) / (points - 1), truncated: plotext's linspace and int()
    xs = np.trunc(x[segment] + k * (dx[segment] / divisor)).astype(np.int64)
    ys = np.trunc(y[segment] + k * (dy[segment] / divisor)).astype(np.int64)
    return np.append(xs, x[-1]), np.append(ys, y[-1])


def braille_cells(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sub-cells grouped into cells, each cell's dots ORed into its braille character."""
    columns, rows = x // 2, y // 4
    bits = BRAILLE_BITS[y % 4, x % 2]
    keys = columns * (1 << 32) + (rows + (1 << 31))  # one integer per cell; rows below the canvas stay apart
    unique, inverse = np.unique(keys, return_inverse=True)
    codes = np.zeros(unique.size, dtype=np.int64)
    np.bitwise_or.at(codes, inverse, bits)
    return unique // (1 << 32), unique % (1 << 32) - (1 << 31), BRAILLE_CHARS[codes]
