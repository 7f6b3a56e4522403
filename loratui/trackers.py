"""Experiment trackers: `run.report_to = ["tensorboard", "wandb", "mlflow", "trackio"]`.

`TrackerSink` is a bus sink that drives accelerate's tracker classes, so the
figures loratui watches also reach the web dashboards users already keep. It
starts the trackers on `run_started` (only rank 0 publishes, so only rank 0
starts any) with the resolved config as hyperparameters, then logs:

- each `step`'s figures as train/loss, train/grad_norm, train/lr, train/scale, ... (and
  train/images, train/images_per_s for a vision-language run);
- `health` and `gpu` figures as health/... and gpu<index>/...;
- each alert as alerts/<kind> = 2 (critical) or 1 (warning), back to 0 when resolved,
  and its message as text where the tracker keeps text;
- restarts and the run's end as text.

Where each one writes: TensorBoard to RUN_DIR/tensorboard; wandb to RUN_DIR/wandb
(project $WANDB_PROJECT or "loratui"; WANDB_MODE=offline keeps it local); MLflow
to $MLFLOW_TRACKING_URI, else the SQLite store RUN_DIR/mlflow.db (experiment
$MLFLOW_EXPERIMENT_NAME or "loratui"); trackio to its own local store (project "loratui"). A tracker
that fails is switched off with a line on stderr: training never stops for it.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")
PROJECT = "loratui"
STEP_FIGURES = ("loss", "grad_norm", "lr", "scale", "skipped", "nonfinite_grads", "tokens_per_s", "step_time_s",
                "mem_allocated_mib", "mem_reserved_mib", "mem_peak_mib", "attempt",
                "images", "images_per_s")  # the last two: vision-language runs only
ALERT_LEVEL = {"warning": 1, "critical": 2}
# These two refuse a step lower than one already logged, which a restart produces;
# they get loratui's step as the value train/step instead.
STEP_MUST_GROW = {"wandb", "trackio"}
TAKES_TEXT = {"tensorboard", "wandb"}


def unavailable_trackers(names) -> list[str]:
    """The requested trackers whose package is not installed."""
    from accelerate.utils import (is_mlflow_available, is_tensorboard_available, is_trackio_available,
                                  is_wandb_available)

    installed = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available,
                 "mlflow": is_mlflow_available, "trackio": is_trackio_available}
    return [name for name in names if not installed[name]()]


class TrackerSink:
    def __init__(self, names: list[str], run_dir: Path, run_name: str):
        self.names = list(names)
        self.run_dir = Path(run_dir)
        self.run_name = run_name
        self.trackers: list = []

    def write(self, event: dict) -> None:
        if event["type"] == "run_started":
            if not self.trackers:
                self._start(event)
            return
        if self.trackers:
            numbers, texts = figures_of(event)
            if numbers or texts:
                self._log(numbers, texts, event.get("step"))

    def close(self) -> None:
        for tracker in self.trackers:
            self._guarded(tracker, tracker.finish)
        self.trackers = []

    def _start(self, event: dict) -> None:
        from accelerate import PartialState

        PartialState()  # accelerate's trackers log through its logger, which needs the (shared) state
        for name in self.names:
            tracker = self._build(name)
            if self._guarded(tracker, tracker.start):
                self.trackers.append(tracker)
        hyperparameters = {**flatten(event.get("config") or {}), "precision": event.get("precision"),
                           "world_size": event.get("world_size"), "device": event.get("device")}
        hyperparameters = {k: _plain(v) for k, v in hyperparameters.items()}
        for tracker in list(self.trackers):
            self._guarded(tracker, tracker.store_init_configuration, hyperparameters)

    def _build(self, name: str):
        from accelerate.tracking import MLflowTracker, TensorBoardTracker, TrackioTracker, WandBTracker

        if name == "tensorboard":
            return TensorBoardTracker("tensorboard", self.run_dir)
        if name == "wandb":
            return WandBTracker(os.environ.get("WANDB_PROJECT", PROJECT), name=self.run_name, dir=str(self.run_dir))
        if name == "mlflow":
            if not os.environ.get("MLFLOW_TRACKING_URI"):
                import mlflow

                # MLflow 3 refuses its old ./mlruns file store; a local SQLite store is its default.
                mlflow.set_tracking_uri(f"sqlite:///{(self.run_dir / 'mlflow.db').resolve()}")
            return MLflowTracker(experiment_name=PROJECT, run_name=self.run_name)
        if name == "trackio":
            return TrackioTracker(PROJECT, name=self.run_name)
        raise ValueError(f"unknown tracker {name!r}; known: {', '.join(TRACKERS)}")

    def _log(self, numbers: dict, texts: dict, step: int | None) -> None:
        for tracker in list(self.trackers):
            values = {**numbers, **(texts if tracker.name in TAKES_TEXT else {})}
            if not values:
                continue
            if tracker.name in STEP_MUST_GROW:
                self._guarded(tracker, tracker.log, {**values, "train/step": step} if step is not None else values)
            else:
                self._guarded(tracker, tracker.log, values, step)

    def _guarded(self, tracker, call, *args) -> bool:
        """Run a tracker call; a failing tracker is switched off, never the run."""
        try:
            call(*args)
            return True
        except Exception as exc:  # a tracker's network, disk or API trouble: training goes on
            if tracker in self.trackers:
                self.trackers.remove(tracker)
            sys.stderr.write(f"loratui: tracker {tracker.name} failed and is switched off for this run: "
                             f"{type(exc).__name__}: {exc}\n")
            sys.stderr.flush()
            return False


def figures_of(event: dict) -> tuple[dict, dict]:
    """(numbers, texts) to log for one event, keyed the way trackers show them."""
    kind = event["type"]
    if kind == "step":
        return {f"train/{k}": _number(event[k]) for k in STEP_FIGURES if _is_number(event.get(k))}, {}
    if kind == "health":
        fields = {k: v for k, v in event.items() if k not in ("type", "time", "attempt", "step")}
        return {f"health/{k}": _number(v) for k, v in flatten(fields, "/").items() if _is_number(v)}, {}
    if kind == "gpu":
        return {f"gpu{device['index']}/{k}": _number(v) for device in event["devices"]
                for k, v in device.items() if k != "index" and _is_number(v)}, {}
    if kind == "alert":
        text = (f"[{event['severity']}] {event['kind']} at step {event.get('step')}: {event['message']} "
                f"(suggested fix: {event['suggestion']})")
        return {f"alerts/{event['kind']}": ALERT_LEVEL.get(event["severity"], 1)}, {"alerts": text}
    if kind == "alert_resolved":
        return {f"alerts/{event['kind']}": 0}, {}
    if kind == "restart":
        return {}, {"events": f"restart from step {event['from_step']}: precision {event['precision']}, "
                              f"learning rate {event['learning_rate']:.3g} ({event['reason']})"}
    if kind == "run_finished":
        return {}, {"events": f"run finished at step {event.get('step')}: {event.get('reason')}"}
    if kind == "run_failed":
        return {}, {"events": f"run failed at step {event.get('step')}: {event.get('error')}"}
    return {}, {}


def flatten(mapping: dict, separator: str = ".", prefix: str = "") -> dict:
    """{"train": {"lr": 1}} -> {"train.lr": 1}."""
    out = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            out.update(flatten(value, separator, f"{prefix}{key}{separator}"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _is_number(value) -> bool:
    return isinstance(value, (int, float))


def _number(value) -> float | int:
    return int(value) if isinstance(value, bool) else value


def _plain(value):
    """Hyperparameter values as trackers take them: numbers, text and booleans only."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)):
        return value
    return json.dumps(value)
