"""advice.json: the advisor's result in one JSON object, written into the run directory.

The dashboard's precision dialog reads it and shows each trial's scalar
figures in the order they appear here (the first ten), so the figures a person
compares first come first. The shape is documented in docs/advisor.md
and checked against that documentation by a test:
add fields freely, never rename them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from loratui.advise.decide import Recommendation, Verdict
from loratui.advise.figures import TrialFigures
from loratui.advise.trials import TrialRecord
from loratui.config.schema import to_dict
from loratui.events.encode import decode_event, encode_event
from loratui.hardware import Capabilities

FORMAT = 1
WORKSPACE = "advise"  # the trials' directory inside the run directory
TRIALS_EVENTS = f"{WORKSPACE}/events.jsonl"
# The figures first, in the order the dialog shows them; then how the trial ran.
LEADING_FIGURES = ("tokens_per_s", "final_loss", "fp16_headroom", "fidelity_cosine", "skipped_after_calibration",
                   "final_scale", "peak_memory_mib", "underflow_share", "stale_share")


def build_advice(config, records: list[TrialRecord], figures: dict[str, TrialFigures],
                 verdicts: dict[str, Verdict], choice: Recommendation, capabilities: Capabilities,
                 prior: str, prior_why: str, steps: int, budget=None) -> dict:
    thresholds = config.monitor
    return {
        "recommendation": choice.precision,
        "adapter_dtype": choice.adapter_dtype,
        "quantization": choice.quantization,
        "recommended_trial": choice.trial,
        "reasons": choice.reasons,
        "trials": {r.plan.name: trial_entry(r, figures[r.plan.name], verdicts[r.plan.name]) for r in records},
        "machine": capabilities.as_dict(),
        "hardware_rule": {"precision": prior, "why": prior_why},
        "thresholds": {"fp16_headroom_min": thresholds.fp16_headroom_min, "fidelity_min": thresholds.fidelity_min,
                       "stale_max": thresholds.stale_max, "underflow_max": thresholds.underflow_max,
                       "skip_rate_max": thresholds.skip_rate_max,
                       "consecutive_skips_max": thresholds.consecutive_skips_max},
        "device_memory_mib": budget.as_mib() if budget is not None else None,
        "device_memory": budget.device if budget is not None else None,
        "steps": steps,
        "configured_precision": config.train.precision,
        "events": TRIALS_EVENTS,
        "fingerprint": fingerprint(config, capabilities, steps),
        "created": round(time.time(), 3),
        "format": FORMAT,
    }


def trial_entry(record: TrialRecord, figures: TrialFigures, verdict: Verdict) -> dict:
    measured = {**asdict(figures), "peak_memory_mib": record.peak_memory_mib}
    entry = {"verdict": verdict.status, **{name: measured.pop(name) for name in LEADING_FIGURES}}
    fit = record.memory_plan
    entry.update(precision=record.plan.precision, adapter_dtype=record.plan.adapter_dtype,
                 quantization=record.plan.quantization,
                 estimated_memory_mib=fit.estimate.as_dict()["total_mib"] if fit is not None else None,
                 fits=fit.fits if fit is not None else None, support=record.support,
                 support_note=record.support_note, steps=record.steps, attempt=record.attempt,
                 memory_measure=record.memory_measure or None, seconds=record.seconds, error=record.error)
    entry.update(measured)
    entry["reasons"] = verdict.reasons
    return entry


def fingerprint(config, capabilities: Capabilities, steps: int) -> str:
    """What the trials depend on: the same fingerprint means the same trials would run again."""
    settings = to_dict(config)
    train = dict(settings["train"])
    train.pop("precision")
    # Trials probe on their own cadence and never apply fixes: only the monitor's thresholds count.
    thresholds = {k: v for k, v in settings["monitor"].items()
                  if k not in ("log_every", "probe_every", "probe_first_steps", "probe_budget", "autopilot")}
    measured = {"model": settings["model"], "data": settings["data"], "lora": settings["lora"], "train": train,
                "amp": settings["amp"], "monitor": thresholds, "steps": steps,
                "device": [capabilities.device, capabilities.device_name, capabilities.torch_version]}
    return hashlib.sha256(json.dumps(measured, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_advice(path: Path, advice: dict) -> None:
    """Written whole, then renamed into place: the dashboard may read it at any moment."""
    staging = path.with_name(path.name + ".partial")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(to_json(advice) + "\n")
    os.replace(staging, path)


def to_json(advice: dict) -> str:
    """Strict JSON, as the event log writes it: non-finite numbers are the strings "nan", "inf", "-inf"."""
    return json.dumps(json.loads(encode_event(advice)), indent=2, ensure_ascii=False)


def read_advice(path: Path) -> dict | None:
    try:
        return decode_event(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def reusable_advice(path: Path, config, capabilities: Capabilities, steps: int) -> dict | None:
    """An advice.json measured for these same trials on this machine, e.g. by `loratui advise` or before a resume."""
    advice = read_advice(path)
    if advice and advice.get("format") == FORMAT and advice.get("fingerprint") == fingerprint(config, capabilities,
                                                                                             steps):
        return advice
    return None
