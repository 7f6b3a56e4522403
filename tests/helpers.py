"""Helpers for tests that train for real (in-process or as a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from loratui.config import load_config, render_toml
from loratui.events.bus import EventBus
from loratui.events.jsonl import JsonlSink, read_events
from loratui.run_dir import prepare_run_dir
from loratui.train.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent


def make_config(tmp_path: Path, overrides: list[str] = (), text: str = ""):
    path = tmp_path / "config.toml"
    if not path.exists() or text:
        path.write_text(text)
    return load_config(path, list(overrides))


def train_in_process(config, *, resume: bool = False, monitor=None):
    """Run the real trainer in this process; returns (exit code, events, run_dir)."""
    run_dir = prepare_run_dir(config, resume=resume, config_text=render_toml(config))
    bus = EventBus()
    bus.add_sink(JsonlSink(run_dir.events))
    trainer = Trainer(config, run_dir, bus, resume=resume, monitor=monitor)
    try:
        code = trainer.run()
    finally:
        bus.close()
    return code, read_events(run_dir.events), run_dir


def loratui_cli(*args: str, env: dict | None = None, timeout: float = 300, cwd: Path | None = None):
    """Run `python -m loratui ...` as a user would; returns the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "loratui", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd)


def steps_of(events: list[dict], attempt: int | None = None) -> list[dict]:
    return [e for e in events if e["type"] == "step" and (attempt is None or e["attempt"] == attempt)]


def assert_exact_resume(full_events: list[dict], full_dir, resumed_events: list[dict], resumed_dir,
                        steps: list[int]) -> dict:
    """A stopped-and-resumed run lost what the uninterrupted one lost on `steps` (within 1e-6, per step)
    and ended with the same adapter, tensor for tensor; returns that adapter's tensors."""
    import torch
    from safetensors.torch import load_file

    full = {e["step"]: e["loss"] for e in steps_of(full_events)}
    after = {e["step"]: e["loss"] for e in steps_of(resumed_events, attempt=1)}
    assert sorted(after) == steps
    for step, loss in after.items():
        assert abs(loss - full[step]) <= 1e-6, (step, loss, full[step])
    final_full = load_file(str(full_dir.adapter / "adapter_model.safetensors"))
    final_part = load_file(str(resumed_dir.adapter / "adapter_model.safetensors"))
    assert final_full.keys() == final_part.keys()
    for name in final_full:
        assert torch.equal(final_full[name], final_part[name]), name
    return final_full


class StepHook:
    """A stand-in monitor that runs `action(trainer)` after chosen steps (and probes nothing).

    Tests use it to act at an exact step through the real mechanisms, e.g. by
    appending a command to control.jsonl as the dashboard would.
    """

    def __init__(self, actions: dict):
        self.actions = actions

    def attach(self, trainer): ...

    def wants_probe(self, trainer, step):
        return False

    def after_update(self, trainer, step, lr, skipped): ...

    def carried_figures(self):
        return None

    def after_step(self, trainer, figures):
        action = self.actions.get((trainer.attempt, trainer.step), self.actions.get(trainer.step))
        if action:
            action(trainer)

    def on_restart(self, trainer): ...

    def health_summary(self):
        return None


def command_at(cmd: str, **args):
    from loratui.control import send_command

    return lambda trainer: send_command(trainer.run_dir.control, cmd, **args)


def ready_trainer(config, monitor=None):
    """A real Trainer, set up (model, data, optimizer, precision) but not yet trained."""
    run_dir = prepare_run_dir(config, resume=False, config_text=render_toml(config))
    bus = EventBus()
    bus.add_sink(JsonlSink(run_dir.events))
    trainer = Trainer(config, run_dir, bus, monitor=monitor)
    trainer.setup()
    return trainer


def ready_monitored_trainer(config):
    """As `ready_trainer`, with the health monitor a headless run builds (see entry.py)."""
    from loratui.monitor import build_monitor

    run_dir = prepare_run_dir(config, resume=False, config_text=render_toml(config))
    bus = EventBus()
    bus.add_sink(JsonlSink(run_dir.events))
    trainer = Trainer(config, run_dir, bus, monitor=build_monitor(config, bus))
    trainer.setup()
    return trainer
