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
from loratui.ui import format as fmt
from loratui.ui.exit_summary import where_it_stands
from loratui.ui.run_model import FAILED, FINISHED, first_line


def run_dashboard(config, *, resume: bool) -> int:
    """Prepare the run directory, then show the dashboard while it starts and supervises the trainer.

    Raises UserInputError (before any UI) when the run directory cannot be used.
    """
    from loratui.ui.app import DashboardApp
    from loratui.ui.supervisor import TrainerProcess

    run_dir = prepare_run_dir(config, resume=resume, config_text=render_toml(config))
    trainer = TrainerProcess(trainer_command(config, run_dir, resume=resume), run_dir.trainer_log, cwd=Path.cwd())
    app = DashboardApp(run_dir.root, trainer=trainer, resume=resume)
    code = app.run()
    return report_exit(app, run_dir, code)


def watch_dashboard(path: Path) -> int:
    """Attach to a run directory: follow it if it is live, show its history if it has ended."""
    from loratui.ui.app import DashboardApp

    app = DashboardApp(Path(path))
    code = app.run()
    return report_exit(app, RunDir(Path(path)), code)


def report_exit(app, run_dir: RunDir, code: int | None) -> int:
    """Say what happened to the training once the terminal is ours again; returns the exit code."""
    if app.hung_up:
        return 129  # nobody is left to read a message
    if code is None and app.trainer_alive():  # the app ended without choosing (an error inside the UI)
        print(f"loratui: the dashboard stopped; training goes on. Re-attach with: loratui watch {run_dir.root}",
              file=sys.stderr)
        return 0
    if app.detached and app.trainer_alive():
        trainer = app.trainer
        pid = f" (pid {trainer.pid})" if trainer is not None and trainer.pid else ""
        print(f"loratui: detached; training goes on{pid}. Re-attach with: loratui watch {run_dir.root}",
              file=sys.stderr)
        return code or 0  # 0 for d; 128 + N when a signal closed `loratui watch`
    failure = app.model.failure
    if failure and app.model.state == FAILED:
        how = f" (the trainer {failure['ending']})" if failure.get("ending") else ""
        log = f"\n  the trainer's output: {run_dir.trainer_log}" if run_dir.trainer_log.is_file() else ""
        error = first_line(failure.get("error")) or "unknown error"
        print(f"loratui: training failed{how}: {error}{log}", file=sys.stderr)
        print(where_it_stands(run_dir), file=sys.stderr)
    elif app.model.state == FINISHED:
        model = app.model
        loss = f", loss {fmt.number(model.loss)}" if model.loss is not None else ""
        why = f" ({model.state_detail})" if model.state_detail else ""
        print(f"loratui: run ended at step {model.step}{why}{loss}", file=sys.stderr)
        print(where_it_stands(run_dir), file=sys.stderr)
    return app.outcome_code() if code is None else code
