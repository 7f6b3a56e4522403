"""The in-process event bus: publish fans an event out to every sink, synchronously.

Synchronous on purpose: when `publish` returns, the event is in events.jsonl,
so a checkpoint event is never written before the checkpoint exists, and a
crash loses nothing already published. A lock keeps lines whole when the NVML
sampler thread and the training loop publish at once.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Protocol


class Sink(Protocol):
    def write(self, event: dict) -> None: ...

    def close(self) -> None: ...


class EventBus:
    def __init__(self, *, attempt: int = 0, enabled: bool = True):
        self._sinks: list[Sink] = []
        self._lock = threading.Lock()
        self.attempt = attempt
        # Only rank 0 publishes in a multi-process run; other ranks hold a disabled bus.
        self.enabled = enabled

    def add_sink(self, sink: Sink) -> None:
        with self._lock:
            self._sinks.append(sink)

    def publish(self, type: str, **fields) -> dict:
        """Stamp an event with its type, time and attempt, and hand it to every sink."""
        event = {"type": type, "time": round(time.time(), 3), "attempt": self.attempt, **fields}
        if not self.enabled:
            return event
        with self._lock:
            for sink in self._sinks:
                sink.write(event)
        return event

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
