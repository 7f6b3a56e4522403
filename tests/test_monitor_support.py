"""Helpers for the monitor and scenario tests: a real trainer with the real monitor, and a person at the keys."""

from __future__ import annotations

import json
import math
import os
import random
import string

from helpers import make_config
from loratui.config import render_toml
from loratui.control import send_command
from loratui.data.builtin_data import builtin_dataset_path
from loratui.events.bus import CallbackSink, EventBus
from loratui.events.jsonl import JsonlSink, read_events
from loratui.monitor import build_monitor
from loratui.run_dir import prepare_run_dir
from loratui.scenarios import SCENARIOS, _toml
from loratui.train.trainer import Trainer

# `make torture` (LORATUI_TORTURE=full) runs the full matrices; the default suite a shorter, real variant.
FULL = os.environ.get("LORATUI_TORTURE") == "full"


def train_monitored(config, *, on_event=None, fault=None):
    """The real trainer with the monitor `loratui run` builds; returns (exit code, events, run_dir)."""
    run_dir = prepare_run_dir(config, resume=False, config_text=render_toml(config))
    bus = EventBus()
    bus.add_sink(JsonlSink(run_dir.events))
    if on_event is not None:
        bus.add_sink(CallbackSink(on_event))
    trainer = Trainer(config, run_dir, bus, monitor=build_monitor(config, bus))
    if fault is not None:  # a test-only fault that needs the trainer (NonFiniteGradients, DamagedWeights)
        bus.add_sink(CallbackSink(lambda event: fault.on_event(trainer, event)))
    try:
        code = trainer.run()
    finally:
        bus.close()
    return code, read_events(run_dir.events), run_dir


def scenario_config(tmp_path, name: str, overrides=()):
    scenario = [f"{key}={_toml(value)}" for key, value in SCENARIOS[name].overrides.items()]
    return make_config(tmp_path, [*scenario, f'run.output_dir="{tmp_path}"', f'run.name="{name}"', *overrides])


class NonFiniteGradients:
    """Test-only fault: on chosen steps one LoRA gradient value becomes inf while the loss stays finite.

    What a backward pass that overflows, or meets an operation undefined at its input, hands
    the optimizer. A tensor hook on the real trainer's first trainable parameter injects it
    during the real backward (after loss scaling, as a real overflow would be), so skipping,
    the GradScaler's backoff and the monitor all run as they do in training. `steps` are the
    trainer's step numbers (a restart from step 0 goes through them again); `attempts` limits
    the fault to some attempts. The hook is set once the model exists (run_started) and again
    after a restart, which may rebuild the model.
    """

    def __init__(self, steps, attempts=None):
        self.steps = set(steps)
        self.attempts = attempts
        self.handle = None

    def on_event(self, trainer, event: dict) -> None:
        if event["type"] in ("run_started", "restart"):
            if self.handle is not None:
                self.handle.remove()
            self.handle = trainer.params[0].register_hook(lambda grad: self.poison(trainer, grad))

    def poison(self, trainer, grad):
        if trainer.step + 1 not in self.steps or (self.attempts is not None and trainer.attempt not in self.attempts):
            return grad
        grad = grad.clone()
        grad.view(-1)[0] = math.inf
        return grad


class DamagedWeights:
    """Test-only fault: after step `after` of attempt 0, one LoRA weight becomes inf, as a corrupted update would
    leave it; every row's loss is then non-finite, in fp32 too. A restart loads intact weights again."""

    def __init__(self, after: int):
        self.after = after

    def on_event(self, trainer, event: dict) -> None:
        if event["type"] == "step" and event["attempt"] == 0 and event["step"] == self.after:
            import torch

            with torch.no_grad():
                trainer.params[0].view(-1)[0] = math.inf


def junk_batch_data(tmp_path, *, at_step: int, batch_size: int):
    """The bundled text rows, in order (data.shuffle = false), with one batch of random characters at `at_step`."""
    rng = random.Random(0)
    rows = builtin_dataset_path("builtin:tiny-text").read_text().splitlines()[:200]
    junk = [json.dumps({"text": "".join(rng.choice(string.ascii_letters + string.punctuation) for _ in range(120))})
            for _ in range(batch_size)]
    before = (at_step - 1) * batch_size
    path = tmp_path / "with-junk.jsonl"
    path.write_text("\n".join(rows[:before] + junk + rows[before:]) + "\n")
    return path


class PersonAtTheKeys:
    """Applies the first alert's suggested fix as the dashboard's key does: a restart in control.jsonl."""

    def __init__(self):
        self.control = None
        self.applied: dict | None = None

    def __call__(self, event: dict) -> None:
        if event["type"] == "run_started":
            self.control = os.path.join(event["run_dir"], "control.jsonl")
        if event["type"] == "alert" and self.applied is None and event["suggestion"] != "none":
            self.applied = event
            send_command(self.control, "restart", reason=f"test: apply the suggested fix for {event['kind']}",
                         **event["fix"])


def of_type(events, kind, attempt=None):
    return [e for e in events if e["type"] == kind and (attempt is None or e["attempt"] == attempt)]


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
