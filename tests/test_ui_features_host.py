"""Host CPU and RAM: the real psutil readings against /proc, and the sampler that publishes them."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from loratui.host_metrics import HostReader, HostSampler


def proc_kib(path: str, field: str) -> int:
    for line in open(path):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in {path}")


def test_a_reading_matches_the_kernels_figures():
    reading = HostReader().read()
    assert reading["cpu_count"] == os.cpu_count()
    assert abs(reading["ram_total_mib"] - proc_kib("/proc/meminfo", "MemTotal") / 1024) < 1
    assert 0 < reading["ram_used_mib"] < reading["ram_total_mib"]
    own = proc_kib("/proc/self/status", "VmRSS") / 1024
    assert reading["rss_mib"] >= own * 0.9
    assert 0 <= reading["cpu_pct"] <= 100 and reading["process_cpu_pct"] >= 0


def test_children_count_in_the_trainers_memory_and_cpu():
    """A data-loader worker's memory is the run's too: a child holding 200 MiB adds about that much."""
    reader = HostReader()
    before = reader.read()["rss_mib"]
    child = subprocess.Popen([sys.executable, "-c", "b = bytearray(200 << 20)\nimport time\n"
                              "t = time.time()\nwhile time.time() - t < 30: sum(b[::4096])"])
    try:
        deadline = time.monotonic() + 20
        while True:
            reading = reader.read()
            if reading["rss_mib"] - before > 150 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert reading["rss_mib"] - before > 150, (before, reading)
        time.sleep(1.0)
        assert reader.read()["process_cpu_pct"] > 10  # the busy child's CPU is counted
    finally:
        child.kill()
        child.wait()


def test_the_sampler_publishes_from_the_run_start_until_stopped():
    published = []

    def publish(kind, **fields):
        published.append({"type": kind, **fields})

    sampler = HostSampler(publish, interval=0.05)
    sampler.write({"type": "phase", "name": "loading_model"})
    time.sleep(0.2)
    assert published == []  # nothing before the run has started
    sampler.write({"type": "run_started", "step": 0})
    sampler.write({"type": "step", "step": 7})
    deadline = time.monotonic() + 10
    while len(published) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    count = len(published)
    sampler.stop()
    assert len(published) >= count + 1  # stopping takes one last reading, published before stop() returns
    count = len(published)
    time.sleep(0.3)
    assert len(published) == count >= 3  # and nothing after
    assert all(event["type"] == "host" and event["step"] == 7 for event in published)
    assert {"cpu_pct", "process_cpu_pct", "rss_mib", "ram_used_mib", "ram_total_mib"} <= set(published[0])


def test_a_real_headless_run_publishes_host_events_before_its_last_word(tmp_path):
    from helpers import ROOT, loratui_cli

    from loratui.events.jsonl import read_events

    result = loratui_cli("run", str(ROOT / "config.example.toml"), "--headless", "--set", "train.max_steps=30",
                         "--set", "train.precision=fp32", "--set", f"run.output_dir={tmp_path}",
                         "--set", "train.batch_size=2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "host" not in result.stdout  # no console line per reading
    events = read_events(tmp_path / "loratui-run" / "events.jsonl")
    kinds = [event["type"] for event in events]
    hosts = [event for event in events if event["type"] == "host"]
    assert hosts, kinds  # at least the last reading, taken as the run ends, however short it was
    assert kinds.index("run_started") < kinds.index("host") and kinds[-1] == "run_finished"
    assert kinds[-2] == "host" and hosts[-1]["step"] == 30  # the last reading: the run's final figures
    own_rss = [event["rss_mib"] for event in hosts]
    assert min(own_rss) > 100  # the trainer holds torch and a model: far more than an idle interpreter
    assert all(0 <= event["step"] <= 30 and event["ram_total_mib"] > event["ram_used_mib"] > 0 for event in hosts)
