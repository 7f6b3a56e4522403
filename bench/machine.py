"""What a benchmark figure was measured on: the CPU, its cores and how busy the machine was.

Every figure here is a ratio or a rate measured on a shared machine, so each
script prints this line beside its results: a figure taken at load 6 on two
cores says little about one taken at load 0.3.
"""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_text() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"


def describe_machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores, {load_text()}"
