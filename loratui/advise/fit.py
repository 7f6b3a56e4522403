"""Whether each trial's configuration fits the device, by the memory planner (loratui/model/memory_plan.py).

The device's memory is the GPU's total on CUDA and, on a CPU, the RAM
available now (the planner's notion), unless `--device-memory GIB` names a
device to judge against instead (a T4's 16 GiB, say). A trial whose estimate
does not fit is rejected, and when the full-precision base fits nowhere the
advisor adds a trial with a 4-bit (nf4) base (advise/trials.py).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

QUANTIZED = "nf4"  # the quantization a trial tries when the full-precision base does not fit


@dataclass(frozen=True)
class DeviceBudget:
    available: int | None  # bytes, None when unknown
    device: str  # what it is, in words

    def as_mib(self) -> float | None:
        from loratui.model.memory_plan import MIB

        return None if self.available is None else round(self.available / MIB, 1)


def device_budget(capabilities, device_memory_gib: float | None) -> DeviceBudget:
    from loratui.model.memory_plan import GIB, device_memory

    if device_memory_gib is not None:
        return DeviceBudget(int(device_memory_gib * GIB), f"a {device_memory_gib:g} GiB device (--device-memory)")
    return DeviceBudget(*device_memory(capabilities))


class TrialMemory:
    """The planner's estimates for one config's trials: the model's shape is read once, from its config.json."""

    def __init__(self, config, budget: DeviceBudget):
        from loratui.model.memory_plan import model_shape, read_model_config

        self.config, self.budget = config, budget
        self.shape = model_shape(read_model_config(config.model.name_or_path), config.lora)

    def plan(self, precision: str, adapter_dtype: str, quantization: str):
        """One trial's estimated peak, judged against the budget (a memory_plan.Plan)."""
        from loratui.model.memory_plan import plan

        trial = copy.deepcopy(self.config)
        trial.train.precision = precision
        trial.train.adapter_dtype = adapter_dtype
        trial.model.quantization = quantization
        return plan(self.shape, trial, precision, self.budget.available, self.budget.device)
