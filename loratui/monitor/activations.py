"""Peak activations per module and per row: what fp16 would have to hold.

Forward hooks on every leaf module record the largest absolute value of each
floating-point input and output, per row of the batch. Inputs matter as much
as outputs: an overflow can be born between modules (Llama's MLP multiplies
silu(gate) by up outside any module, so only down_proj's *input* shows it).
Hooks exist only while `record()` is active, on probe steps; every figure stays
on the device until `peaks()` reads them in one transfer.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

FP16_MAX = 65504.0


@dataclass
class ModulePeak:
    module: str
    where: str  # "input" or "output"
    value: float
    order: int  # position in forward order: the first module over a limit is where it started


@dataclass
class Peaks:
    """Per module, the largest |value| over the batch; per row, the largest over all modules."""

    modules: list[ModulePeak]
    row_peaks: list[float]

    @property
    def worst(self) -> ModulePeak | None:
        return max(self.modules, key=lambda m: m.value, default=None)

    def first_over(self, limit: float) -> ModulePeak | None:
        """The earliest module in forward order whose input or output went past `limit`."""
        over = [m for m in self.modules if m.value >= limit]
        return min(over, key=lambda m: m.order, default=None)

    def rows_over(self, limit: float) -> list[int]:
        return [row for row, value in enumerate(self.row_peaks) if value >= limit]


def display_name(qualified: str) -> str:
    """'base_model.model.model.layers.1.mlp.down_proj.base_layer' -> 'model.layers.1.mlp.down_proj'.

    peft's wrappers are an implementation detail: a person knows the module by
    the name it has in the base model.
    """
    name = qualified.removeprefix("base_model.model.")
    for marker in (".base_layer", ".lora_"):
        if marker in name:
            name = name[:name.index(marker)]
    return name


class ActivationPeaks:
    def __init__(self, model):
        self.model = model
        self._records: list[tuple[str, str, object]] = []  # (module, where, per-row peaks tensor)
        self._batch_size = 0

    @contextmanager
    def record(self, batch_size: int):
        self._records.clear()
        self._batch_size = batch_size
        handles = [module.register_forward_hook(self._hook_for(display_name(name)))
                   for name, module in self.model.named_modules() if not any(True for _ in module.children())]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _hook_for(self, name: str):
        def hook(module, inputs, output):
            self._note(name, "input", inputs)
            self._note(name, "output", output)
        return hook

    def _note(self, name: str, where: str, value) -> None:
        import torch

        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and value.dim() >= 2 and value.shape[0] == self._batch_size:
                self._records.append((name, where, value.detach().abs().flatten(1).amax(dim=1).float()))
        elif isinstance(value, (tuple, list)):
            for item in value:
                self._note(name, where, item)

    def peaks(self) -> Peaks:
        """Read every recorded figure in one device-to-host transfer."""
        import torch

        if not self._records:
            return Peaks([], [])
        table = torch.stack([per_row for _, _, per_row in self._records])  # modules x rows
        table = torch.nan_to_num(table, nan=float("inf"))  # a NaN is past every limit
        count = len(self._records)
        values = torch.cat([table.amax(dim=1), table.amax(dim=0)]).tolist()
        module_values, row_peaks = values[:count], values[count:]
        merged: dict[tuple[str, str], ModulePeak] = {}
        for order, ((name, where, _), value) in enumerate(zip(self._records, module_values)):
            known = merged.get((name, where))
            if known is None:
                merged[(name, where)] = ModulePeak(name, where, value, order)
            elif value > known.value:
                known.value = value
        return Peaks(list(merged.values()), row_peaks)
