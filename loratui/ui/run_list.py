"""A folder of runs (`loratui watch runs/`): which runs it holds, newest first, and what each is doing.

A run is a directory with an events.jsonl, directly in the folder (`runs/`)
or one level down (`output_dir/name`). Each is summarised by folding its log
into the dashboard's own RunModel, so the list and the dashboard agree on
state and alerts. A run whose log has not moved for STALE_SECONDS while it
says it is running gets a question mark: its trainer may have been killed
without a word.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from loratui.ui import format as fmt
from loratui.ui.run_model import ENDED
from loratui.ui.snapshot import read_run

EVENTS = "events.jsonl"
STALE_SECONDS = 300


@dataclass(frozen=True)
class RunSummary:
    path: Path
    name: str
    modified: float  # when events.jsonl last changed
    state: str
    step: int
    max_steps: int | None
    precision: str | None
    open_alerts: int
    alerts: int  # alert events among the newest entries (every alert, open or resolved)

    def state_text(self, now: float) -> str:
        quiet = now - self.modified
        if self.state not in ENDED and quiet > STALE_SECONDS:
            return f"{self.state}? (quiet {fmt.duration(quiet)})"
        return self.state

    def row(self, now: float) -> str:
        steps = f"{self.step}/{self.max_steps}" if self.max_steps else str(self.step)
        alerts = f"{self.open_alerts} open / {self.alerts}" if self.alerts else "0"
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.modified))
        return (f"{when}  {self.state_text(now):<22} {steps:>11}  {self.precision or '-':<5} "
                f"{alerts:<19} {self.name}")


HEADER = f"{'written':<16}  {'state':<22} {'step':>11}  {'prec':<5} {'alerts (open / all)':<19} run"


def find_runs(folder: Path) -> list[Path]:
    """Run directories in `folder` and one level below, the most recently written first."""
    found = {events.parent for pattern in (f"*/{EVENTS}", f"*/*/{EVENTS}") for events in folder.glob(pattern)
             if events.is_file()}
    return sorted(found, key=lambda run: (run / EVENTS).stat().st_mtime, reverse=True)


def summarize(run_dir: Path) -> RunSummary:
    model = read_run(run_dir)
    alerts = sum(1 for entry in model.entries if entry.kind == "alert")
    return RunSummary(run_dir, model.run_name, (run_dir / EVENTS).stat().st_mtime, model.state, model.step,
                      model.max_steps, model.precision, len(model.active_alerts), alerts)


def render_run_list(folder: Path) -> str:
    """`watch FOLDER --once`: the table as plain text."""
    now = time.time()
    rows = [summarize(run).row(now) for run in find_runs(folder)]
    return "\n".join([HEADER, *rows])
