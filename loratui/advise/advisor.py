"""Measure, then recommend: trials, their figures and verdicts, advice.json. Shared by `loratui advise` and runs.

The run directory <output_dir>/<name>/ receives advice.json, and advise/events.jsonl
holds the trials' own event log (their evidence; a new advice replaces both).
The advisor never creates the run directory's events.jsonl or checkpoints/:
a later `loratui run` of the same config must start there as a new run, not
be taken for an existing one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from loratui.advise.decide import judge, recommend
from loratui.advise.figures import trial_figures
from loratui.advise.fit import device_budget
from loratui.advise.report import WORKSPACE, build_advice, write_advice
from loratui.advise.trials import Progress, run_trials
from loratui.errors import Problem, UserInputError
from loratui.hardware import Capabilities, resolve_precision
from loratui.run_dir import PRIVATE_DIR, RunDir

DEFAULT_STEPS = 30


def advise(config, run_root: Path, capabilities: Capabilities, steps: int, progress: Progress, *,
           device_memory_gib: float | None = None) -> dict:
    """Run the trials, decide, write advice.json into `run_root`; returns the advice.

    Each trial's memory is judged against `device_memory_gib` GiB when given, else this device's memory.
    """
    budget = device_budget(capabilities, device_memory_gib)
    prior = resolve_precision("auto", capabilities)
    workspace = prepare_workspace(run_root)
    try:
        records = run_trials(config, workspace, capabilities, steps, progress, budget, compute=prior)
    finally:
        # The trials' checkpoints and control file served only to run them; their events stay as evidence.
        shutil.rmtree(workspace.checkpoints, ignore_errors=True)
        workspace.control.unlink(missing_ok=True)
    figures = {r.plan.name: trial_figures(r.events, r.repeat_events) for r in records}
    verdicts = {r.plan.name: judge(r, figures[r.plan.name], config.monitor) for r in records}
    prior_why = capabilities.notes.get(prior) or f"{prior} is {capabilities.support.get(prior)} here"
    choice = recommend(records, figures, verdicts, prior, prior_why)
    advice = build_advice(config, records, figures, verdicts, choice, capabilities, prior, prior_why, steps, budget)
    path = RunDir(run_root).advice
    try:
        write_advice(path, advice)
    except OSError as exc:
        raise UserInputError(Problem("run.output_dir", f"cannot write {path}: {exc.strerror or exc}")) from None
    return advice


def prepare_workspace(run_root: Path) -> RunDir:
    """The run directory, and in it a fresh advise/ for the trials; a place that cannot be written is bad input."""
    workspace = RunDir(run_root / WORKSPACE)
    try:
        ensure_private_dir(run_root)
        shutil.rmtree(workspace.root, ignore_errors=True)  # the previous advice's evidence goes with it
        workspace.create()
    except OSError as exc:  # output_dir is a file, read-only, on a full disk...
        raise UserInputError(Problem("run.output_dir", f"cannot write the advice into {run_root}: "
                                     f"{exc.strerror or exc}")) from None
    return workspace


def ensure_private_dir(path: Path) -> None:
    """The run directory as the trainer would make it (0700), if it does not exist yet."""
    if path.is_dir():
        return
    old_umask = os.umask(0o077)
    try:
        path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    finally:
        os.umask(old_umask)
