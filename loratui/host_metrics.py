"""The machine the trainer runs on: CPU and RAM, sampled beside the GPU figures.

Training and data loading live in host memory (vision-language data more so),
and without a GPU the host is all there is. `HostReader` reads through psutil
(already required by accelerate); `HostSampler`, a bus sink like the GPU
sampler, publishes a `host` event every few seconds from a daemon thread:

    {"type": "host", "step": 12, "cpu_pct": 71.5, "cpu_count": 16, "process_cpu_pct": 98.0,
     "rss_mib": 2210.4, "ram_used_mib": 41230.0, "ram_total_mib": 128512.0}

cpu_pct is the whole machine (all cores, 0-100); process_cpu_pct the trainer
and its children (data-loader workers) as `top` counts it (100 = one core);
rss_mib their resident memory together. The bus stops the sampler before the
run's last word, as it does the GPU sampler; stopping takes one last reading.
"""

from __future__ import annotations

import threading
from typing import Callable

MIB = 1 << 20
INTERVAL_S = 2.0
STOP_WAIT_S = 5.0


class HostReader:
    """CPU and memory of this machine and of this process with its children."""

    def __init__(self):
        import psutil

        self._psutil = psutil
        self._process = psutil.Process()
        self._children: dict[int, object] = {}
        # cpu_percent measures since its previous call: prime both, so the first reading is real.
        psutil.cpu_percent(interval=None)
        self._process.cpu_percent(interval=None)

    def read(self) -> dict:
        psutil = self._psutil
        memory = psutil.virtual_memory()
        process_cpu = self._process.cpu_percent(interval=None)
        rss = self._process.memory_info().rss
        for child in self._live_children():
            try:
                process_cpu += child.cpu_percent(interval=None)
                rss += child.memory_info().rss
            except psutil.Error:  # it ended between the listing and the reading
                continue
        return {"cpu_pct": psutil.cpu_percent(interval=None), "cpu_count": psutil.cpu_count(),
                "process_cpu_pct": round(process_cpu, 1), "rss_mib": round(rss / MIB, 1),
                "ram_used_mib": round((memory.total - memory.available) / MIB, 1),
                "ram_total_mib": round(memory.total / MIB, 1)}

    def _live_children(self) -> list:
        """The same Process objects from one reading to the next: each measures CPU since its last call."""
        try:
            current = {child.pid: child for child in self._process.children(recursive=True)}
        except self._psutil.Error:
            current = {}
        self._children = {pid: self._children.get(pid, child) for pid, child in current.items()}
        return list(self._children.values())


class HostSampler:
    """A bus sink that publishes a `host` event every `interval` seconds once the run has started."""

    def __init__(self, publish: Callable[..., object], *, reader_factory: Callable[[], HostReader] = HostReader,
                 interval: float = INTERVAL_S):
        self._publish = publish
        self._reader_factory = reader_factory
        self._interval = interval
        self._step: int | None = None
        self._stopped = threading.Event()
        self._last_reading = False
        self._thread: threading.Thread | None = None

    def write(self, event: dict) -> None:
        if event.get("step") is not None and event["type"] in ("run_started", "step", "restart"):
            self._step = event["step"]
        if event["type"] == "run_started" and self._thread is None:
            self._thread = threading.Thread(target=self._sample, name="loratui-host-sampler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """End sampling with one last reading, and wait for it: the bus calls this before run_finished or
        run_failed, so every run that started has its final figures in the log, however short it was."""
        self._last_reading = True
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=STOP_WAIT_S)

    def close(self) -> None:
        # No join: the bus holds its lock while closing sinks, and the thread may wait for it to publish.
        self._stopped.set()

    def _sample(self) -> None:
        reader = self._reader_factory()
        while not self._stopped.wait(self._interval):
            self._publish("host", step=self._step, **reader.read())
        if self._last_reading:  # stop(), not close(): the bus still takes events
            self._publish("host", step=self._step, **reader.read())
