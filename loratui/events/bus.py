"""The in-process event bus: publish fans an event out to every sink, synchronously.

Synchronous on purpose: when `publish` returns, the event is in events.jsonl,
so a checkpoint event is never written before the checkpoint exists, and a
crash loses nothing already published. A lock keeps lines whole when the NVML
sampler thread and the training loop publish at once. A sink that cannot write
(OSError) loses its own output, never the run.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable, Protocol


# The run's last word: nothing may follow it in the log.
FINAL_EVENTS = ("run_finished", "run_failed")


class Sink(Protocol):
    """write and close; a sink that publishes from a thread of its own (the GPU sampler) also
    has `stop()`, which ends that thread and returns once it has published its last event."""

    def write(self, event: dict) -> None: ...

    def close(self) -> None: ...


class EventBus:
    def __init__(self, *, attempt: int = 0, enabled: bool = True):
        self._sinks: list[Sink] = []
        self._lock = threading.Lock()
        self.attempt = attempt
        # Only rank 0 publishes in a multi-process run; other ranks hold a disabled bus.
        self.enabled = enabled
        self._failed_sinks: set[int] = set()

    def add_sink(self, sink: Sink) -> None:
        with self._lock:
            self._sinks.append(sink)

    def publish(self, type: str, **fields) -> dict:
        """Stamp an event with its type, time and attempt, and hand it to every sink."""
        event = {"type": type, "time": round(time.time(), 3), "attempt": self.attempt, **fields}
        if not self.enabled:
            return event
        if type in FINAL_EVENTS:
            self._stop_background_publishers()
        with self._lock:
            for sink in self._sinks:
                try:
                    sink.write(event)
                except OSError as exc:
                    self._sink_failed(sink, exc)
        return event

    def _stop_background_publishers(self) -> None:
        """Outside the lock: a sampler thread waiting for it must get its event out to finish."""
        for sink in list(self._sinks):
            stop = getattr(sink, "stop", None)
            if stop is not None:
                stop()

    def _sink_failed(self, sink: Sink, exc: OSError) -> None:
        """A sink the disk or a closed stream refuses (the console's trainer.log on a full disk, say).

        Losing its lines must not end the run: the others still get the event. Said once per sink.
        """
        if id(sink) in self._failed_sinks:
            return
        self._failed_sinks.add(id(sink))
        say_on_stderr(f"loratui: {type(sink).__name__} cannot write ({exc}): its lines are lost while it "
                      f"cannot; training goes on")

    def close(self) -> None:
        with self._lock:
            for sink in self._sinks:
                sink.close()
            self._sinks.clear()


class CallbackSink:
    """A sink that calls a function: the monitor and trackers subscribe this way."""

    def __init__(self, callback: Callable[[dict], None]):
        self._callback = callback

    def write(self, event: dict) -> None:
        self._callback(event)

    def close(self) -> None:
        pass


def say_on_stderr(message: str) -> None:
    """One line on stderr, which may sit on the same full disk (trainer.log): then it is lost too, silently."""
    try:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
