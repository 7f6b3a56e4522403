"""`loratui` command line: run, watch, check, demo, advise.

Imports stay lazy: `loratui --help` and the dashboard's first frame must not
wait for torch, transformers or peft (about four seconds to import).
"""

from __future__ import annotations

import argparse
import os
import sys

from loratui.errors import EXIT_BAD_INPUT, UserInputError

HEADLESS_NOTICE = "loratui: stdout is not a terminal; running headless (as with --headless)"
MULTI_PROCESS_NOTICE = ("loratui: started by a multi-process launcher; running headless (watch it with "
                        "`loratui watch RUN_DIR`)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loratui",
        description="A terminal dashboard for live, precision-monitored LoRA training.",
        epilog="Exit codes: 0 done, 1 training failed, 2 bad config or input, 130/143/129 after "
               "SIGINT/SIGTERM/SIGHUP (a checkpoint is saved first; the dashboard passes SIGINT and "
               "SIGTERM on to the trainer and detaches on SIGHUP).")
    from loratui import __version__

    parser.add_argument("--version", action="version", version=f"loratui {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    def training_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--headless", action="store_true",
                         help="plain log lines instead of the dashboard (automatic without a terminal)")
        sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a config key with a TOML value, e.g. --set train.precision=fp16")
        sub.add_argument("--resume", action="store_true",
                         help="continue the run directory from its newest complete checkpoint")

    run = commands.add_parser("run", help="train a LoRA adapter from a config file",
                              description="Train a LoRA adapter, with the dashboard or --headless.")
    run.add_argument("config", help="a TOML config (see config.example.toml)")
    training_options(run)

    watch = commands.add_parser("watch", help="attach the dashboard to a run directory (or pick from a folder)",
                                description="Show a run directory's events live (or its history), "
                                            "and control the run with the dashboard's keys. Given a "
                                            "folder of runs, list them newest first and pick one.")
    watch.add_argument("run_dir", metavar="PATH", help="a run directory, or a folder of them (e.g. runs/)")
    watch.add_argument("--once", action="store_true",
                       help="print one plain-text snapshot (state, step, loss, alerts, health) and exit; "
                            "for a folder, its list of runs")
    watch.add_argument("--theme", choices=["dark", "light"], default=None,
                       help="the dashboard's colours (default: LORATUI_THEME, else dark)")
    watch.add_argument("--ascii", action="store_true",
                       help="ASCII only: no braille or box drawing (also LORATUI_ASCII=1)")

    check = commands.add_parser("check", help="validate a config and report what this machine supports")
    check.add_argument("config")
    check.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    check.add_argument("--device-memory", type=float, metavar="GIB",
                       help="judge the memory estimate against a device with this many GiB (e.g. 16 for a T4) "
                            "instead of this machine's")

    from loratui.scenarios import SCENARIOS

    demo = commands.add_parser("demo", help="the built-in offline example (tiny model, bundled data)",
                               description="Train the built-in tiny model on bundled data. Scenarios "
                                           "reproduce precision faults: " + ", ".join(SCENARIOS))
    demo.add_argument("--scenario", default="healthy", choices=list(SCENARIOS))
    training_options(demo)

    advise = commands.add_parser("advise", help="measure fp32, bf16 and fp16 on your model and data",
                                 description="Short trials of each precision this machine can run, then "
                                             "one recommendation with its evidence.")
    advise.add_argument("config")
    advise.add_argument("--steps", type=int, default=30, help="optimizer steps per trial (default 30)")
    advise.add_argument("--json", action="store_true", help="print the results as JSON")
    advise.add_argument("--device-memory", type=float, metavar="GIB",
                        help="judge each trial's memory against a device with this many GiB (e.g. 16 for a T4) "
                             "instead of this machine's; a 4-bit trial is added when full precision does not fit")
    advise.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return run_command(args.config, args.overrides, headless=args.headless, resume=args.resume)
        if args.command == "demo":
            return demo_command(args.scenario, args.overrides, headless=args.headless, resume=args.resume)
        if args.command == "watch":
            return watch_command(args.run_dir, once=args.once, theme=args.theme, ascii_only=args.ascii)
        if args.command == "check":
            return check_command(args.config, args.overrides, device_memory_gib=args.device_memory)
        if args.command == "advise":
            from loratui.advise.cli import advise_command

            return advise_command(args.config, args.overrides, steps=args.steps, as_json=args.json,
                                  device_memory_gib=args.device_memory)
    except UserInputError as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    return EXIT_BAD_INPUT


def run_command(config_path: str, overrides: list[str], *, headless: bool, resume: bool) -> int:
    from loratui.config import load_config

    config = load_config(config_path, overrides)
    return start_run(config, headless=headless, resume=resume)


def demo_command(scenario: str, overrides: list[str], *, headless: bool, resume: bool) -> int:
    from loratui.scenarios import demo_config

    config = demo_config(scenario, overrides, resume=resume)
    return start_run(config, headless=headless, resume=resume)


