"""Gradient fidelity and fp16 underflow: the run's LoRA gradients against an fp32 recomputation.

On a probe step the last micro-batch's own gradients are caught as autograd
delivers them (a hook per LoRA parameter; `.grad` would hold the sum over all
micro-batches), together with the RNG state its forward started from. The
fp32 reference then recomputes that micro-batch with the same RNG state, so
dropout draws the same masks and the only difference left is the arithmetic.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

from loratui.monitor.parts import worst_share

FP16_MIN_NORMAL = 2.0 ** -14  # 6.1e-5: below it fp16 loses precision (subnormal) and then flushes to zero


class GradientCapture:
    """Between `start` and `finish`: each parameter's latest gradient and the RNG state of the latest forward."""

    def __init__(self):
        self.grads: list = []
        self.rng_state: dict | None = None
        self._handles: list = []

    def start(self, model, params) -> None:
        self.grads = [None] * len(params)
        self.rng_state = None
        self._handles = [param.register_hook(self._keeper(index)) for index, param in enumerate(params)]
        self._handles.append(model.register_forward_pre_hook(self._note_rng_state))

    def _keeper(self, index: int):
        def keep(grad):
            self.grads[index] = grad
        return keep

    def _note_rng_state(self, module, args) -> None:
        self.rng_state = rng_state()

    def finish(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def rng_state() -> dict:
    import torch

    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


@contextmanager
def rng_replayed(state: dict | None):
    """Run with `state` as the RNG state, leaving the training run's own RNG stream untouched."""
    import torch

    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        if state is not None:
            torch.set_rng_state(state["cpu"])
            if state["cuda"]:
                torch.cuda.set_rng_state_all(state["cuda"])
        yield


def reference_gradients(model, batch: dict, params, rng: dict | None, recorder=None, image_tokens=None):
    """Loss and LoRA gradients of `batch` in fp32 arithmetic; `.grad` is left as it was.

    The batch goes to the forward whole, a VLM's pixel inputs included (fp32_math upcasts
    half-precision pixels with everything else); `image_tokens`, each row's count of image
    tokens, lets the recorder tie image items to rows.
    """
    import torch

    from loratui.model.quantization import gradient_checkpointing_paused
    from loratui.monitor.fp32_math import fp32_math

    recording = recorder.record(batch["input_ids"].shape[0], image_tokens) if recorder is not None else nullcontext()
    with rng_replayed(rng), gradient_checkpointing_paused(model):
        with fp32_math(), recording:
            loss = model(**batch).loss
        # Outside fp32_math: it would upcast `params` too and ask for gradients of copies.
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), grads


@dataclass
class PartGradients:
    """One part's gradient figures (every figure None where the part has no finite gradients to compare)."""

    cosine: float | None
    weakest_module: str | None  # the module whose gradients agree least with fp32
    weakest_cosine: float | None
    underflow_share: float | None
    worst_module: str | None
    worst_module_share: float | None


@dataclass
class GradientComparison:
    cosine: float | None  # None when the run's gradients are not finite (an overflowed step)
    relative_error: float | None
    underflow_share: float | None  # fp16 only: zero or subnormal in fp16 where fp32 is nonzero
    underflowed: int
    compared: int  # elements whose fp32 gradient is nonzero
    worst_module: str | None  # the module whose gradients underflow the most
    worst_module_share: float | None
    parts: dict[str, PartGradients] = field(default_factory=dict)  # the same figures for each part of the model


