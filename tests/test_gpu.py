"""GPU figures: NvmlReader and GpuSampler through a fake NVML module, and `loratui check`.

NVML needs an NVIDIA driver, which this machine cannot have: the tests hand the
reader a fake module with the functions of nvidia-ml-py's `pynvml` that loratui
calls, returning what a two-GPU server would.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from loratui.cli import main as loratui_main
from loratui.events.bus import CallbackSink, EventBus
from loratui import gpu
from loratui.gpu import GpuSampler, NvmlReader, NvmlUnavailable

MIB = 1 << 20
DEVICE_FIELDS = {"index", "name", "util_pct", "mem_used_mib", "mem_total_mib", "temperature_c", "power_w",
                 "process_mem_mib"}


class FakeNvml:
    """Two GPUs; the second cannot report power (as some boards cannot); this process uses GPU 0."""

    NVML_TEMPERATURE_GPU = 0

    class NVMLError(Exception):
        pass

    def __init__(self, *, library: bool = True):
        self.library = library
        self.open_sessions = 0

    def nvmlInit(self):
        if not self.library:
            raise self.NVMLError("NVML Shared Library Not Found")
        self.open_sessions += 1

    def nvmlShutdown(self):
        self.open_sessions -= 1

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetName(self, handle):
        return [b"NVIDIA H100 80GB HBM3", "NVIDIA A10G"][handle]  # older nvidia-ml-py returns bytes

    def nvmlDeviceGetUUID(self, handle):
        return f"GPU-0000000{handle}-aaaa-bbbb-cccc-dddddddddddd"

    def nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=[97, 3][handle], memory=[40, 0][handle])

    def nvmlDeviceGetMemoryInfo(self, handle):
        total = [81559, 23028][handle] * MIB
        used = [30512, 1][handle] * MIB
        return SimpleNamespace(total=total, used=used, free=total - used)

    def nvmlDeviceGetTemperature(self, handle, sensor):
        assert sensor == self.NVML_TEMPERATURE_GPU
        return [61, 33][handle]

    def nvmlDeviceGetPowerUsage(self, handle):
        if handle == 1:
            raise self.NVMLError("Not Supported")
        return 412500  # milliwatts

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        if handle == 0:
            return [SimpleNamespace(pid=os.getpid(), usedGpuMemory=29876 * MIB),
                    SimpleNamespace(pid=1, usedGpuMemory=512 * MIB)]
        return []

    def nvmlDeviceGetCudaComputeCapability(self, handle):
        return [(9, 0), (8, 6)][handle]

    def nvmlSystemGetDriverVersion(self):
        return "550.54.15"


@pytest.fixture(autouse=True)
def all_devices_visible(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_reader_reads_every_device():
    reader = NvmlReader(FakeNvml())
    reader.open()
    first, second = reader.devices()
    assert first == {"index": 0, "name": "NVIDIA H100 80GB HBM3", "util_pct": 97, "mem_used_mib": 30512.0,
                     "mem_total_mib": 81559.0, "temperature_c": 61, "power_w": 412.5, "process_mem_mib": 29876.0}
    assert second["name"] == "NVIDIA A10G" and second["power_w"] is None and second["process_mem_mib"] is None
    reader.close()


@pytest.mark.parametrize("visible", ["1", "GPU-00000001-aaaa-bbbb-cccc-dddddddddddd"])
def test_cuda_visible_devices_limits_the_devices(monkeypatch, visible):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    reader = NvmlReader(FakeNvml())
    reader.open()
    assert [d["index"] for d in reader.devices()] == [1]


def test_no_visible_device_is_unavailable(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    nvml = FakeNvml()
    with pytest.raises(NvmlUnavailable, match="no GPU"):
        NvmlReader(nvml).open()
    assert nvml.open_sessions == 0


def sampled_bus(nvml: FakeNvml) -> tuple[EventBus, list[dict]]:
    events: list[dict] = []
    bus = EventBus()
    bus.add_sink(CallbackSink(events.append))
    bus.add_sink(GpuSampler(bus.publish, reader=NvmlReader(nvml), interval=0.05))
    return bus, events


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_sampler_publishes_gpu_events_from_the_run_start_to_its_end():
    nvml = FakeNvml()
    bus, events = sampled_bus(nvml)
    time.sleep(0.2)
    assert events == []  # nothing before the run has started (and its attempt is known)
    bus.publish("run_started", step=0)
    bus.publish("step", step=3)
    wait_for(lambda: sum(e["type"] == "gpu" for e in events) >= 3)
    bus.publish("run_finished", step=3)
    wait_for(lambda: nvml.open_sessions == 0)
    time.sleep(0.2)
    bus.close()
    samples = [e for e in events if e["type"] == "gpu"]
    assert all(set(device) == DEVICE_FIELDS for sample in samples for device in sample["devices"])
    assert samples[-1]["step"] == 3 and [d["index"] for d in samples[-1]["devices"]] == [0, 1]
    assert events[-1]["type"] == "run_finished"  # sampling ends with the run


class SlowReadingNvml(FakeNvml):
    """Once armed, the next reading takes 0.3 s and says when it has begun."""

    def __init__(self):
        super().__init__()
        self.armed = False
        self.reading = threading.Event()

    def nvmlDeviceGetMemoryInfo(self, handle):
        if self.armed and handle == 0:
            self.armed = False
            self.reading.set()
            time.sleep(0.3)
        return super().nvmlDeviceGetMemoryInfo(handle)


def sampler_inside_a_slow_reading(nvml: SlowReadingNvml):
    """A started run's bus and its events, returned once the sampler thread is inside a 0.3 s reading."""
    bus, events = sampled_bus(nvml)
    bus.publish("run_started", step=0)
    wait_for(lambda: any(e["type"] == "gpu" for e in events))
    nvml.armed = True
    assert nvml.reading.wait(10)
    return bus, events