def start_run(config, *, headless: bool, resume: bool) -> int:
    from loratui.config import render_toml
    from loratui.launcher import run_dir_for_this_rank
    from loratui.process_exit import is_launched_rank

    if not headless and is_launched_rank():
        # One dashboard per rank would each start its own trainer: ranks always run headless.
        if int(os.environ.get("RANK", "0")) == 0:
            print(MULTI_PROCESS_NOTICE, flush=True)
        headless = True
    if not headless and not sys.stdout.isatty():
        print(HEADLESS_NOTICE, flush=True)
        headless = True
    if not headless:
        from loratui.ui.launch import run_dashboard

        return run_dashboard(config, resume=resume)
    refuse_what_this_machine_cannot_run(config)  # before the run directory exists: nothing to clean up
    # Under `accelerate launch` every rank runs this; rank 0 alone prepares the run directory.
    run_dir = run_dir_for_this_rank(config, resume=resume, config_text=render_toml(config))
    from loratui.entry import train_in_run_dir

    return train_in_run_dir(run_dir, resume=resume)


def refuse_what_this_machine_cannot_run(config) -> None:
    from loratui.errors import Problem
    from loratui.hardware import detect, machine_problems

    problems = machine_problems(config, detect(config.train.device))
    if problems:
        raise UserInputError([Problem("config", p) for p in problems])


def watch_command(run_dir: str, *, once: bool = False, theme: str | None = None, ascii_only: bool = False) -> int:
    from pathlib import Path

    from loratui.errors import Problem

    path = Path(run_dir)
    if (path / "events.jsonl").is_file():
        if once:
            from loratui.ui.snapshot import render_snapshot

            print(render_snapshot(path))
            return 0
        from loratui.ui.themes import choose_look

        choose_look(theme, ascii_only)
        from loratui.ui.launch import watch_dashboard

        return watch_dashboard(path)
    from loratui.ui.run_list import find_runs

    runs = find_runs(path) if path.is_dir() else []
    if not runs:
        raise UserInputError(Problem(run_dir, "not a loratui run directory (no events.jsonl), nor a folder "
                                              "holding any"))
    if once:
        from loratui.ui.run_list import render_run_list

        print(render_run_list(path))
        return 0
    from loratui.ui.themes import choose_look

    choose_look(theme, ascii_only)
    from loratui.ui.screens.run_list import RunListApp

    chosen = RunListApp(path, runs).run()
    if chosen is None:
        return 0
    from loratui.ui.launch import watch_dashboard

    return watch_dashboard(chosen)


def check_command(config_path: str, overrides: list[str], *, device_memory_gib: float | None = None) -> int:
    from loratui.config import load_config
    from loratui.errors import Problem
    from loratui.hardware import detect, machine_problems, resolve_precision

    if device_memory_gib is not None and not device_memory_gib > 0:
        raise UserInputError(Problem("--device-memory", f"{device_memory_gib:g} is not a memory size: give a "
                                     "positive number of GiB, e.g. 16"))
    config = load_config(config_path, overrides)
    caps = detect(config.train.device)
    print(f"config: {config_path} is valid")
    print(f"device: {caps.device} ({caps.device_name})"
          + (f", compute capability {caps.compute_capability[0]}.{caps.compute_capability[1]}"
             if caps.compute_capability else ""))
    print(f"torch: {caps.torch_version}; CUDA: {'yes' if caps.device == 'cuda' else 'no'}")
    for precision in ("fp32", "bf16", "fp16"):
        note = caps.notes.get(precision)
        print(f"  {precision}: {caps.support[precision]}" + (f" ({note})" if note else ""))
    print(f"NVML: {caps.nvml}")
    for gpu in caps.gpus:
        capability = gpu["compute_capability"]
        print(f"  GPU {gpu['index']}: {gpu['name']}, {gpu['mem_total_mib']:.0f} MiB"
              + (f", compute capability {capability[0]}.{capability[1]}" if capability else ""))
    resolved = resolve_precision(config.train.precision, caps)
    print(f"train.precision = {config.train.precision!r} -> {resolved}")
    problems = machine_problems(config, caps)
    if not problems:  # a config this machine cannot run (bitsandbytes missing, say) has no plan to judge
        print_memory_plan(config, caps, resolved, device_memory_gib)
    if problems:
        raise UserInputError([Problem(config_path, p) for p in problems],
                             headline=f"{config_path}: this machine cannot run the config as written")
    return 0


def print_memory_plan(config, caps, precision: str, device_memory_gib: float | None) -> None:
    from loratui.model.memory_plan import GIB, device_memory, plan_for_config, render

    if precision not in ("fp32", "bf16", "fp16"):  # "advise" decides later: plan for the largest
        precision = "fp32"
    if device_memory_gib is not None:
        available, device = int(device_memory_gib * GIB), f"a {device_memory_gib:g} GiB device (--device-memory)"
    else:
        available, device = device_memory(caps)
    for line in render(plan_for_config(config, precision, available, device)):
        print(line)


if __name__ == "__main__":
    from loratui.process_exit import exit_process

    exit_process(main())
