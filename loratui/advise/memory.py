"""Peak memory of one trial: what the device held at most while the trial trained.

On CUDA it is torch's peak of allocated memory, reset before each trial. On
CPU torch keeps no such count, so it is the process's peak resident memory
(VmHWM), which Linux lets a process reset (write 5 to /proc/self/clear_refs):
an upper bound that includes the Python interpreter and libraries, the same
for every trial, so the differences between trials are what each precision
costs. Elsewhere it is not measured.
"""

from __future__ import annotations

import re
from pathlib import Path

CUDA_PEAK = "cuda_peak_allocated"
PROCESS_PEAK = "process_peak_rss"
NOT_MEASURED = "not_measured"

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


class PeakMemory:
    def __init__(self, device):
        self.device = device
        self.measure = CUDA_PEAK if device.type == "cuda" else (PROCESS_PEAK if _can_reset_rss_peak()
                                                                  else NOT_MEASURED)

    def reset(self) -> None:
        if self.measure == CUDA_PEAK:
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.measure == PROCESS_PEAK:
            _CLEAR_REFS.write_text("5")

    def peak_mib(self) -> float | None:
        if self.measure == CUDA_PEAK:
            import torch

            return round(torch.cuda.max_memory_allocated(self.device) / (1 << 20), 1)
        if self.measure == PROCESS_PEAK:
            return round(_rss_peak_kib() / 1024, 1)
        return None


def _rss_peak_kib() -> int:
    return int(re.search(r"^VmHWM:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE).group(1))


def _can_reset_rss_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        _rss_peak_kib()
    except (OSError, AttributeError):  # not Linux, or a kernel/container that forbids it
        return False
    return True
