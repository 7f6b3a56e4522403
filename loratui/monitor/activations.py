"""Peak activations per module and per row: what fp16 would have to hold.

Forward hooks on every leaf module record the largest absolute value of each
floating-point input and output, per row of the batch. Inputs matter as much
as outputs: an overflow can be born between modules (Llama's MLP multiplies
silu(gate) by up outside any module, so only down_proj's *input* shows it).
Hooks exist only while `record()` is active, on probe steps; every figure stays
on the device until `peaks()` reads them in one transfer.

A vision-language model's vision tower and projector see images, not rows:
LLaVA stacks them (one item per image), Qwen2-VL concatenates every image's
patches (one item per patch). Given each row's count of image tokens, an item
maps back to its row: images are served in row order and every image of a
batch stands for the same number of items per image token (patches per merged
token in Qwen2-VL's tower, one in its merger, 1/tokens-per-image in LLaVA's).
A value in those parts whose items do not map (a rotary table, say) still counts
for its module, not for any row.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field

FP16_MAX = 65504.0
LANGUAGE_MODEL = "language_model"


@dataclass
class ModulePeak:
    module: str
    where: str  # "input" or "output"
    value: float
    order: int  # position in forward order: the first module over a limit is where it started
    part: str | None = None  # vision_tower, projector or language_model, where the recorder knows the model's parts


@dataclass
class Peaks:
    """Per module, the largest |value| over the batch; per row, the largest over all modules."""

    modules: list[ModulePeak]
    row_peaks: list[float]
    part_row_peaks: dict[str, list[float]] = field(default_factory=dict)  # the same per row, each part alone

    @property
    def worst(self) -> ModulePeak | None:
        return max(self.modules, key=lambda m: m.value, default=None)

    def first_over(self, limit: float) -> ModulePeak | None:
        """The earliest module in forward order whose input or output went past `limit`."""
        over = [m for m in self.modules if m.value >= limit]
        return min(over, key=lambda m: m.order, default=None)

    def rows_over(self, limit: float) -> list[int]:
        return [row for row, value in enumerate(self.row_peaks) if value >= limit]

    def without(self, parts) -> Peaks:
        """The figures of the other parts only (a part kept in fp32 is not judged against fp16's range)."""
        parts = set(parts)
        if not parts:
            return self
        kept = {part: rows for part, rows in self.part_row_peaks.items() if part not in parts}
        row_peaks = [max(values) for values in zip(*kept.values())] if kept else []
        return Peaks([m for m in self.modules if m.part not in parts], row_peaks, kept)


def display_name(qualified: str) -> str:
    """'base_model.model.model.layers.1.mlp.down_proj.base_layer' -> 'model.layers.1.mlp.down_proj'.

    peft's wrappers are an implementation detail: a person knows the module by
    the name it has in the base model (a fully trained module's copy,
    `modules_to_save.default`, included).
    """
    name = qualified.removeprefix("base_model.model.")
    name = re.sub(r"\.modules_to_save\.[^.]+", "", name)
    for marker in (".base_layer", ".lora_"):
        if marker in name:
            name = name[:name.index(marker)]
    return name


def parameter_module(qualified: str) -> str:
    """The module a trainable parameter belongs to: 'lm_head.weight' -> 'lm_head'; a LoRA matrix's adapted module."""
    name = display_name(qualified)
    return name if ".lora_" in qualified else name.rpartition(".")[0] or name


class ActivationPeaks:
    """`part_of` (module name -> part) lets image items map back to rows; without it only batch-shaped values do."""

    def __init__(self, model, *, part_of=None):
        self.model = model
        self.part_of = part_of
        # (module, where, part, peaks tensor, per row): per-row peaks, or one value when no row is known
        self._records: list[tuple[str, str, str | None, object, bool]] = []
        self._batch_size = 0
        self._image_tokens: list[int] = []
        self._item_rows: dict[int, object] = {}  # items in a value -> each item's row (device tensor)

    @contextmanager
    def record(self, batch_size: int, image_tokens=None):
        """Hooks on every leaf module while active; `image_tokens`: each row's image-token count (a VLM batch)."""
        self._records.clear()
        self._item_rows.clear()
        self._batch_size = batch_size
        self._image_tokens = [int(n) for n in image_tokens.tolist()] if image_tokens is not None else []
        handles = []
        for name, module in self.model.named_modules():
            if any(True for _ in module.children()):
                continue
            shown = display_name(name)
            part = self.part_of(shown) if self.part_of is not None else None
            handles.append(module.register_forward_hook(self._hook_for(shown, part)))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _hook_for(self, name: str, part: str | None):
        def hook(module, inputs, output):
            self._note(name, part, "input", inputs)
            self._note(name, part, "output", output)
        return hook

    def _note(self, name: str, part: str | None, where: str, value) -> None:
        import torch

        if isinstance(value, torch.Tensor):
            if not (value.is_floating_point() and value.dim() >= 2):
                return
            if part is not None and part != LANGUAGE_MODEL:
                self._note_image_items(name, part, where, value)
            elif value.shape[0] == self._batch_size:
                self._records.append((name, where, part, self._per_item(value), True))
        elif isinstance(value, (tuple, list)):
            for item in value:
                self._note(name, part, where, item)

    def _note_image_items(self, name: str, part: str, where: str, value) -> None:
        import torch

        per_item = self._per_item(value)
        rows = self._rows_of_items(value.shape[0], value.device)
        if rows is None:
            self._records.append((name, where, part, per_item.amax().reshape(1), False))
            return
        per_row = torch.zeros(self._batch_size, device=per_item.device).scatter_reduce(
            0, rows, per_item, reduce="amax", include_self=True)
        self._records.append((name, where, part, per_row, True))

    def _per_item(self, value):
        return value.detach().abs().flatten(1).amax(dim=1).float()

    def _rows_of_items(self, items: int, device):
        """Each item's row, when `items` values stand for the batch's images in row order; else None."""
        import torch

        if items in self._item_rows:
            return self._item_rows[items]
        total = sum(self._image_tokens)
        rows = None
        if total and all(count * items % total == 0 for count in self._image_tokens):
            per_row = [count * items // total for count in self._image_tokens]
            rows = torch.repeat_interleave(torch.arange(len(per_row), device=device),
                                           torch.tensor(per_row, device=device))
        self._item_rows[items] = rows
        return rows

    def peaks(self) -> Peaks:
        """Read every recorded figure in one device-to-host transfer."""
        import torch

        if not self._records:
            return Peaks([], [])
        flat = torch.cat([values for *_, values, _ in self._records])
        flat = torch.nan_to_num(flat, nan=float("inf")).tolist()  # a NaN is past every limit
        merged: dict[tuple[str, str], ModulePeak] = {}
        part_rows: dict[str | None, list[float]] = {}
        offset = 0
        for order, (name, where, part, values, per_row) in enumerate(self._records):
            figures = flat[offset:offset + values.numel()]
            offset += values.numel()
            value = max(figures)
            if per_row:
                known_rows = part_rows.setdefault(part, [0.0] * self._batch_size)
                part_rows[part] = [max(a, b) for a, b in zip(known_rows, figures)]
            known = merged.get((name, where))
            if known is None:
                merged[(name, where)] = ModulePeak(name, where, value, order, part)
            elif value > known.value:
                known.value = value
        row_peaks = [max(values) for values in zip(*part_rows.values())] if part_rows else []
        return Peaks(list(merged.values()), row_peaks, part_rows)
