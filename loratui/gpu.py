"""GPU figures from NVML: a reader behind a small interface, and the thread that samples it.

`NvmlReader` is the only code that calls NVML. It takes the NVML module as a
parameter (by default `pynvml`, from the nvidia-ml-py package): NVML cannot exist
on a machine without an NVIDIA driver, so tests hand it a fake module with the
same functions. `GpuSampler`, a bus sink, reads once a second in a daemon thread
and publishes `gpu` events:

    {"type": "gpu", "step": 12, "devices": [{"index": 0, "name": "NVIDIA H100 80GB HBM3",
      "util_pct": 97, "mem_used_mib": 30512.0, "mem_total_mib": 81559.0, "temperature_c": 61,
      "power_w": 412.5, "process_mem_mib": 29876.0}]}

A figure the device does not report is null. Without NVML nothing is sampled and
one `notice` says why. The bus stops the sampler (`stop`) before it publishes
run_finished or run_failed, so no reading follows the run's last word.
"""

from __future__ import annotations

import os
import threading
from typing import Callable

MIB = 1 << 20
# How long the run's end waits for a reading in progress (NVML answers in milliseconds).
STOP_WAIT_S = 5.0


class NvmlUnavailable(Exception):
    """NVML cannot be used here (no package, no driver, no device); the message says which."""


class NvmlReader:
    """One NVML session: the devices this process may use, read on demand."""

    def __init__(self, nvml=None):
        self._nvml = nvml
        self._handles: list[tuple[int, object]] = []

    def open(self) -> None:
        nvml = self._nvml
        if nvml is None:
            try:
                import pynvml as nvml
            except ImportError as exc:
                raise NvmlUnavailable("nvidia-ml-py is not installed") from exc
            self._nvml = nvml
        try:
            nvml.nvmlInit()
            handles = [(index, nvml.nvmlDeviceGetHandleByIndex(index))
                       for index in range(nvml.nvmlDeviceGetCount())]
        except nvml.NVMLError as exc:
            raise NvmlUnavailable(str(exc) or type(exc).__name__) from exc
        self._handles = [(index, handle) for index, handle in handles if self._visible(index, handle)]
        if not self._handles:
            nvml.nvmlShutdown()
            raise NvmlUnavailable("NVML sees no GPU this process may use")

    def close(self) -> None:
        if self._handles:
            self._handles = []
            self._nvml.nvmlShutdown()

    def driver_version(self) -> str | None:
        return _text(self._optional(self._nvml.nvmlSystemGetDriverVersion))

    def devices(self) -> list[dict]:
        """One reading of every device."""
        return [self._read(index, handle) for index, handle in self._handles]

    def describe(self) -> list[dict]:
        """What `loratui check` prints: name, memory and compute capability of each device."""
        described = []
        for index, handle in self._handles:
            reading = self._read(index, handle)
            capability = self._optional(self._nvml.nvmlDeviceGetCudaComputeCapability, handle)
            described.append({"index": index, "name": reading["name"], "mem_total_mib": reading["mem_total_mib"],
                              "compute_capability": list(capability) if capability else None})
        return described

    def _read(self, index: int, handle) -> dict:
        nvml = self._nvml
        memory = self._optional(nvml.nvmlDeviceGetMemoryInfo, handle)
        utilization = self._optional(nvml.nvmlDeviceGetUtilizationRates, handle)
        power_mw = self._optional(nvml.nvmlDeviceGetPowerUsage, handle)
        return {"index": index, "name": _text(self._optional(nvml.nvmlDeviceGetName, handle)),
                "util_pct": utilization.gpu if utilization is not None else None,
                "mem_used_mib": round(memory.used / MIB, 1) if memory is not None else None,
                "mem_total_mib": round(memory.total / MIB, 1) if memory is not None else None,
                "temperature_c": self._optional(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU),
                "power_w": round(power_mw / 1000, 1) if power_mw is not None else None,
                "process_mem_mib": self._process_memory(handle)}

    def _process_memory(self, handle) -> float | None:
        """This process's memory on the device; None where it has none, or NVML cannot say.

        In a container NVML lists host PIDs, so our PID may be missing even while we use
        the device: then None, never a wrong number.
        """
        processes = self._optional(self._nvml.nvmlDeviceGetComputeRunningProcesses, handle) or []
        used = [p.usedGpuMemory for p in processes if p.pid == os.getpid() and p.usedGpuMemory is not None]
        return round(sum(used) / MIB, 1) if used else None

    def _visible(self, index: int, handle) -> bool:
        """CUDA_VISIBLE_DEVICES (indices or GPU UUIDs) limits what this run may use; NVML ignores it."""
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is None:
            return True
        wanted = {item.strip() for item in visible.split(",") if item.strip()}
        uuid = _text(self._optional(self._nvml.nvmlDeviceGetUUID, handle))
        return str(index) in wanted or (uuid is not None and uuid in wanted)

    def _optional(self, read, *args):
        """A figure the device may not support (power on some boards, for one): None then."""
        try:
            return read(*args)
        except self._nvml.NVMLError:
            return None


class GpuSampler:
    """A bus sink that publishes a `gpu` event every `interval` seconds from a daemon thread.

    It starts when the run does (`run_started`): only the publishing rank sees that
    event, so only that rank samples, and the resolved attempt is already in the log.
    Each reading carries the newest step the sink has seen.
    """

    def __init__(self, publish: Callable[..., object], *, reader: NvmlReader | None = None,
                 interval: float = 1.0):
        self._publish = publish
        self._reader = reader or NvmlReader()
        self._interval = interval
        self._step: int | None = None
        self._stopped = threading.Event()
        self._abandoned = False
        self._thread: threading.Thread | None = None

    def write(self, event: dict) -> None:
        if event.get("step") is not None and event["type"] in ("run_started", "step", "restart"):
            self._step = event["step"]
        if event["type"] == "run_started" and self._thread is None:
            self._thread = threading.Thread(target=self._sample, name="loratui-gpu-sampler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """End sampling and wait for the thread's last event: the bus calls this before the run's last word.

        A reading in progress is finished and published first; one that hangs (a wedged
        driver) is waited for only so long, and is then dropped unpublished.
        """
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=STOP_WAIT_S)
            self._abandoned = self._thread.is_alive()

    def close(self) -> None:
        # No join: the bus holds its lock while closing sinks, and the thread may be waiting for
        # that lock to publish. It sees the flag at its next turn and closes NVML itself.
        self._stopped.set()

    def _sample(self) -> None:
        try:
            self._reader.open()
        except NvmlUnavailable as exc:
            self._publish("notice", step=self._step, message=f"no GPU figures: NVML is unavailable ({exc})")
            return
        try:
            while not self._stopped.is_set():
                devices = self._reader.devices()
                if self._abandoned:
                    break  # stop() gave up on this reading: the run's last word is out already
                self._publish("gpu", step=self._step, devices=devices)
                self._stopped.wait(self._interval)
        finally:
            self._reader.close()


def _text(value) -> str | None:
    """Older nvidia-ml-py releases return bytes where newer ones return str."""
    return value.decode() if isinstance(value, bytes) else value
