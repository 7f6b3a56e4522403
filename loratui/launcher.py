"""The command that starts a trainer process for a prepared run directory.

The dashboard runs it as a child in its own session (so a dropped terminal or
a UI crash cannot take training down); with `[launch] num_processes` above 1 it
goes through `accelerate launch`.
"""

from __future__ import annotations

import sys

from loratui.run_dir import RunDir


def trainer_command(config, run_dir: RunDir, *, resume: bool) -> list[str]:
    command = [sys.executable, "-m", "loratui.train.entry", str(run_dir.root)]
    if resume:
        command.append("--resume")
    return command
