"""Run the trainer on a prepared run directory: the headless process, whoever started it.

`loratui run --headless` calls `train_in_run_dir` in its own process; the
dashboard starts `python -m loratui.entry RUN_DIR` as a child process
(its own session, output to trainer.log); `accelerate launch` starts one per
rank. All of them read the resolved config.toml in the run directory.

This is also where `train.precision = "advise"` is resolved: the advisor's trials
run here, before the run's trainer is built, and the trainer is handed the
precision they chose (the training package itself never imports the advisor).
"""

from __future__ import annotations

import argparse
import os
import sys

from loratui.config.load import config_from_dict, tomllib
from loratui.errors import EXIT_BAD_INPUT, EXIT_TRAINING_FAILED, UserInputError
from loratui.events.bus import EventBus
from loratui.events.console import ConsoleSink
from loratui.events.jsonl import JsonlSink
from loratui.gpu import GpuSampler
from loratui.host_metrics import HostSampler
from loratui.run_dir import RunDir


def train_in_run_dir(run_dir: RunDir, *, resume: bool = False, console: bool = True) -> int:
    config_path = run_dir.config_to_load() if resume else run_dir.config
    with open(config_path, "rb") as file:
        config = config_from_dict(tomllib.load(file), source=str(config_path))
    bus = EventBus()
    bus.add_sink(JsonlSink(run_dir.events))
    if console:
        bus.add_sink(ConsoleSink(config.monitor.log_every, config.train.max_steps))
    bus.add_sink(GpuSampler(bus.publish))
    bus.add_sink(HostSampler(bus.publish))  # CPU and RAM beside the GPU figures, with or without a GPU
    if config.run.report_to:
        from loratui.trackers import TrackerSink

        bus.add_sink(TrackerSink(config.run.report_to, run_dir.root, config.run.name))
    from loratui.monitor import build_monitor
    from loratui.train.trainer import Trainer

    try:
        advised, attempt = None, None
        if config.train.precision == "advise":
            advised, attempt, code = advise_first(config, run_dir, bus, resume=resume)
            if code is not None:
                return code
        trainer = Trainer(config, run_dir, bus, resume=resume, monitor=build_monitor(config, bus),
                          advised_precision=advised, attempt=attempt)
        return trainer.run()
    finally:
        bus.close()


def advise_first(config, run_dir: RunDir, bus: EventBus, *,
                 resume: bool) -> tuple[str | None, int | None, int | None]:
    """train.precision = "advise": the advisor's choice, measured before the trainer exists.

    Returns (the precision or None, the attempt its events were published under, an exit
    code when the advice failed or was stopped). None for the precision when a resume
    will keep its checkpoint's precision (the trainer says so): no trials then.
    """
    from loratui import checkpoint_files as ckpt
    from loratui.advise.run import choose_precision_for_run
    from loratui.events.jsonl import next_attempt
    from loratui.hardware import detect
    from loratui.run_dir import PRIVATE_UMASK
    from loratui.train.run_control import StopTraining, failure_exit, kept_precision

    if resume:
        newest = next(iter(ckpt.list_complete(run_dir.checkpoints)), None)
        if kept_precision(newest, detect(config.train.device)) is not None:
            return None, None, None
        bus.attempt = next_attempt(run_dir.events)  # the advice's events belong to this resume's attempt
    main_rank = os.environ.get("RANK", "0") == "0"
    bus.enabled = main_rank  # every rank fails alike (advise runs in one process); rank 0 says so
    previous_umask = os.umask(PRIVATE_UMASK)  # the trials' files are the run's, private to the user
    try:
        return choose_precision_for_run(config, run_dir, bus), bus.attempt, None
    except StopTraining as stop:  # a signal during the trials: nothing trained, nothing to save
        failed = stop.exit_code == EXIT_TRAINING_FAILED
        bus.publish("run_failed" if failed else "run_finished", step=0,
                    **({"error": stop.reason, "traceback": None} if failed
                       else {"reason": stop.reason, "adapter": str(run_dir.adapter)}))
        return None, None, stop.exit_code
    except Exception as exc:
        if resume and main_rank and isinstance(exc, UserInputError):
            run_dir.discard_pending_config()
        return None, None, failure_exit(bus, exc, step=0)
    finally:
        os.umask(previous_umask)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loratui.entry",
                                     description="Train in a prepared loratui run directory.")
    parser.add_argument("run_dir")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    try:
        return train_in_run_dir(RunDir(__import__("pathlib").Path(args.run_dir)), resume=args.resume)
    except UserInputError as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    from loratui.process_exit import exit_process

    exit_process(main())
