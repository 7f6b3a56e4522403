"""GPU memory figures for step events: read from the caching allocator's counters (no device sync)."""

from __future__ import annotations

MIB = 1 << 20


def memory_figures(device) -> dict:
    """Allocated, reserved and peak MiB on a CUDA device; None for each elsewhere."""
    if device.type != "cuda":
        return {"mem_allocated_mib": None, "mem_reserved_mib": None, "mem_peak_mib": None}
    import torch

    return {"mem_allocated_mib": round(torch.cuda.memory_allocated(device) / MIB, 1),
            "mem_reserved_mib": round(torch.cuda.memory_reserved(device) / MIB, 1),
            "mem_peak_mib": round(torch.cuda.max_memory_allocated(device) / MIB, 1)}


class PeakMemory:
    """The training's real peak, to set beside the planner's estimate (run_finished).

    Counted from just before the model loads (after the libraries are imported),
    with the peak itself taken from when loading is done: what training holds
    (weights, adapters, optimizer, activations, the monitor's probes), not the
    loader's passing copies (on a CPU, a checkpoint's memory-mapped file and the
    tensors converted from it). On CUDA these are the caching allocator's counts
    of allocated memory; on a CPU the process's resident memory (VmRSS, VmHWM).
    """

    def __init__(self, device):
        self.device = device
        if device.type == "cuda":
            import torch

            self.baseline = torch.cuda.memory_allocated(device)
        else:
            self.baseline = _status_bytes("VmRSS")

    def model_loaded(self, model=None) -> None:
        """From here on, the peak counts.

        On a CPU the baseline is also capped at the resident size now less the
        model's own tensors: a process that freed memory while the model loaded
        (a garbage collection, or an earlier run's objects in a long-lived
        process) would otherwise count from a baseline it no longer holds and
        report a peak of nothing.
        """
        if self.device.type == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
            return
        resident = _status_bytes("VmRSS")
        if model is not None and resident is not None and self.baseline is not None:
            self.baseline = min(self.baseline, max(0, resident - _tensor_bytes(model)))
        try:
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")  # Linux: VmHWM starts again from the current resident size
        except OSError:
            pass  # elsewhere the peak is the process's lifetime peak, loading included

    def peak_bytes(self) -> int | None:
        if self.device.type == "cuda":
            import torch

            return torch.cuda.max_memory_allocated(self.device) - self.baseline
        peak = _status_bytes("VmHWM")
        return None if peak is None or self.baseline is None else max(0, peak - self.baseline)


    def outcome(self, estimate) -> dict:
        """run_finished's fields: the planner's estimate (or None) beside the measured peak and how it was measured."""
        peak = self.peak_bytes()
        return {"mem_estimate_mib": round(estimate.total / MIB, 1) if estimate else None,
                "mem_peak_measured_mib": round(peak / MIB, 1) if peak is not None else None,
                "mem_peak_measured_as": "cuda allocated" if self.device.type == "cuda" else "process resident"}


def _tensor_bytes(model) -> int:
    """The bytes of a model's parameters and buffers (shared tensors once)."""
    seen, total = set(), 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total


def _status_bytes(field: str) -> int | None:
    """A memory line of /proc/self/status in bytes; None where there is no /proc (macOS)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
