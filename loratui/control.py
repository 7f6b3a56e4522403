"""control.jsonl: commands to the trainer, appended by the dashboard or by hand.

The trainer polls it at every step boundary. Polling is a single `stat`: the
file is read (from where it was last read) only when it has grown. A command
that is malformed or unknown is reported and ignored, never fatal.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from loratui.config.schema import TRAINING_PRECISIONS

COMMANDS = ("pause", "resume", "save", "stop", "restart")


@dataclass
class Command:
    cmd: str
    args: dict = field(default_factory=dict)
    id: str | None = None

    def as_dict(self) -> dict:
        return {"cmd": self.cmd, **self.args, **({"id": self.id} if self.id else {})}


@dataclass
class Rejected:
    """A line that is not a valid command, and why."""

    line: str
    reason: str


def parse_command(line: str) -> Command | Rejected:
    try:
        raw = json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    except ValueError:
        return Rejected(line, "not valid JSON")
    if not isinstance(raw, dict):
        return Rejected(line, "a command is a JSON object such as {\"cmd\": \"save\"}")
    cmd = raw.pop("cmd", None)
    command_id = raw.pop("id", None)
    raw.pop("time", None)
    if cmd not in COMMANDS:
        return Rejected(line, f"unknown cmd {cmd!r}; known: {', '.join(COMMANDS)}")
    allowed = {"restart": {"precision", "learning_rate", "lr_factor", "from_step", "loss_scaling", "reason"},
               "stop": {"reason"}, "save": set(), "pause": set(), "resume": set()}[cmd]
    extra = set(raw) - allowed
    if extra:
        return Rejected(line, f"{cmd} takes no {', '.join(sorted(extra))}")
    if cmd == "restart":
        if "precision" in raw and raw["precision"] not in TRAINING_PRECISIONS:
            return Rejected(line, f"precision must be one of {', '.join(TRAINING_PRECISIONS)}")
        for name in ("learning_rate", "lr_factor"):
            if name in raw and not _positive_number(raw[name]):
                return Rejected(line, f"{name} must be a positive number")
        if "learning_rate" in raw and "lr_factor" in raw:
            return Rejected(line, "give learning_rate or lr_factor, not both")
        if "loss_scaling" in raw and not isinstance(raw["loss_scaling"], bool):
            return Rejected(line, "loss_scaling must be true or false")
        if "from_step" in raw and (isinstance(raw["from_step"], bool) or not isinstance(raw["from_step"], int)
                                   or raw["from_step"] < 0):
            return Rejected(line, "from_step must be a step number")
    for name in ("reason",):
        if name in raw and not isinstance(raw[name], str):
            return Rejected(line, f"{name} must be a string")
    return Command(cmd, raw, str(command_id) if command_id is not None else None)


def _positive_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value > 0


class ControlReader:
    """The trainer's side: new commands since the last poll."""

    def __init__(self, path: str | Path, *, from_end: bool = True):
        self.path = Path(path)
        # A resumed run ignores commands that were meant for an earlier process.
        self.offset = self._size() if from_end else 0
        self._pending = b""

    def _size(self) -> int:
        try:
            return os.stat(self.path).st_size
        except FileNotFoundError:
            return 0

    def poll(self) -> list[Command | Rejected]:
        size = self._size()
        if size == self.offset:
            return []
        if size < self.offset:  # truncated by hand: read it afresh
            self.offset, self._pending = 0, b""
        with open(self.path, "rb") as file:
            file.seek(self.offset)
            chunk = self._pending + file.read(size - self.offset)
        self.offset = size
        *lines, self._pending = chunk.split(b"\n")
        out: list[Command | Rejected] = []
        for raw in lines:
            text = raw.decode("utf-8", errors="replace").strip()
            if text:
                out.append(parse_command(text))
        return out


def send_command(path: str | Path, cmd: str, **args) -> dict:
    """Append one command (the dashboard's side, and handy in scripts)."""
    command = {"cmd": cmd, **args, "time": round(time.time(), 3)}
    line = (json.dumps(command) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line)  # one write of a short line: appended whole
    finally:
        os.close(fd)
    return command
