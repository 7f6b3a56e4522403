"""Why was this step's loss not finite? Replay its micro-batches and compare precisions row by row.

The data stream's order is a pure function of its position, so the batches of
a finished step can be rebuilt exactly from the position it started at. Each
row's loss is computed in the run's precision and in fp32 arithmetic, with the
activation peaks of the fp32 pass recorded: rows that fail only in the run's
precision, with activations beyond its range, are precision's doing; rows
that fail in fp32 too are the data's (or, when every row fails, the weights').
The replay runs in eval mode (no dropout) under a forked RNG, so training goes
on exactly as if it had not happened.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from loratui.monitor.activations import ActivationPeaks, ModulePeak


@dataclass
class RowReport:
    row: int  # index within the step (micro-batches in order)
    position: str  # "epoch E, batch B, row R": where the data stream served it
    run_loss: float
    fp32_loss: float
    fp32_peak: float  # largest |activation| the row produced in fp32
    text: str  # the row's opening, as the model saw it


@dataclass
class Diagnosis:
    rows: int
    failing: list[RowReport] = field(default_factory=list)  # non-finite loss in the run's precision
    peak_module: ModulePeak | None = None  # first module past fp16's range (or the largest) in fp32
    largest: float = 0.0

    @property
    def failing_in_fp32(self) -> list[RowReport]:
        return [row for row in self.failing if not math.isfinite(row.fp32_loss)]

    @property
    def failing_only_in_run_precision(self) -> list[RowReport]:
        return [row for row in self.failing if math.isfinite(row.fp32_loss)]


def replay_step(trainer, start_position) -> list[dict]:
    """The micro-batches of the step that began at `start_position`, rebuilt from the data stream."""
    replica = trainer.stream.unpacked()  # one example a row: the rows are reported one by one
    replica.position = start_position
    return [replica.next_batch() for _ in range(trainer.config.train.grad_accum)]


def diagnose(trainer, start_position, *, limit: float) -> Diagnosis:
    import torch

    from loratui.monitor.fp32_math import fp32_math
    from loratui.monitor.gradients import rng_replayed
    from loratui.monitor.parts import image_tokens_per_row, parts_in_fp32

    model = trainer.unwrapped_model
    recorder = ActivationPeaks(model, part_of=trainer.family.part_of)
    kept_in_fp32 = parts_in_fp32(trainer)  # never holds an fp16 value: not where fp16's range ends
    diagnosis = Diagnosis(rows=0)
    module_peaks: dict[tuple[str, str], ModulePeak] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), rng_replayed(None):
            for micro, batch in enumerate(replay_step(trainer, start_position)):
                batch = {k: v.to(trainer.device) for k, v in batch.items()}
                # Everything the forward takes but the labels (a VLM's pixel inputs too): the loss is per row here.
                inputs = {key: value for key, value in batch.items() if key != "labels"}
                with trainer.precision.autocast():
                    run_losses = row_losses(model(**inputs).logits, batch["labels"]).tolist()
                images = image_tokens_per_row(trainer.family, trainer.tokenizer, batch)
                with fp32_math(), recorder.record(batch["input_ids"].shape[0], images):
                    fp32_losses = row_losses(model(**inputs).logits, batch["labels"]).tolist()
                peaks = recorder.peaks().without(kept_in_fp32)
                for peak in peaks.modules:
                    known = module_peaks.get((peak.module, peak.where))
                    if known is None or peak.value > known.value:
                        module_peaks[(peak.module, peak.where)] = peak
                for row, (run_loss, fp32_loss) in enumerate(zip(run_losses, fp32_losses)):
                    if not math.isfinite(run_loss):
                        diagnosis.failing.append(RowReport(
                            row=diagnosis.rows + row, position=_position(start_position, trainer, micro, row),
                            run_loss=run_loss, fp32_loss=fp32_loss, fp32_peak=peaks.row_peaks[row],
                            text=_opening(trainer.tokenizer, batch["input_ids"][row], batch["attention_mask"][row])))
                diagnosis.rows += len(run_losses)
    finally:
        model.train(was_training)
    modules = list(module_peaks.values())
    over = [m for m in modules if m.value >= limit]
    diagnosis.peak_module = min(over, key=lambda m: m.order) if over else max(modules, key=lambda m: m.value,
                                                                              default=None)
    diagnosis.largest = max((m.value for m in modules), default=0.0)
    return diagnosis


def row_losses(logits, labels):
    """Each row's mean token loss, the way the model's own loss averages (labels shifted by one)."""
    import torch
    import torch.nn.functional as F

    from loratui.data.dataset import IGNORE_INDEX

    targets = labels[:, 1:]
    per_token = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX,
                                reduction="none")
    counted = targets != IGNORE_INDEX
    per_token = torch.where(counted, per_token, 0.0)
    return per_token.sum(dim=1) / counted.sum(dim=1).clamp(min=1)


def _position(start, trainer, micro: int, row: int) -> str:
    per_epoch = trainer.stream.batches_per_epoch
    index = start.epoch * per_epoch + start.batch + micro
    return f"epoch {index // per_epoch}, batch {index % per_epoch}, row {row}"


def _opening(tokenizer, ids, mask, chars: int = 80) -> str:
    text = tokenizer.decode(ids[mask.bool()].tolist()[:64], skip_special_tokens=False)
    text = " ".join(text.split())
    return text if len(text) <= chars else text[:chars - 1] + "…"
