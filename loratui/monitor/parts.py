"""A vision-language model's parts as the probes see them, and each probe's summary per part.

The health checks judge the model as a whole and name the one module behind
each figure. On a VLM a person also asks where each figure stands in every part
(vision tower, projector, language model): the tower can be fine while the
language model underflows. The summary gives, per part, the worst fp16
headroom, underflow share, gradient fidelity and stale-update share, each with
the module that set it, and the precision the part computes in: a vision tower
kept in fp32 under fp16 (`[vision] tower_fp32`) is measured but not judged
against fp16's 65504, because it never holds an fp16 value.
"""

from __future__ import annotations

import math

from loratui.monitor.activations import FP16_MAX

PARTS = ("vision_tower", "projector", "language_model")
NOT_MEASURED = {"status": "n/a", "value": None, "module": None}


def is_vision_language(family) -> bool:
    return "vision_tower" in family.parts


def part_precisions(trainer) -> dict[str, str]:
    """The precision each part computes in: the run's, but fp32 for a vision tower `tower_fp32` keeps in fp32."""
    precision = trainer.precision_name
    kept = precision == "fp16" and getattr(trainer.config.vision, "tower_fp32", False)
    return {part: "fp32" if kept and part == "vision_tower" else precision for part in PARTS}


def parts_in_fp32(trainer) -> set[str]:
    """Parts that compute in fp32 while the run is fp16: their activations are not judged against 65504."""
    if trainer.precision_name != "fp16" or not is_vision_language(trainer.family):
        return set()
    return {part for part, precision in part_precisions(trainer).items() if precision == "fp32"}


def image_tokens_per_row(family, processor, batch: dict):
    """Each row's count of image tokens (a device tensor), so image items can be tied to rows; None for text."""
    token = getattr(family, "image_token", None)
    if not is_vision_language(family) or token is None or "input_ids" not in batch:
        return None
    token_id = processor.tokenizer.convert_tokens_to_ids(token)
    return (batch["input_ids"] == token_id).sum(dim=1)


def summarise_parts(trainer, config, checks: dict, peaks, gradients, stale) -> dict:
    """Per part: its precision and, per probe check, {status, value, module} (status "n/a" where not measured)."""
    precisions = part_precisions(trainer)
    summary = {}
    for part in PARTS:
        precision = precisions[part]
        summary[part] = {
            "precision": precision,
            "fp16_headroom": _headroom(part, precision, peaks, config, checks.get("fp16_headroom") or {}),
            "underflow": _underflow(part, precision, gradients, config),
            "fidelity": _fidelity(part, precision, gradients, config),
            "stale_update": _stale(part, stale, config),
        }
    return summary


def _headroom(part: str, precision: str, peaks, config, check: dict) -> dict:
    modules = [m for m in peaks.modules if m.part == part] if peaks is not None else []
    if not modules:
        return dict(NOT_MEASURED)
    largest = max(modules, key=lambda m: m.value)
    headroom = FP16_MAX / largest.value if largest.value > 0 else math.inf
    if precision != "fp16":
        status = "n/a"  # measured, not judged: the part never holds an fp16 value
    elif check.get("status") == "alert" and check.get("part") == part:
        status = "alert"
    else:
        status = "warn" if headroom < config.fp16_headroom_min else "ok"
    return {"status": status, "value": round(headroom, 4) if math.isfinite(headroom) else None,
            "module": largest.module, "where": largest.where, "peak": largest.value}


def _underflow(part: str, precision: str, gradients, config) -> dict:
    figures = gradients.parts.get(part) if gradients is not None else None
    # Gradients computed in fp32 (a part kept in fp32) are never flushed: a small value there is not an underflow.
    if figures is None or figures.underflow_share is None or precision != "fp16":
        return dict(NOT_MEASURED)
    share = figures.underflow_share
    return {"status": "alert" if share > config.underflow_max else "ok", "value": round(share, 6),
            "module": figures.worst_module,
            "module_value": None if figures.worst_module_share is None else round(figures.worst_module_share, 6)}


def _fidelity(part: str, precision: str, gradients, config) -> dict:
    figures = gradients.parts.get(part) if gradients is not None else None
    if figures is None or figures.cosine is None:
        return dict(NOT_MEASURED)
    # As the whole-model check: low fidelity is an underflow alert in fp16, a warning in bf16.
    low = "alert" if precision == "fp16" else "warn"
    return {"status": low if figures.cosine < config.fidelity_min else "ok", "value": round(figures.cosine, 6),
            "module": figures.weakest_module,
            "module_value": None if figures.weakest_cosine is None else round(figures.weakest_cosine, 6)}


def _stale(part: str, stale, config) -> dict:
    figures = stale.parts.get(part) if stale is not None else None
    if figures is None:
        return dict(NOT_MEASURED)
    over = figures.share > config.stale_max
    # As the whole-model check: only half-precision adapter weights make it an alert.
    status = ("alert" if stale.dtype != "float32" else "warn") if over else "ok"
    return {"status": status, "value": round(figures.share, 6), "module": figures.worst_module,
            "module_value": None if figures.worst_module_share is None else round(figures.worst_module_share, 6)}


def worst_share(named_rows, count: int, total: int) -> tuple[float | None, str | None]:
    """(share, module) of the module whose rows sum to the largest row[count] / row[total].

    `named_rows` pairs a module's name with one row of figures per tensor; a module with
    several tensors (LoRA's A and B) is judged on their sums. (None, None) when no module has
    a total.
    """
    by_module: dict[str, list[float]] = {}
    for name, row in named_rows:
        totals = by_module.setdefault(name, [0.0, 0.0])
        totals[0] += row[count]
        totals[1] += row[total]
    ranked = [(part / whole, name) for name, (part, whole) in by_module.items() if whole]
    return max(ranked) if ranked else (None, None)
