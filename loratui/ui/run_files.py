"""Read-only views of a run directory's files besides the event log: checkpoints, advice, trainer.log.

JSON and text only: the dashboard never loads a checkpoint's tensors (that
would import torch), it only lists what a rollback can go back to.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "manifest.json"
STATE = "trainer_state.json"


@dataclass(frozen=True)
class CheckpointSummary:
    step: int
    path: Path
    loss: float | None
    precision: str | None
    learning_rate: float | None
    attempt: int | None
    health: object  # the monitor's summary at that step, as stored (shape owned by the monitor)
    saved_at: float | None


def list_checkpoints(checkpoints_dir: Path) -> list[CheckpointSummary]:
    """Complete checkpoints (renamed into place with their manifest), newest first.

    The trainer verifies checksums before it restarts from one; a damaged
    checkpoint is refused there, with the reason, in a `control` event.
    """
    found = []
    try:
        entries = list(os.scandir(checkpoints_dir))
    except OSError:
        return found
    for entry in entries:
        if not entry.is_dir() or not entry.name.startswith("step-"):
            continue
        path = Path(entry.path)
        if not (path / MANIFEST).is_file():
            continue
        try:
            state = json.loads((path / STATE).read_text())
            step = int(state["step"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        found.append(CheckpointSummary(step, path, state.get("loss"), state.get("precision"),
                                       state.get("learning_rate"), state.get("attempt"), state.get("health"),
                                       state.get("time")))
    found.sort(key=lambda c: c.step, reverse=True)
    return found


def read_advice(path: Path) -> dict | None:
    """advice.json from `loratui advise`, or None when absent or unreadable."""
    try:
        advice = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return advice if isinstance(advice, dict) else None


def tail_lines(path: Path, lines: int = 20, max_bytes: int = 64 * 1024) -> str:
    """The last lines of a text file (trainer.log), read from its end only."""
    try:
        with open(path, "rb") as file:
            file.seek(0, os.SEEK_END)
            size = file.tell()
            file.seek(max(0, size - max_bytes))
            data = file.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])
