"""Entry points from the command line: `loratui run` / `demo` with the dashboard, and `loratui watch`.

Only Textual and loratui's UI-free modules load here: torch, transformers and
peft are imported by the trainer process, so the first frame does not wait
for them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from loratui.config import render_toml
from loratui.launcher import trainer_command
from loratui.run_dir import RunDir, prepare_run_dir


def run_dashboard(config, *, resume: bool) -> int:
    """Prepare the run directory, then show the dashboard while it starts and supervises the trainer.

    Raises UserInputError (before any UI) when the run directory cannot be used.
    """
    from loratui.ui.app import DashboardApp
    from loratui.ui.supervisor import TrainerProcess

    run_dir = prepare_run_dir(config, resume=resume, config_text=render_toml(config))
    trainer = TrainerProcess(trainer_command(config, run_dir, resume=resume), run_dir.trainer_log, cwd=Path.cwd())
    app = DashboardApp(run_dir.root, trainer=trainer)
    code = app.run()
    return _after_exit(app, run_dir, code)


def watch_dashboard(path: Path) -> int:
    """Attach to a run directory: follow it if it is live, show its history if it has ended."""
    from loratui.ui.app import DashboardApp

    app = DashboardApp(Path(path))
    code = app.run()
    return _after_exit(app, RunDir(Path(path)), code)


def _after_exit(app, run_dir: RunDir, code: int | None) -> int:
    """Say what happened to the training once the terminal is ours again."""
    if app.hung_up:
        return 129  # nobody is left to read a message
    trainer = app.trainer
    if app.detached and app.trainer_alive():
        pid = f" (pid {trainer.pid})" if trainer is not None and trainer.pid else ""
        print(f"loratui: detached; training goes on{pid}. Re-attach with: loratui watch {run_dir.root}",
              file=sys.stderr)
        return 0
    if code is None:  # the app ended without choosing (an error inside the UI): the trainer is unharmed
        if app.trainer_alive():
            print(f"loratui: the dashboard stopped; training goes on. Re-attach with: loratui watch "
                  f"{run_dir.root}", file=sys.stderr)
            return 0
        return app.outcome_code()
    if code == 1 and app.model.failure:
        print(f"loratui: training failed: {app.model.failure.get('error', '').strip().splitlines()[0]}\n"
              f"  the trainer's output: {run_dir.trainer_log}", file=sys.stderr)
    return code
