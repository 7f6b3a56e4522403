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