@pytest.mark.parametrize("last_word", ["run_finished", "run_failed"])
def test_a_reading_in_progress_at_the_end_is_published_before_the_runs_last_word(last_word):
    nvml = SlowReadingNvml()
    bus, events = sampler_inside_a_slow_reading(nvml)
    bus.publish(last_word, step=3)  # while the sampler thread is inside its reading
    sessions_left = nvml.open_sessions
    time.sleep(0.4)  # a straggling reading would land now
    bus.close()
    assert events[-1]["type"] == last_word, [e["type"] for e in events[-3:]]
    assert events[-2]["type"] == "gpu"  # the reading in progress was not lost either
    assert sessions_left == 0, "the sampler had stopped, NVML closed, when publish returned"


def test_a_reading_that_hangs_past_the_stop_wait_is_dropped(monkeypatch):
    monkeypatch.setattr(gpu, "STOP_WAIT_S", 0.05)  # the reading below takes 0.3 s: a wedged driver, here
    nvml = SlowReadingNvml()
    bus, events = sampler_inside_a_slow_reading(nvml)
    readings = sum(e["type"] == "gpu" for e in events)
    bus.publish("run_finished", step=3)
    wait_for(lambda: nvml.open_sessions == 0)  # the reading ended, and the sampler with it
    bus.close()
    assert events[-1]["type"] == "run_finished"
    assert sum(e["type"] == "gpu" for e in events) == readings  # the late reading was never published


def test_closing_the_bus_stops_the_sampler():
    nvml = FakeNvml()
    bus, events = sampled_bus(nvml)
    bus.publish("run_started", step=0)
    wait_for(lambda: any(e["type"] == "gpu" for e in events))
    bus.close()
    wait_for(lambda: nvml.open_sessions == 0)


def test_without_nvml_one_notice_and_no_gpu_events():
    bus, events = sampled_bus(FakeNvml(library=False))
    bus.publish("run_started", step=0)
    wait_for(lambda: len(events) == 2)
    time.sleep(0.2)
    bus.close()
    assert [e["type"] for e in events] == ["run_started", "notice"]
    assert events[1]["message"] == "no GPU figures: NVML is unavailable (NVML Shared Library Not Found)"


def test_the_real_nvml_module_on_a_machine_without_a_driver():
    reader = NvmlReader()
    try:
        reader.open()
    except NvmlUnavailable as exc:
        assert str(exc)  # the reason is said
    else:
        reader.close()
        pytest.skip("this machine has NVML")


def test_loratui_check_lists_the_nvml_devices(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml())
    config = tmp_path / "config.toml"
    config.write_text('[train]\nprecision = "fp32"\n')
    assert loratui_main(["check", str(config)]) == 0
    out = capsys.readouterr().out
    assert "NVML: available (2 device(s), driver 550.54.15)" in out
    assert "  GPU 0: NVIDIA H100 80GB HBM3, 81559 MiB, compute capability 9.0" in out
    assert "  GPU 1: NVIDIA A10G, 23028 MiB, compute capability 8.6" in out
    assert "bf16: " in out  # native or emulated, with the reason
