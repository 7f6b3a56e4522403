"""The Checkpointer: saves and loads everything a run needs to continue exactly from a step.

A checkpoint holds the adapter, the optimizer and scheduler states, the loss
scaler (fp16), each rank's RNG states and the train state (step, precision,
learning rate, data position, ...). The directory layout and its atomic commit
are loratui/checkpoint_files.py's; this object decides what goes in and how it
comes back. The trainer calls `save` once per checkpoint and `load` once per
resume or restart.
"""

from __future__ import annotations

import math
import random
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

from loratui import checkpoint_files as ckpt
from loratui import faults


@dataclass(kw_only=True)  # in trainer_state.json's order
class TrainState:
    """trainer_state.json: where the run was and what was in effect when it saved.

    Checkpoints written before a field existed lack it: it reads as None (unknown).
    """

    step: int
    attempt: int | None = None
    precision: str | None = None
    adapter_dtype: str | None = None
    learning_rate: float
    config_learning_rate: float | None = None  # the config's rate then: tells a changed config from a restart
    config_precision: str | None = None
    config_max_steps: int | None = None  # the config's then: a resume says when the current one differs
    data_position: dict  # {"epoch", "batch"}
    world_size: int | None = None
    loss: float | None = None
    health: dict | None = None  # the monitor's summary
    identity: dict | None = None  # what the adapter means (model_identity)
    time: float | None = None

    def as_dict(self) -> dict:
        state = asdict(self)
        state["loss"] = self.loss if self.loss is not None and math.isfinite(self.loss) else None
        return state

    @classmethod
    def from_dict(cls, state: dict) -> "TrainState":
        return cls(**{f.name: state[f.name] for f in fields(cls) if f.name in state})


@dataclass
class Trainables:
    """The states a checkpoint saves besides the train state."""

    model: Any  # the unwrapped peft model: its adapter weights are saved
    optimizer: Any  # the torch optimizer (not accelerate's wrapper)
    scheduler: Any
    scaler: Any  # GradScaler or None


class CheckpointNotWritten(Exception):
    """The disk refused a checkpoint (full, read-only...); the message says why. The previous one is intact."""


class Checkpointer:
    def __init__(self, checkpoints: Path, runtime, *, keep: int):
        self.checkpoints = checkpoints
        self.runtime = runtime
        self.keep = keep

    def save(self, step: int, trainables: Trainables, state: Callable[[], TrainState]) -> tuple[Path, list[Path]]:
        """Write a complete checkpoint of `step`; returns it and the old ones retention removed.

        Raises CheckpointNotWritten, on every rank alike, when any rank could not write its part.
        `state` is called on rank 0 alone, which writes everything but the other ranks' RNG.
        """
        runtime = self.runtime
        staging = ckpt.partial_dir(self.checkpoints, step)
        # Each stage runs on the ranks it concerns, then every rank learns whether any of
        # them failed, so a full disk on one rank can never leave the others waiting.
        stages = (lambda: ckpt.begin(self.checkpoints, step) if runtime.is_main else None,
                  lambda: ckpt.write_torch(rng_state(), staging / f"rng-rank{runtime.rank}.pt"),
                  lambda: self._write_main_files(staging, trainables, state()) if runtime.is_main else None)
        for stage in stages:
            error = runtime.first_error_on_any_rank(_attempt(stage))
            if error is not None:
                if runtime.is_main:
                    shutil.rmtree(staging, ignore_errors=True)
                raise CheckpointNotWritten(error)
        path = self.checkpoints / ckpt.checkpoint_name(step)
        removed = ckpt.apply_retention(self.checkpoints, self.keep, protect=path) if runtime.is_main else []
        return path, removed

    def _write_main_files(self, staging: Path, trainables: Trainables, state: TrainState) -> None:
        from peft import get_peft_model_state_dict

        adapter = get_peft_model_state_dict(trainables.model)
        ckpt.write_tensors({k: v.detach().cpu().contiguous() for k, v in adapter.items()},
                           staging / "adapter_model.safetensors")
        ckpt.write_torch(trainables.optimizer.state_dict(), staging / "optimizer.pt")
        ckpt.write_torch(trainables.scheduler.state_dict(), staging / "scheduler.pt")
        if trainables.scaler is not None:
            ckpt.write_torch(trainables.scaler.state_dict(), staging / "scaler.pt")
        ckpt.commit(staging, state.as_dict(), slow_hook=faults.slow_checkpoint_hook())

    def load(self, info: ckpt.CheckpointInfo, trainables: Trainables) -> TrainState:
        """Restore a verified checkpoint into `trainables` and this rank's RNG; returns its train state.

        `trainables.scaler` is restored only when given: pass None when the precision changed
        (an fp16 scale means nothing to another precision's run).
        """
        import torch
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        path, device = info.path, self.runtime.device
        set_peft_model_state_dict(trainables.model, load_file(str(path / "adapter_model.safetensors"),
                                                              device=str(device)))
        trainables.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True,
                                                        map_location=device))
        trainables.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        if trainables.scaler is not None and (path / "scaler.pt").is_file():
            trainables.scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
        rng_file = path / f"rng-rank{self.runtime.rank}.pt"
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=True))
        return TrainState.from_dict(info.state)


def rng_state() -> dict:
    import numpy as np
    import torch

    numpy_state = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": {"kind": numpy_state[0], "keys": torch.from_numpy(numpy_state[1].copy()),
                      "pos": int(numpy_state[2]), "has_gauss": int(numpy_state[3]),
                      "cached_gaussian": float(numpy_state[4])},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy(), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _attempt(stage) -> str | None:
    """Run one stage of a checkpoint save; the error text if the disk refused it."""
    try:
        stage()
    except OSError as exc:
        return (exc.strerror or str(exc)) + (f": {exc.filename}" if getattr(exc, "filename", None) else "")
    return None
