"""Starting trainers: the command the dashboard runs, and the run directory each launched rank uses.

The dashboard runs `trainer_command` as a child in its own session (so a dropped
terminal or a UI crash cannot take training down). With `[launch] num_processes`
above 1, or any `[launch] accelerate_args`, the command goes through
`accelerate launch`, which starts one trainer process per rank.

Under `accelerate launch ... -m loratui run CONFIG` every rank runs the command
line; `run_dir_for_this_rank` lets rank 0 alone prepare the run directory while
the other ranks wait for its verdict, so none reads a config that is not yet written
and none trains when rank 0 refused the directory.
"""

from __future__ import annotations

import sys

from loratui.errors import EXIT_BAD_INPUT
from loratui.process_exit import is_launched_rank
from loratui.run_dir import RunDir

# accelerate launch options that pick the distributed engine; with none of them
# loratui asks for plain data parallelism (DDP; gloo on CPU).
ENGINE_OPTIONS = ("--config_file", "--multi_gpu", "--use_fsdp", "--use_deepspeed", "--use_megatron_lm", "--cpu")


def trainer_command(config, run_dir: RunDir, *, resume: bool) -> list[str]:
    entry = ["-m", "loratui.entry", str(run_dir.root)] + (["--resume"] if resume else [])
    if config.launch.num_processes <= 1 and not config.launch.accelerate_args:
        return [sys.executable, *entry]
    return [sys.executable, "-m", "accelerate.commands.launch", *accelerate_options(config.launch), *entry]


def accelerate_options(launch) -> list[str]:
    """The user's accelerate_args, completed with what loratui needs where the user left it open."""
    given = list(launch.accelerate_args)
    named = {arg.split("=", 1)[0] for arg in given if arg.startswith("--")}
    options = []
    if launch.num_processes > 1 and "--num_processes" not in named:
        options += ["--num_processes", str(launch.num_processes)]
    if launch.num_processes > 1 and not named & set(ENGINE_OPTIONS):
        options.append("--multi_gpu")
    if "--config_file" not in named:
        # Without an accelerate config file, say everything: accelerate would otherwise read a
        # default config left on the machine, or warn about each missing value.
        defaults = {"--num_machines": "1", "--mixed_precision": "no", "--dynamo_backend": "no"}
        for option, value in defaults.items():
            if option not in named:
                options += [option, value]
        if "--main_process_port" not in named and "--num_machines" not in named:
            options += ["--main_process_port", "0"]  # a free port: two runs on one machine must not collide
    return given + options


def run_dir_for_this_rank(config, *, resume: bool, config_text: str) -> RunDir:
    """The prepared run directory: made by this process, or by rank 0 of a multi-process launch."""
    from loratui.run_dir import prepare_run_dir, run_dir_for

    if not is_launched_rank():
        return prepare_run_dir(config, resume=resume, config_text=config_text)
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    from loratui.hardware import runs_on_cpu

    # The trainer's Accelerator later joins this same process group.
    state = PartialState(cpu=runs_on_cpu(config.train.device))
    refusal = None
    if state.is_main_process:
        try:
            prepare_run_dir(config, resume=resume, config_text=config_text)
        except Exception as exc:  # every rank must hear the verdict, whatever it is
            refusal = exc
    verdict = [refusal is None]
    broadcast_object_list(verdict, from_process=0)
    if verdict[0]:
        return run_dir_for(config)
    state.destroy_process_group()
    if refusal is not None:
        raise refusal
    raise SystemExit(EXIT_BAD_INPUT)  # rank 0 prints why; more copies of its message help no one
