"""Chart history in min/max buckets: bounded memory at any run length, and no spike lost.

Each attempt of a run (attempt 0, then one per restart) keeps its own series,
so after a rollback the abandoned branch stays visible beside the new one.
All series share one bucket width (a power of two steps): when a step lands
beyond the capacity, every series merges neighbouring buckets pairwise and
the width doubles. A bucket keeps the min and the max of each metric, so a
single-step spike survives every merge.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CAPACITY = 2048  # buckets per series: wider than any terminal chart in braille pixels
MAX_ATTEMPTS = 8  # older attempts' series are dropped (their restarts stay marked)

# Rows of a series' `stats` array.
LOSS_MIN, LOSS_MAX, NORM_MIN, NORM_MAX, SCALE_MIN, SCALE_MAX = range(6)
COUNTS = ("steps", "skipped", "nonfinite_loss", "nonfinite_norm")


@dataclass
class AttemptSeries:
    attempt: int
    from_step: int  # where this attempt began (0, or the checkpoint it restarted from)
    precision: str | None = None
    stats: np.ndarray = field(default_factory=lambda: _empty_stats())
    counts: np.ndarray = field(default_factory=lambda: np.zeros((len(COUNTS), CAPACITY), np.int64))

    def merge_pairs(self) -> None:
        """Halve the resolution: bucket i becomes buckets 2i and 2i+1 combined."""
        stats = np.full_like(self.stats, np.nan)
        half = CAPACITY // 2
        for row in (LOSS_MIN, NORM_MIN, SCALE_MIN):
            stats[row, :half] = np.fmin(self.stats[row, 0::2], self.stats[row, 1::2])
        for row in (LOSS_MAX, NORM_MAX, SCALE_MAX):
            stats[row, :half] = np.fmax(self.stats[row, 0::2], self.stats[row, 1::2])
        counts = np.zeros_like(self.counts)
        counts[:, :half] = self.counts[:, 0::2] + self.counts[:, 1::2]
        self.stats, self.counts = stats, counts


@dataclass(frozen=True)
class RestartMark:
    at_step: int  # the step the run had reached
    from_step: int  # the checkpoint it went back to
    attempt: int
    precision: str | None
    learning_rate: float | None


@dataclass(frozen=True)
class ChartSeries:
    """A drawable copy of one attempt: bucket start steps and the figures per bucket."""

    attempt: int
    current: bool
    steps: np.ndarray
    loss_min: np.ndarray
    loss_max: np.ndarray
    norm_min: np.ndarray
    norm_max: np.ndarray
    scale_min: np.ndarray
    scale_max: np.ndarray
    skipped: np.ndarray
    nonfinite_loss: np.ndarray
    nonfinite_norm: np.ndarray


@dataclass(frozen=True)
class ChartData:
    revision: int
    width: int  # steps per bucket
    series: tuple[ChartSeries, ...]
    restarts: tuple[RestartMark, ...]
    fp16_seen: bool
    max_steps: int | None


class RunHistory:
    def __init__(self):
        self.width = 1
        self.attempts: dict[int, AttemptSeries] = {}
        self.restarts: list[RestartMark] = []
        self.current_attempt = 0
        self.revision = 0  # moves on every change: charts redraw only when it did
        self.fp16_seen = False
        self.max_steps: int | None = None

    def expect_steps(self, max_steps: int) -> None:
        """Size the buckets for the whole run up front, so they need not merge as it grows."""
        self.max_steps = max_steps
        self._fit(max_steps)
        self.revision += 1

    def start_attempt(self, attempt: int, from_step: int, precision: str | None) -> None:
        series = self._series(attempt)
        series.from_step = from_step
        series.precision = precision or series.precision
        self.current_attempt = max(self.current_attempt, attempt)
        self.fp16_seen |= precision == "fp16"
        self.revision += 1

    def mark_restart(self, mark: RestartMark) -> None:
        self.restarts.append(mark)
        del self.restarts[:-64]
        self.revision += 1

    def add_steps(self, attempt: np.ndarray, step: np.ndarray, loss: np.ndarray, grad_norm: np.ndarray,
                  scale: np.ndarray, skipped: np.ndarray) -> None:
        if len(step) == 0:
            return
        self._fit(int(step.max()))
        if np.isfinite(scale).any():
            self.fp16_seen = True
        for number in np.unique(attempt):
            rows = attempt == number
            self._add(self._series(int(number)), step[rows], loss[rows], grad_norm[rows], scale[rows],
                      skipped[rows])
        self.current_attempt = max(self.current_attempt, int(attempt.max()))
        self.revision += 1

    def _add(self, series: AttemptSeries, step, loss, grad_norm, scale, skipped) -> None:
        index = step // self.width
        finite_loss = np.where(np.isfinite(loss), loss, np.nan)
        finite_norm = np.where(np.isfinite(grad_norm), grad_norm, np.nan)
        for row, values, reduce in ((LOSS_MIN, finite_loss, np.fmin), (LOSS_MAX, finite_loss, np.fmax),
                                    (NORM_MIN, finite_norm, np.fmin), (NORM_MAX, finite_norm, np.fmax),
                                    (SCALE_MIN, scale, np.fmin), (SCALE_MAX, scale, np.fmax)):
            reduce.at(series.stats[row], index, values)
        np.add.at(series.counts[0], index, 1)
        np.add.at(series.counts[1], index, skipped.astype(np.int64))
        np.add.at(series.counts[2], index, (~np.isfinite(loss)).astype(np.int64))
        np.add.at(series.counts[3], index, (~np.isfinite(grad_norm)).astype(np.int64))

    def _series(self, attempt: int) -> AttemptSeries:
        if attempt not in self.attempts:
            self.attempts[attempt] = AttemptSeries(attempt, from_step=0)
            while len(self.attempts) > MAX_ATTEMPTS:
                del self.attempts[min(self.attempts)]
        return self.attempts[attempt]

    def _fit(self, step: int) -> None:
        while step >= CAPACITY * self.width:
            for series in self.attempts.values():
                series.merge_pairs()
            self.width *= 2

    def chart_data(self) -> ChartData:
        """Copies of the occupied buckets (small: CAPACITY per attempt at most)."""
        out = []
        for number in sorted(self.attempts):
            series = self.attempts[number]
            used = np.flatnonzero(series.counts[0])
            if used.size == 0:
                continue
            stats, counts = series.stats[:, used], series.counts[:, used]
            out.append(ChartSeries(
                attempt=number, current=number == self.current_attempt, steps=used * self.width,
                loss_min=stats[LOSS_MIN], loss_max=stats[LOSS_MAX], norm_min=stats[NORM_MIN],
                norm_max=stats[NORM_MAX], scale_min=stats[SCALE_MIN], scale_max=stats[SCALE_MAX],
                skipped=counts[1], nonfinite_loss=counts[2], nonfinite_norm=counts[3]))
        return ChartData(self.revision, self.width, tuple(out), tuple(self.restarts), self.fp16_seen, self.max_steps)


def _empty_stats() -> np.ndarray:
    return np.full((6, CAPACITY), np.nan)
