"""Run control between steps: commands as a table of handlers, signals, rollback, and the resume plan.

Everything a person or the dashboard can do to a run (pause, resume, save, stop,
restart with a new precision or learning rate, roll back) arrives through
control.jsonl and is carried out here, at a step boundary, on every rank alike.
The resume plan (which checkpoint, which precision and learning rate a resumed
run continues with, and the notices that say why) is decided without side
effects, before anything is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

from loratui import checkpoint_files as ckpt
from loratui.control import Command, Rejected
from loratui.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_TRAINING_FAILED, Problem, UserInputError
from loratui.train.checkpoint import TrainState
from loratui.train.precision import setup_precision


class StopTraining(Exception):
    """Ends `fit` early: a stop command, a signal, or a failed checkpoint with on_error = stop."""

    def __init__(self, reason: str, exit_code: int):
        super().__init__(reason)
        self.reason = reason
        self.exit_code = exit_code


# ---------------------------------------------------------------- commands and signals

def poll_commands_and_signals(trainer) -> tuple[list, int | None]:
    """This step's commands and signal, the same on every rank."""
    commands = trainer.control.poll() if trainer.is_main else []
    signum = trainer.signals.received
    if trainer.world_size == 1:
        return commands, signum
    import torch
    import torch.distributed as dist
    from accelerate.utils import broadcast_object_list

    flags = torch.tensor([signum or 0, len(commands)], device=trainer.device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    signum = int(flags[0]) or None
    if int(flags[1]):
        shared = [commands]
        broadcast_object_list(shared, from_process=0)
        commands = shared[0]
    return commands, signum


def obey(trainer, command: Command | Rejected) -> None:
    """Carry out one command and acknowledge it with a `control` event."""
    if isinstance(command, Rejected):
        trainer.bus.publish("control", step=trainer.step, cmd=None, accepted=False,
                            message=f"ignored: {command.reason}", line=command.line[:200])
        return
    ack = dict(step=trainer.step, cmd=command.cmd, args=command.args, id=command.id)
    HANDLERS[command.cmd](trainer, command, ack)


def _pause(trainer, command: Command, ack: dict) -> None:
    trainer.paused = True
    trainer.bus.publish("control", **ack, accepted=True, message="paused")


def _resume(trainer, command: Command, ack: dict) -> None:
    trainer.paused = False
    trainer.bus.publish("control", **ack, accepted=True, message="resumed")


def _save(trainer, command: Command, ack: dict) -> None:
    trainer.bus.publish("control", **ack, accepted=True, message="saving a checkpoint")
    trainer.save_checkpoint("command")


def _stop(trainer, command: Command, ack: dict) -> None:
    trainer.bus.publish("control", **ack, accepted=True, message="stopping after a checkpoint")
    trainer.save_checkpoint("stop")
    raise StopTraining(command.args.get("reason") or "stopped by command", EXIT_OK)


def _restart(trainer, command: Command, ack: dict) -> None:
    try:
        target = restart_target(trainer, command.args.get("from_step"))
    except ValueError as exc:
        trainer.bus.publish("control", **ack, accepted=False, message=str(exc))
        return
    trainer.bus.publish("control", **ack, accepted=True, message=f"restarting from step {target.step}")
    trainer.paused = False
    restart(trainer, target, precision=command.args.get("precision"), learning_rate=command.args.get("learning_rate"),
            lr_factor=command.args.get("lr_factor"), loss_scaling=command.args.get("loss_scaling"),
            reason=command.args.get("reason") or "command")


HANDLERS = {"pause": _pause, "resume": _resume, "save": _save, "stop": _stop, "restart": _restart}


def stop_for_signal(trainer, signum: int) -> None:
    import signal as signal_module

    from loratui.train.signals import EXIT_CODES

    name = signal_module.Signals(signum).name
    trainer.notice(f"{name} received: saving a checkpoint and stopping")
    trainer.save_checkpoint("signal")
    raise StopTraining(f"stopped by {name}", EXIT_CODES[signum])


def check_interrupted(trainer) -> None:
    """A signal during loading: nothing to save yet, stop before the long work."""
    signum = trainer.signals.received
    if trainer.world_size > 1:
        # Every rank stops here or none does: a rank that went on alone would wait forever in
        # the model's first collective.
        import torch
        import torch.distributed as dist

        flag = torch.tensor([signum or 0], device=trainer.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        signum = int(flag) or None
    if signum:
        import signal as signal_module

        from loratui.train.signals import EXIT_CODES

        name = signal_module.Signals(signum).name
        raise StopTraining(f"stopped by {name} while loading", EXIT_CODES[signum])


def checkpoint_not_written(trainer, error: str) -> None:
    """A checkpoint the disk refused: alert, then go on or stop as checkpoint.on_error says."""
    on_error = trainer.config.checkpoint.on_error
    trainer.bus.publish("alert", step=trainer.step, kind="checkpoint_failed", severity="critical",
                        message=f"checkpoint at step {trainer.step} could not be written ({error}); the previous "
                                f"checkpoint is intact",
                        suggestion="none", evidence={"error": error, "on_error": on_error})
    if on_error == "stop":
        raise StopTraining(f"checkpoint could not be written: {error}", EXIT_TRAINING_FAILED)


def failure_exit(bus, exc: Exception, *, step: int) -> int:
    """Say why the run cannot go on (run_failed); the exit code: 2 for bad input, 1 for anything else."""
    import traceback

    if isinstance(exc, UserInputError):
        bus.publish("run_failed", step=step, error=exc.render(), traceback=None, input_error=True)
        return EXIT_BAD_INPUT
    bus.publish("run_failed", step=step, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    return EXIT_TRAINING_FAILED


# ---------------------------------------------------------------- rollback

def restart_target(trainer, from_step: int | None) -> ckpt.CheckpointInfo:
    """The checkpoint a restart goes back to: the newest, or the one at `from_step`; ValueError if none."""
    available = ckpt.list_complete(trainer.run_dir.checkpoints) if trainer.is_main else []
    available = trainer.runtime.share_from_main(available)
    if not available:
        raise ValueError("no complete checkpoint to restart from")
    if from_step is None:
        return available[0]
    for info in available:
        if info.step == from_step:
            return info
    steps = ", ".join(str(info.step) for info in available)
    raise ValueError(f"no complete checkpoint at step {from_step} (available: {steps})")


def restart(trainer, target: ckpt.CheckpointInfo, *, precision: str | None = None,
            learning_rate: float | None = None, lr_factor: float | None = None, loss_scaling: bool | None = None,
            reason: str = "") -> None:
    """Go back to a checkpoint, change what was asked, and go on as the next attempt.

    The base weights are reloaded only when their dtype changes; the adapter,
    optimizer state, schedule, RNG and data position come from the checkpoint.
    """
    set_aside_newer(trainer, target.step)
    new_precision = precision or trainer.precision_name
    trainer.adapter_dtype_name = adapter_dtype_under(new_precision, trainer.adapter_dtype_name)
    if new_precision != trainer.base_dtype_name or _adapter_dtype_changed(trainer):
        trainer.accelerator.free_memory()
        trainer.model = trainer.optimizer = None
        trainer.load_model(new_precision)
    trainer.precision_name = new_precision
    if loss_scaling is not None:  # amp.loss_scaling for this attempt on (the underflow fix) or off
        trainer.config.amp.loss_scaling = loss_scaling
    trainer.precision = setup_precision(new_precision, trainer.device_type, trainer.config.amp)
    trainer.attempt += 1
    trainer.bus.attempt = trainer.attempt
    if learning_rate is None:  # a restart changes only what it is asked to change
        learning_rate = trainer.learning_rate * float(lr_factor) if lr_factor is not None else trainer.learning_rate
    trainer.load_checkpoint(target, learning_rate=float(learning_rate))
    trainer.bus.publish("restart", step=trainer.step, from_step=target.step, precision=trainer.precision_name,
                        learning_rate=trainer.learning_rate, reason=reason, checkpoint=str(target.path),
                        adapter_dtype=trainer.adapter_dtype_name, loss_scaling=trainer.precision.scaler is not None)
    if trainer.monitor is not None:
        trainer.monitor.on_restart(trainer)


def _adapter_dtype_changed(trainer) -> bool:
    import torch

    wanted = torch.bfloat16 if trainer.adapter_dtype_name == "bf16" else torch.float32
    return any(p.dtype != wanted for p in trainer.params)


def set_aside_newer(trainer, step: int) -> None:
    """Checkpoints after the one a restart goes back to belong to the abandoned branch: moved aside."""
    if trainer.is_main:
        moved = ckpt.set_aside_after(trainer.run_dir.checkpoints, step, trainer.attempt)
        if moved:
            trainer.notice(f"{len(moved)} checkpoint(s) after step {step} moved to "
                           f"checkpoints/{ckpt.SUPERSEDED}/attempt-{trainer.attempt}")
    trainer.accelerator.wait_for_everyone()


def adapter_dtype_under(precision: str, adapter_dtype: str) -> str:
    """Pure-bf16 adapters only make sense under bf16: under any other precision they go back to fp32."""
    return "fp32" if precision != "bf16" and adapter_dtype == "bf16" else adapter_dtype


# ---------------------------------------------------------------- the resume plan

@dataclass
class ResumePlan:
    precision: str
    adapter_dtype: str
    learning_rate: float | None  # the rate to continue with; None when there is no checkpoint
    notices: list[str]


def pick_resume_checkpoint(trainer) -> ckpt.CheckpointInfo | None:
    """The newest complete checkpoint that fits this config; damaged ones are skipped, with reasons."""
    damaged = []

    def skipped(path, reason: str) -> None:
        damaged.append(path.name)
        trainer.notice(f"skipping checkpoint {path.name}: {reason}")

    available = ckpt.list_complete(trainer.run_dir.checkpoints, on_skip=skipped) if trainer.is_main else []
    available, damaged = trainer.runtime.share_from_main((available, damaged))
    chosen, notices = choose_resume_checkpoint(
        available, damaged, checkpoints=trainer.run_dir.checkpoints, world_size=trainer.world_size,
        current_identity=trainer.family.identity(trainer.config, trainer.tokenizer) if available else {})
    for notice in notices:
        trainer.notice(notice)
    return chosen


def choose_resume_checkpoint(available: list, damaged: list, *, checkpoints, current_identity: dict,
                             world_size: int) -> tuple[ckpt.CheckpointInfo | None, list[str]]:
    """The newest complete checkpoint that fits this config (with notices); None when the run never saved one.

    Raises UserInputError when every checkpoint is damaged or the config changes what it was trained with.
    """
    from loratui.model.loading import identity_mismatches

    if not available and not damaged:
        return None, ["nothing to resume: the run stopped before its first checkpoint, so it starts from step 0"]
    if not available:
        raise UserInputError(Problem(str(checkpoints), "no complete checkpoint to resume from"))
    newest = available[0]
    changed = identity_mismatches(newest.state.get("identity", {}), current_identity)
    if changed:
        raise UserInputError(Problem(str(newest.path), "cannot resume: the config changes what the "
                                     "checkpoint was trained with (" + "; ".join(changed) + "). Learning "
                                     "rate and precision may change; for anything else start a new run "
                                     "(--set run.name=...)"))
    notices = []
    if newest.state.get("world_size", 1) != world_size:
        notices.append(f"resuming a {newest.state.get('world_size')}-process checkpoint with "
                       f"{world_size} process(es): the data order will differ")
    return newest, notices


def kept_precision(resume_from: ckpt.CheckpointInfo | None, capabilities) -> str | None:
    """The precision a resume under train.precision = "advise" keeps: its checkpoint's, if this machine runs it."""
    from loratui.hardware import UNSUPPORTED

    kept = resume_from.state.get("precision") if resume_from is not None else None
    return None if kept is None or capabilities.support.get(kept) == UNSUPPORTED else kept


def plan_start(config, resume_from: ckpt.CheckpointInfo | None, capabilities, *, precision: str,
               adapter_dtype: str, advice: str | None) -> ResumePlan:
    """The precision, adapter dtype and learning rate this start trains with, and the notices that say why.

    `precision` is train.precision resolved for this machine ("advise" stays "advise");
    `advice` the advisor's choice, measured before the trainer was built (entry.py).
    """
    notices = []
    if precision == "advise":
        precision = _advised(resume_from, capabilities, advice, notices)
    if resume_from is None:
        return ResumePlan(precision, adapter_dtype, None, notices)
    state = TrainState.from_dict(resume_from.state)
    carried = _carried_precision(config, state, capabilities, precision)
    if carried:
        notices.append(f"continuing in {carried}, the precision this run was restarted with "
                       f"(train.precision = {config.train.precision!r} would start in {precision})")
        precision, adapter_dtype = carried, adapter_dtype_under(carried, adapter_dtype)
    configured = config.train.learning_rate
    learning_rate = float(state.learning_rate)
    if (state.config_learning_rate if state.config_learning_rate is not None else configured) != configured:
        # Only an edit of the config overrides the rate in effect, which a restart (lower_lr) may have set.
        notices.append(f"train.learning_rate changed to {configured:g} for this resume (it was {learning_rate:g})")
        learning_rate = configured
    if state.config_max_steps is not None and state.config_max_steps != config.train.max_steps:
        notices.append(f"train.max_steps is {config.train.max_steps} for this resume (it was "
                       f"{state.config_max_steps}): the run trains to step {config.train.max_steps}")
    return ResumePlan(precision, adapter_dtype, learning_rate, notices)


def _advised(resume_from, capabilities, advice: str | None, notices: list[str]) -> str:
    """train.precision = "advise": the advisor's choice for a new run; a resumed run keeps its precision.

    Measuring again on a resume (to train longer, say) would take minutes only to be
    overruled by the checkpoint's precision, which a run keeps (see _carried_precision).
    """
    kept = kept_precision(resume_from, capabilities)
    if kept is None:
        if advice is None:
            raise UserInputError(Problem("train.precision", '"advise" is measured by the command that starts '
                                         "the run (loratui run); this trainer was given no advice"))
        return advice
    notices.append(f'train.precision = "advise": continuing in {kept}, the precision of {resume_from.path.name}, '
                   f"without measuring again (the advisor runs when a run starts; to switch, set train.precision)")
    return kept


def _carried_precision(config, state: TrainState, capabilities, precision: str) -> str | None:
    """The precision a restart switched to, kept unless train.precision was changed for this resume.

    A restart from the dashboard or the autopilot (fp16 -> bf16 after overflows, say) is
    recorded in the checkpoint: resuming with the same config must not bring back the
    precision that failed.
    """
    from loratui.hardware import UNSUPPORTED

    carried = state.precision
    if state.config_precision != config.train.precision or carried == precision \
            or capabilities.support.get(carried) == UNSUPPORTED:
        return None
    return carried