def compare_gradients(run_grads, reference, names: list[str], *, scale, accum: int,
                      count_underflow: bool, part_of=None, fp32_parts=frozenset()) -> GradientComparison:
    """Compare one micro-batch's run gradients (still loss-scaled) with the fp32 reference.

    `scale` is the loss scale the run's backward used (a tensor, or 1.0): the
    trainer backpropagates scale * loss / accum, so run / scale * accum is the
    gradient of the micro-batch loss, the quantity the reference computed.
    A scale of 0 (a GradScaler left to halve on every overflow until its scale
    underflows) leaves nothing to unscale: the comparison is empty, never a crash.
    `part_of` (module name -> part) adds each part's figures; gradients of `fp32_parts` (a vision
    tower kept in fp32 under fp16) are computed in fp32 and never counted as underflow.
    """
    import torch

    if not float(scale) > 0:
        return GradientComparison(None, None, None, 0, 0, None, None)

    rows, row_names = [], []
    for run, ref, name in zip(run_grads, reference, names):
        if run is None or ref is None:
            continue
        row_names.append(name)
        run32, ref32 = run.detach().float(), ref.detach().float()
        unscaled = run32 * (accum / scale)
        nonzero = ref32 != 0
        counted = count_underflow and (part_of is None or part_of(name) not in fp32_parts)
        underflowed = (run32.abs() < FP16_MIN_NORMAL) & nonzero if counted else torch.zeros_like(nonzero)
        # An exempt part's values are left out of the underflow share's denominator too.
        compared = nonzero.sum().float() if counted or not count_underflow else torch.zeros((), device=ref32.device)
        rows.append(torch.stack([(unscaled * ref32).sum(), (unscaled * unscaled).sum(), (ref32 * ref32).sum(),
                                 ((unscaled - ref32) ** 2).sum(), underflowed.sum().float(), compared]))
    if not rows:
        return GradientComparison(None, None, None, 0, 0, None, None)
    table = torch.stack(rows).double().tolist()  # one transfer for every parameter's figures
    dot, run_sq, ref_sq, diff_sq, under, nonzero = (sum(column) for column in zip(*table))
    finite = all(map(_finite, (dot, run_sq, diff_sq)))
    cosine = _cosine(table)
    relative = (diff_sq / ref_sq) ** 0.5 if finite and ref_sq > 0 else None
    share = under / nonzero if count_underflow and nonzero else None
    worst_name, worst_share = None, None
    if count_underflow:
        worst_share, worst_name = _worst_underflow(zip(row_names, table))
    parts = {}
    if part_of is not None:
        grouped: dict[str, list] = {}
        for name, row in zip(row_names, table):
            grouped.setdefault(part_of(name), []).append((name, row))
        parts = {part: _part_figures(rows, count_underflow) for part, rows in grouped.items()}
    return GradientComparison(cosine, relative, share, int(under), int(nonzero), worst_name, worst_share, parts)


def _cosine(rows) -> float | None:
    dot, run_sq, ref_sq, diff_sq = (sum(column) for column in list(zip(*rows))[:4])
    finite = all(map(_finite, (dot, run_sq, diff_sq)))
    return dot / ((run_sq * ref_sq) ** 0.5) if finite and run_sq > 0 and ref_sq > 0 else None


def _worst_underflow(named_rows) -> tuple[float | None, str | None]:
    """(share, module) of the module whose gradients underflow the most (columns 4 and 5: underflowed, nonzero)."""
    return worst_share(named_rows, 4, 5)


def _part_figures(named_rows: list, count_underflow: bool) -> PartGradients:
    rows = [row for _, row in named_rows]
    cosine = _cosine(rows)
    by_module: dict[str, list] = {}
    for name, row in named_rows:
        by_module.setdefault(name, []).append(row)
    cosines = [(value, name) for name, module_rows in by_module.items()
               if (value := _cosine(module_rows)) is not None]
    weakest_cosine, weakest = min(cosines) if cosines and cosine is not None else (None, None)
    share = worst_share = worst = None
    if count_underflow and cosine is not None:
        under, nonzero = sum(row[4] for row in rows), sum(row[5] for row in rows)
        share = under / nonzero if nonzero else None
        worst_share, worst = _worst_underflow(named_rows)
    return PartGradients(cosine, weakest, weakest_cosine, share, worst, worst_share)


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")
