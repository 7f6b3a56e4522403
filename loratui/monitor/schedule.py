"""Which steps the health probes run on, within a budget of the training time.

The first `first_steps` steps of every attempt are probed, so that a fault a
config or a restart brings shows at once. After that, probes run on multiples
of `every`, unless a probe costs more than `budget` of the training time since
the previous one: then the next probe moves to a later multiple. A probe's
cost depends on the hardware as much as on the model (its fp32 recomputation
is a fraction of a step on a CPU and can be many bf16 steps on a GPU whose
fp32 matmuls are slow), so it is measured, not assumed: the probed step's
time minus a typical unprobed step's (the median of the recent ones).
A budget of 1 (all of the time) turns the budget off: multiples of `every`,
whatever a probe costs, for runs that are there to be probed.
"""

from __future__ import annotations

import math
import statistics
from collections import deque

TYPICAL_WINDOW = 50  # unprobed steps behind "a typical step"


class ProbeSchedule:
    def __init__(self, *, every: int, first_steps: int, budget: float):
        self.every = every
        self.first_steps = first_steps
        self.budget = budget
        self.unprobed_seconds: deque[float] = deque(maxlen=TYPICAL_WINDOW)
        self.start_attempt(0)

    def start_attempt(self, step: int) -> None:
        """A new attempt starts after `step`: its first steps are probed, then the next multiple of `every`."""
        self.steps_in_attempt = 0
        self.next_step = self._multiple_at_or_after(step + 1)

    def due(self, step: int) -> bool:
        return self.steps_in_attempt < self.first_steps or step >= self.next_step

    def observe(self, step: int, seconds: float, probe_seconds: float | None) -> None:
        """After each step: its wall seconds, and what its probe took (None: not probed)."""
        self.steps_in_attempt += 1
        if probe_seconds is None:
            self.unprobed_seconds.append(seconds)
            return
        if step < self.next_step:
            return  # a start-of-attempt probe: outside the budget, and the cadence stays as it was
        spacing = self.every
        if self.unprobed_seconds and self.budget < 1:
            typical = statistics.median(self.unprobed_seconds)
            cost = max(probe_seconds, seconds - typical)
            # Rounded first: a spacing of exactly 150 must not become 151 through float error.
            spacing = max(spacing, math.ceil(round(cost / (self.budget * typical), 6)))
        self.next_step = self._multiple_at_or_after(step + spacing)

    def _multiple_at_or_after(self, step: int) -> int:
        return -(-step // self.every) * self.every
