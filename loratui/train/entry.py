"""Run the trainer on a prepared run directory: the headless process, whoever started it.

`loratui run --headless` calls `train_in_run_dir` in its own process; the
dashboard starts `python -m loratui.train.entry RUN_DIR` as a child process
(its own session, output to trainer.log); `accelerate launch` starts one per
rank. All of them read the resolved config.toml in the run directory.
"""

from __future__ import annotations

import argparse
import sys

from loratui.config.load import config_from_dict, tomllib
from loratui.errors import EXIT_BAD_INPUT, UserInputError
from loratui.events.bus import EventBus
from loratui.events.console import ConsoleSink
from loratui.events.jsonl import JsonlSink
from loratui.gpu import GpuSampler
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
    if config.run.report_to:
        from loratui.trackers import TrackerSink

        bus.add_sink(TrackerSink(config.run.report_to, run_dir.root, config.run.name))
    from loratui.monitor import build_monitor
    from loratui.train.trainer import Trainer

    trainer = Trainer(config, run_dir, bus, resume=resume, monitor=build_monitor(config, bus))
    try:
        return trainer.run()
    finally:
        bus.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loratui.train.entry",
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
    sys.exit(main())
