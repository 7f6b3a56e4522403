"""`loratui advise CONFIG [--steps N] [--json] [--device-memory GIB] [--set K=V]`: measure, then print the table or the JSON.

Progress goes to stderr (on a terminal one line per trial, rewritten at each
step; otherwise a line when a trial begins, every ten steps and at its end),
so `--json` keeps stdout to the JSON.
"""

from __future__ import annotations

import sys
from typing import TextIO

from loratui.advise.trials import TrialPlan, TrialsFailed
from loratui.errors import EXIT_TRAINING_FAILED, Problem, UserInputError

LINE_EVERY = 10  # steps between progress lines when stderr is not a terminal


class ConsoleProgress:
    def __init__(self, stream: TextIO):
        self.stream = stream
        self.in_place = stream.isatty()
        self._open_line = False

    def trial_step(self, plan: TrialPlan, index: int, count: int, step: int, steps: int) -> None:
        line = f"advise: trial {index + 1} of {count} ({plan.name}): step {step}/{steps}"
        if self.in_place:
            self.stream.write("\r" + line + ("\n" if step == steps else ""))
            self._open_line = step != steps
        elif step % LINE_EVERY == 0 or step == steps:
            self.stream.write(line + "\n")
        self.stream.flush()

    def note(self, message: str) -> None:
        self.stream.write(("\n" if self._open_line else "") + f"advise: {message}\n")
        self._open_line = False
        self.stream.flush()


def advise_command(config_path: str, overrides: list[str], *, steps: int, as_json: bool,
                   device_memory_gib: float | None = None) -> int:
    from loratui.advise.advisor import advise
    from loratui.advise.report import TRIALS_EVENTS, to_json
    from loratui.config import load_config
    from loratui.hardware import detect
    from loratui.run_dir import run_dir_for
    from loratui.train.run_control import StopTraining

    if steps < 1:
        raise UserInputError(Problem("--steps", f"{steps}: a trial needs at least one step"))
    if device_memory_gib is not None and not device_memory_gib > 0:
        raise UserInputError(Problem("--device-memory", f"{device_memory_gib:g} is not a memory size: give a "
                                     "positive number of GiB, e.g. 16"))
    config = load_config(config_path, overrides)
    progress = ConsoleProgress(sys.stderr)
    if steps > config.train.max_steps:
        progress.note(f"trials run {config.train.max_steps} steps: train.max_steps ends the schedule there")
        steps = config.train.max_steps
    run_root = run_dir_for(config).root
    try:
        advice = advise(config, run_root, detect(config.train.device), steps, progress,
                        device_memory_gib=device_memory_gib)
    except StopTraining as stop:
        print(f"advise: {stop.reason}", file=sys.stderr)
        return stop.exit_code
    except TrialsFailed as failure:
        print(f"advise: {failure} (the traceback: {run_root / TRIALS_EVENTS})", file=sys.stderr)
        return EXIT_TRAINING_FAILED
    if as_json:
        print(to_json(advice))
    elif sys.stdout.isatty():
        from loratui.advise.render import print_rich

        print_rich(advice, run_root)
    else:
        from loratui.advise.render import plain_text

        print(plain_text(advice, run_root))
    return 0
