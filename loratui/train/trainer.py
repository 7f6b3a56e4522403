"""The LoRA training loop: setup builders, one train step, fit, checkpoints, restart, cleanup.

Read `fit` top to bottom: poll commands and signals at the step boundary, run
one optimizer step, publish its figures, checkpoint when due. Everything a
person or the dashboard can do to a run (pause, save, stop, restart with a
new precision or learning rate, roll back) arrives as a command through
control.jsonl and is carried out here, between steps.

Multi-process runs (accelerate launch) run this same loop on every rank:
rank 0 alone publishes events and reads control.jsonl; commands and signals
are shared with every rank at each step boundary so that all ranks act at
the same step.
"""

from __future__ import annotations

import math
import os
import random
import time
import traceback
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from loratui import checkpoint_files as ckpt
from loratui import faults
from loratui.config.schema import Config, to_dict
from loratui.control import Command, ControlReader, Rejected
from loratui.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_TRAINING_FAILED, Problem, UserInputError
from loratui.events.bus import EventBus
from loratui.events.jsonl import next_attempt
from loratui.run_dir import PRIVATE_UMASK, RunDir
from loratui.train.memory import memory_figures
from loratui.train.precision import PrecisionSetup, scale_tensor, setup_precision
from loratui.train.signals import SignalWatcher


class StopTraining(Exception):
    """Ends `fit` early: a stop command, a signal, or a failed checkpoint with on_error = stop."""

    def __init__(self, reason: str, exit_code: int):
        super().__init__(reason)
        self.reason = reason
        self.exit_code = exit_code


@dataclass
class StepFigures:
    """What one optimizer step produced, read from the device in one transfer."""

    loss: float
    grad_norm: float
    scale: float | None
    skipped: bool
    nonfinite_grads: int
    tokens: int
    lr: float
    seconds: float


class Trainer:
    def __init__(self, config: Config, run_dir: RunDir, bus: EventBus, *, resume: bool = False,
                 monitor=None, advised_precision: str | None = None, attempt: int | None = None):
        """`advised_precision`: train.precision = "advise" resolved by whoever started the run (train/entry.py);
        `attempt`: the attempt number when the caller already published under it (a resume that advised first).
        """
        self.config = config
        self.run_dir = run_dir
        self.bus = bus
        self.resume = resume
        self.signals = SignalWatcher()
        self.control = ControlReader(run_dir.control)
        self.monitor = monitor
        self.step = 0
        self.attempt = 0
        self.paused = False
        self.last_saved_step: int | None = None
        self.last_loss: float | None = None
        self.precision_name = config.train.precision
        self.learning_rate = config.train.learning_rate
        self.adapter_dtype_name = config.train.adapter_dtype
        self.advice = advised_precision
        self.numbered_attempt = attempt
        self.stop_after_step = False

    # ------------------------------------------------------------------ run

    def run(self) -> int:
        """Train to the end; returns the exit code (0 done, 1 failed, 2 bad input, 128+N signal)."""
        self.signals.install()
        # Everything the run writes (checkpoints, the adapter, tracker logs) is private to the user.
        previous_umask = os.umask(PRIVATE_UMASK)
        try:
            self.setup()
            reason, code = self.fit()
            self.finish(reason)
            return code
        except StopTraining as stop:
            self.finish(stop.reason, failed=stop.exit_code == EXIT_TRAINING_FAILED)
            return stop.exit_code
        except Exception as exc:  # the run failed: say why, keep the last good checkpoint as it is
            if self.resume and self.is_main and isinstance(exc, UserInputError):
                self.run_dir.discard_pending_config()
            return failure_exit(self.bus, exc, step=self.step)
        finally:
            self.cleanup()
            os.umask(previous_umask)

    # ---------------------------------------------------------------- setup

    def setup(self) -> None:
        from loratui.hardware import detect, machine_problems, resolve_precision

        self.quiet_libraries()
        self.setup_accelerator()
        self.bus.enabled = self.is_main
        ckpt.clean_partials(self.run_dir.checkpoints) if self.is_main else None
        self.capabilities = detect(self.config.train.device)
        problems = machine_problems(self.config, self.capabilities)
        engine = self.accelerator.distributed_type.value
        if engine in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
            # This loop runs backward and the optimizer itself and saves the adapter from rank 0's
            # module: right for data parallelism, wrong for sharded or engine-driven training.
            problems.append(f"accelerate launch: {engine} is not supported by loratui's trainer (it trains data "
                            f"parallel); to watch FSDP or DeepSpeed training, add LoraTuiCallback to a Hugging "
                            f"Face Trainer script")
        if problems:
            raise UserInputError([Problem("config", p) for p in problems])
        if self.resume:
            # Numbered before this process publishes anything, so that all of its events carry
            # the new attempt (read later, the log's last line would be this process's own).
            self.attempt = self.numbered_attempt if self.numbered_attempt is not None \
                else next_attempt(self.run_dir.events)
            self.bus.attempt = self.attempt
        self.precision_name = resolve_precision(self.config.train.precision, self.capabilities)
        self.setup_tokenizer_and_data()
        self.check_interrupted()
        resume_from = self.pick_resume_checkpoint() if self.resume else None
        if self.resume and self.is_main:
            self.run_dir.adopt_pending_config()  # the resume is accepted: its config is the run's now
        if self.precision_name == "advise":
            self.precision_name = self.advised_precision(resume_from)
        if resume_from is not None:
            self.carry_over_precision(resume_from)
        self.setup_model(self.precision_name)
        self.setup_optimizer()
        self.precision = setup_precision(self.precision_name, self.device_type, self.config.amp)
        if resume_from is not None:
            self.load_checkpoint(resume_from, learning_rate=self.resume_learning_rate(resume_from))
        self.publish_run_started(resume_from)
        if self.monitor is not None:
            self.monitor.attach(self)
        if resume_from is None:
            # Step 0 is a checkpoint too: a fault in the first steps still has a state to
            # restart from with another precision or learning rate.
            self.save_checkpoint("start")

    def quiet_libraries(self) -> None:
        """transformers' own progress bars and chatter would interleave with our lines."""
        import warnings

        import transformers

        # peft still calls a transformers API deprecated in v5; the warning says nothing to users.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    def setup_accelerator(self) -> None:
        import torch
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        from loratui.hardware import runs_on_cpu

        # Mixed precision stays "no": loratui runs autocast and the scaler itself (see precision.py).
        self.accelerator = Accelerator(cpu=runs_on_cpu(self.config.train.device), mixed_precision="no")
        # accelerate names a CPU rank's device "cpu:0", which safetensors and torch.load cannot map to.
        self.device = torch.device("cpu") if self.accelerator.device.type == "cpu" else self.accelerator.device
        self.device_type = self.device.type
        self.rank = self.accelerator.process_index
        self.world_size = self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        set_seed(self.config.train.seed)

    def setup_tokenizer_and_data(self) -> None:
        from loratui.data.dataset import BatchStream, load_examples
        from loratui.model.loading import load_tokenizer, resolve_model_path

        self.phase("loading_model", 0, 2)
        # One process per machine builds or fetches the model first and the others then find it
        # cached: side by side they would race to move it into the cache.
        with self.local_main_first():
            self.model_path = resolve_model_path(self.config.model.name_or_path,
                                                 progress=lambda name, done, total: self.phase(name, done, total))
        if self.config.model.trust_remote_code:
            self.notice("model.trust_remote_code is on: code shipped with the model will run")
        self.tokenizer = load_tokenizer(self.model_path, trust_remote_code=self.config.model.trust_remote_code)
        data = self.config.data
        examples, report = load_examples(
            data.path, data.format, self.tokenizer, max_length=data.max_length, on_too_long=data.on_too_long,
            on_bad_row=data.on_bad_row, progress=lambda done, total: self.phase("tokenizing", done, total))
        self.data_report = report
        self.bus.publish("data", **report.as_dict(), summary=report.summary())
        self.stream = BatchStream(examples, self.config.train.batch_size, seed=self.config.train.seed,
                                  shuffle=data.shuffle, pad_id=self.tokenizer.pad_token_id,
                                  rank=self.rank, world_size=self.world_size)

    def setup_model(self, precision_name: str) -> None:
        """The base model in the precision's dtype, with LoRA adapters in adapter_dtype."""
        import torch
        from loratui.model.loading import add_lora, load_base_model
        from loratui.precision_facts import DTYPES

        self.phase("loading_model", 1, 2)
        base = load_base_model(self.model_path, getattr(torch, DTYPES[precision_name]),
                               trust_remote_code=self.config.model.trust_remote_code)
        # LoRA init must be the same on every rank and for every precision: seed it.
        torch.manual_seed(self.config.train.seed)
        adapter_dtype = torch.bfloat16 if self.adapter_dtype_name == "bf16" else torch.float32
        model = add_lora(base, self.config.lora, adapter_dtype=adapter_dtype)
        model.to(self.device)
        model.train()
        self.base_dtype_name = precision_name
        self.model = self.accelerator.prepare_model(model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.phase("loading_model", 2, 2)
        if self.rank:
            torch.manual_seed(self.config.train.seed + self.rank)  # distinct dropout per rank

    def setup_optimizer(self) -> None:
        import torch
        from transformers import get_scheduler

        train = self.config.train
        optimizer = torch.optim.AdamW(self.params, lr=self.learning_rate, weight_decay=train.weight_decay)
        self.optimizer = self.accelerator.prepare_optimizer(optimizer)
        scheduler_name = {"constant": "constant_with_warmup"}.get(train.lr_scheduler, train.lr_scheduler)
        kwargs = {} if scheduler_name == "constant_with_warmup" else {"num_training_steps": train.max_steps}
        self.scheduler = get_scheduler(scheduler_name, self.optimizer.optimizer, num_warmup_steps=train.warmup_steps,
                                       **kwargs)

    @property
    def unwrapped_model(self):
        return self.accelerator.unwrap_model(self.model)

    # ------------------------------------------------------------------ fit

    def fit(self) -> tuple[str, int]:
        """Train until max_steps; returns why it ended and the exit code."""
        max_steps = self.config.train.max_steps
        while self.step < max_steps:
            self.at_step_boundary()
            figures = self.train_step()
            self.step += 1
            self.publish_step(figures)
            if self.monitor is not None:
                self.monitor.after_step(self, figures)
            if self.step % self.config.checkpoint.every_steps == 0 and self.step < max_steps:
                self.save_checkpoint("interval")
        self.save_checkpoint("end")
        return "completed", EXIT_OK

    def at_step_boundary(self) -> None:
        """Obey commands and signals; between steps is the only place the run changes course."""
        while True:
            commands, signum = self.poll_commands_and_signals()
            if signum:
                self.stop_for_signal(signum)
            for command in commands:
                self.obey(command)
            if not self.paused:
                return
            time.sleep(0.2)

    def train_step(self) -> StepFigures:
        """One optimizer step over grad_accum micro-batches; one host sync for its figures."""
        import torch

        started = time.perf_counter()
        accum = self.config.train.grad_accum
        scaler = self.precision.scaler
        probe = self.monitor is not None and self.monitor.wants_probe(self, self.step + 1)
        loss_sum = torch.zeros((), device=self.device)
        tokens = 0
        for micro in range(accum):
            batch = self.stream.next_batch()
            tokens += int(batch["attention_mask"].sum())
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            last = micro == accum - 1
            # DDP all-reduces gradients on every backward; only the last micro-batch needs it.
            sync_context = self.accelerator.no_sync(self.model) if not last else nullcontext()
            with sync_context:
                with self.precision.autocast():
                    loss = self.model(**batch).loss
                faults.maybe_fail(self.step + 1)
                scaled = loss / accum
                (scaler.scale(scaled) if scaler else scaled).backward()
            loss_sum += loss.detach().float()
            if probe and last:
                self.monitor.probe_after_backward(self, batch)
        if scaler:
            scaler.unscale_(self.optimizer.optimizer)
        max_norm = self.config.train.max_grad_norm or math.inf
        grad_norm = self.accelerator.clip_grad_norm_(self.params, max_norm)
        nonfinite = sum((~torch.isfinite(p.grad)).sum() for p in self.params if p.grad is not None)
        loss_mean = loss_sum / accum
        if self.world_size > 1:
            loss_mean = self.accelerator.reduce(loss_mean, "mean")
            tokens = int(self.accelerator.reduce(torch.tensor(tokens, device=self.device), "sum"))
        scale = scale_tensor(scaler).to(loss_mean.device) if scaler else torch.zeros((), device=self.device)
        # The step's one host sync: every figure crosses to the CPU in a single transfer.
        loss_value, norm_value, scale_value, nonfinite_value = torch.stack(
            [loss_mean.float(), torch.as_tensor(grad_norm, device=loss_mean.device).float(), scale,
             torch.as_tensor(nonfinite, device=loss_mean.device).float()]).tolist()
        # Non-finite gradients never reach the weights, in any precision: the scaler's rule
        # (skip the step) applied to all, so a NaN cannot poison the adapter.
        skipped = not math.isfinite(norm_value)
        lr = self.scheduler.get_last_lr()[0]
        if probe:
            self.monitor.probe_before_update(self)
        if not skipped:
            self.optimizer.step()
        if scaler:
            scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if not skipped:
            self.scheduler.step()  # the schedule follows applied updates, not skipped ones
        if probe:
            self.monitor.probe_after_update(self)
        return StepFigures(loss=loss_value, grad_norm=norm_value, scale=scale_value if scaler else None,
                           skipped=skipped, nonfinite_grads=int(nonfinite_value), tokens=tokens, lr=lr,
                           seconds=time.perf_counter() - started)

    def publish_step(self, figures: StepFigures) -> None:
        self.last_loss = figures.loss
        self.bus.publish("step", step=self.step, loss=figures.loss, grad_norm=figures.grad_norm, lr=figures.lr,
                         precision=self.precision_name, scale=figures.scale, skipped=figures.skipped,
                         nonfinite_grads=figures.nonfinite_grads, tokens=figures.tokens,
                         step_time_s=round(figures.seconds, 6),
                         tokens_per_s=round(figures.tokens / figures.seconds, 1) if figures.seconds > 0 else None,
                         epoch=self.stream.position.epoch, **memory_figures(self.device))

    # ------------------------------------------------------------- commands

    def poll_commands_and_signals(self) -> tuple[list, int | None]:
        """This step's commands and signal, the same on every rank."""
        commands = self.control.poll() if self.is_main else []
        signum = self.signals.received
        if self.world_size == 1:
            return commands, signum
        import torch
        import torch.distributed as dist
        from accelerate.utils import broadcast_object_list

        flags = torch.tensor([signum or 0, len(commands)], device=self.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        signum = int(flags[0]) or None
        if int(flags[1]):
            shared = [commands]
            broadcast_object_list(shared, from_process=0)
            commands = shared[0]
        return commands, signum

    def obey(self, command: Command | Rejected) -> None:
        if isinstance(command, Rejected):
            self.bus.publish("control", step=self.step, cmd=None, accepted=False,
                             message=f"ignored: {command.reason}", line=command.line[:200])
            return
        ack = dict(step=self.step, cmd=command.cmd, args=command.args, id=command.id)
        if command.cmd == "pause":
            self.paused = True
            self.bus.publish("control", **ack, accepted=True, message="paused")
        elif command.cmd == "resume":
            self.paused = False
            self.bus.publish("control", **ack, accepted=True, message="resumed")
        elif command.cmd == "save":
            self.bus.publish("control", **ack, accepted=True, message="saving a checkpoint")
            self.save_checkpoint("command")
        elif command.cmd == "stop":
            self.bus.publish("control", **ack, accepted=True, message="stopping after a checkpoint")
            self.save_checkpoint("stop")
            raise StopTraining(command.args.get("reason") or "stopped by command", EXIT_OK)
        elif command.cmd == "restart":
            try:
                target = self.restart_target(command.args.get("from_step"))
            except ValueError as exc:
                self.bus.publish("control", **ack, accepted=False, message=str(exc))
                return
            self.bus.publish("control", **ack, accepted=True, message=f"restarting from step {target.step}")
            self.paused = False
            self.restart(target, precision=command.args.get("precision"),
                         learning_rate=command.args.get("learning_rate"),
                         lr_factor=command.args.get("lr_factor"),
                         reason=command.args.get("reason") or "command")

    def stop_for_signal(self, signum: int) -> None:
        from loratui.train.signals import EXIT_CODES

        import signal as signal_module

        name = signal_module.Signals(signum).name
        self.notice(f"{name} received: saving a checkpoint and stopping")
        self.save_checkpoint("signal")
        raise StopTraining(f"stopped by {name}", EXIT_CODES[signum])

    def check_interrupted(self) -> None:
        """A signal during loading: nothing to save yet, stop before the long work."""
        signum = self.signals.received
        if self.world_size > 1:
            # Every rank stops here or none does: a rank that went on alone would wait forever in
            # the model's first collective.
            import torch
            import torch.distributed as dist

            flag = torch.tensor([signum or 0], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            signum = int(flag) or None
        if signum:
            import signal as signal_module

            from loratui.train.signals import EXIT_CODES

            name = signal_module.Signals(signum).name
            raise StopTraining(f"stopped by {name} while loading", EXIT_CODES[signum])

    # -------------------------------------------------------------- restart

    def restart_target(self, from_step: int | None) -> ckpt.CheckpointInfo:
        available = ckpt.list_complete(self.run_dir.checkpoints) if self.is_main else []
        available = self.share_from_main(available)
        if not available:
            raise ValueError("no complete checkpoint to restart from")
        if from_step is None:
            return available[0]
        for info in available:
            if info.step == from_step:
                return info
        steps = ", ".join(str(info.step) for info in available)
        raise ValueError(f"no complete checkpoint at step {from_step} (available: {steps})")

    def restart(self, target: ckpt.CheckpointInfo, *, precision: str | None = None,
                learning_rate: float | None = None, lr_factor: float | None = None, reason: str = "") -> None:
        """Go back to a checkpoint, change what was asked, and go on as the next attempt.

        The base weights are reloaded only when their dtype changes; the adapter,
        optimizer state, schedule, RNG and data position come from the checkpoint.
        """
        if self.is_main:
            moved = ckpt.set_aside_after(self.run_dir.checkpoints, target.step, self.attempt)
            if moved:
                self.notice(f"{len(moved)} checkpoint(s) after step {target.step} moved to "
                            f"checkpoints/{ckpt.SUPERSEDED}/attempt-{self.attempt}")
        self.accelerator.wait_for_everyone()
        new_precision = precision or self.precision_name
        if new_precision != "bf16" and self.adapter_dtype_name == "bf16":
            self.adapter_dtype_name = "fp32"  # pure-bf16 adapters only make sense under bf16
        if new_precision != self.base_dtype_name or self._adapter_dtype_changed():
            self.accelerator.free_memory()
            self.model = self.optimizer = None
            self.setup_model(new_precision)
            self.setup_optimizer()
        self.precision_name = new_precision
        self.precision = setup_precision(new_precision, self.device_type, self.config.amp)
        self.attempt += 1
        self.bus.attempt = self.attempt
        if learning_rate is not None:
            new_lr = float(learning_rate)
        elif lr_factor is not None:
            new_lr = self.learning_rate * float(lr_factor)
        else:
            new_lr = self.learning_rate  # a restart changes only what it is asked to change
        self.load_checkpoint(target, learning_rate=new_lr)
        self.bus.publish("restart", step=self.step, from_step=target.step, precision=self.precision_name,
                         learning_rate=self.learning_rate, reason=reason, checkpoint=str(target.path),
                         adapter_dtype=self.adapter_dtype_name)
        if self.monitor is not None:
            self.monitor.on_restart(self)

    def _adapter_dtype_changed(self) -> bool:
        import torch

        wanted = torch.bfloat16 if self.adapter_dtype_name == "bf16" else torch.float32
        return any(p.dtype != wanted for p in self.params)

    # ---------------------------------------------------------- checkpoints

    def save_checkpoint(self, reason: str) -> Path | None:
        """Write a complete checkpoint of everything needed to continue exactly from here."""
        if self.last_saved_step == self.step:
            return None  # this exact state is already saved
        checkpoints = self.run_dir.checkpoints
        staging = ckpt.partial_dir(checkpoints, self.step)
        # Each stage runs on the ranks it concerns, then every rank learns whether any of
        # them failed, so a full disk on one rank can never leave the others waiting.
        stages = (lambda: ckpt.begin(checkpoints, self.step) if self.is_main else None,
                  lambda: ckpt.write_torch(self.rng_state(), staging / f"rng-rank{self.rank}.pt"),
                  lambda: self.write_checkpoint_files(staging) if self.is_main else None)
        for stage in stages:
            error = self.first_error_on_any_rank(_attempt(stage))
            if error is not None:
                return self.checkpoint_failed(staging, error)
        path = checkpoints / ckpt.checkpoint_name(self.step)
        self.last_saved_step = self.step
        if self.is_main:
            removed = ckpt.apply_retention(checkpoints, self.config.checkpoint.keep, protect=path)
            self.bus.publish("checkpoint", step=self.step, path=str(path), reason=reason, loss=self.last_loss,
                             removed=[p.name for p in removed])
        self.accelerator.wait_for_everyone()
        return path

    def write_checkpoint_files(self, staging: Path) -> None:
        from peft import get_peft_model_state_dict

        adapter = get_peft_model_state_dict(self.unwrapped_model)
        ckpt.write_tensors({k: v.detach().cpu().contiguous() for k, v in adapter.items()},
                           staging / "adapter_model.safetensors")
        ckpt.write_torch(self.optimizer.optimizer.state_dict(), staging / "optimizer.pt")
        ckpt.write_torch(self.scheduler.state_dict(), staging / "scheduler.pt")
        if self.precision.scaler is not None:
            ckpt.write_torch(self.precision.scaler.state_dict(), staging / "scaler.pt")
        from loratui.model.loading import model_identity

        state = {"step": self.step, "attempt": self.attempt, "precision": self.precision_name,
                 "adapter_dtype": self.adapter_dtype_name, "learning_rate": self.learning_rate,
                 "config_learning_rate": self.config.train.learning_rate,
                 "config_precision": self.config.train.precision,
                 "data_position": {"epoch": self.stream.position.epoch, "batch": self.stream.position.batch},
                 "world_size": self.world_size, "loss": _finite_or_none(self.last_loss),
                 "health": self.monitor.health_summary() if self.monitor is not None else None,
                 "identity": model_identity(self.config, self.tokenizer), "time": time.time()}
        ckpt.commit(staging, state, slow_hook=faults.slow_checkpoint_hook())

    def checkpoint_failed(self, staging: Path, error: str) -> None:
        import shutil

        if self.is_main:
            shutil.rmtree(staging, ignore_errors=True)
        on_error = self.config.checkpoint.on_error
        self.bus.publish("alert", step=self.step, kind="checkpoint_failed", severity="critical",
                         message=f"checkpoint at step {self.step} could not be written ({error}); the previous "
                                 f"checkpoint is intact",
                         suggestion="none", evidence={"error": error, "on_error": on_error})
        if on_error == "stop":
            raise StopTraining(f"checkpoint could not be written: {error}", EXIT_TRAINING_FAILED)
        return None

    def rng_state(self) -> dict:
        import numpy as np
        import torch

        numpy_state = np.random.get_state()
        return {"python": random.getstate(),
                "numpy": {"kind": numpy_state[0], "keys": torch.from_numpy(numpy_state[1].copy()),
                          "pos": int(numpy_state[2]), "has_gauss": int(numpy_state[3]),
                          "cached_gaussian": float(numpy_state[4])},
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def set_rng_state(self, state: dict) -> None:
        import numpy as np
        import torch

        random.setstate(state["python"])
        numpy_state = state["numpy"]
        np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy(), numpy_state["pos"],
                             numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    def load_checkpoint(self, info: ckpt.CheckpointInfo, *, learning_rate: float | None = None) -> None:
        """Restore the training state of a verified checkpoint into the current setup."""
        import torch
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        path = info.path
        adapter = load_file(str(path / "adapter_model.safetensors"), device=str(self.device))
        set_peft_model_state_dict(self.unwrapped_model, adapter)
        self.optimizer.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True,
                                                            map_location=self.device))
        self.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        if self.precision.scaler is not None and (path / "scaler.pt").is_file() \
                and info.state.get("precision") == self.precision_name:
            self.precision.scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
        rng_file = path / f"rng-rank{self.rank}.pt"
        if rng_file.is_file():
            self.set_rng_state(torch.load(rng_file, weights_only=True))
        position = info.state["data_position"]
        from loratui.data.dataset import DataPosition

        self.stream.position = DataPosition(position["epoch"], position["batch"])
        self.step = info.step
        # This state is on disk already: a stop or signal right now must not save the step again.
        self.last_saved_step = info.step
        self.last_loss = info.state.get("loss")
        self.set_learning_rate(learning_rate if learning_rate is not None else float(info.state["learning_rate"]))

    def set_learning_rate(self, learning_rate: float) -> None:
        """A new peak learning rate; the schedule's shape (warmup, decay) carries on from where it is."""
        self.learning_rate = learning_rate
        scheduler = self.scheduler
        scheduler.base_lrs = [learning_rate for _ in scheduler.base_lrs]
        for group, factor in zip(scheduler.optimizer.param_groups, scheduler.lr_lambdas):
            group["initial_lr"] = learning_rate
            group["lr"] = learning_rate * factor(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]

    def pick_resume_checkpoint(self) -> ckpt.CheckpointInfo | None:
        """The newest complete checkpoint that fits this config; damaged ones are skipped, with reasons.

        None when the run never saved one (stopped or killed while loading): nothing was trained yet.
        """
        from loratui.model.loading import identity_mismatches, model_identity

        damaged = []

        def skipped(path: Path, reason: str) -> None:
            damaged.append(path.name)
            self.notice(f"skipping checkpoint {path.name}: {reason}")

        available = ckpt.list_complete(self.run_dir.checkpoints, on_skip=skipped) if self.is_main else []
        available, damaged = self.share_from_main((available, damaged))
        if not available and not damaged:
            self.notice("nothing to resume: the run stopped before its first checkpoint, so it starts from step 0")
            return None
        if not available:
            raise UserInputError(Problem(str(self.run_dir.checkpoints), "no complete checkpoint to resume from"))
        newest = available[0]
        recorded = newest.state.get("identity", {})
        current = model_identity(self.config, self.tokenizer)
        changed = identity_mismatches(recorded, current)
        if changed:
            raise UserInputError(Problem(str(newest.path), "cannot resume: the config changes what the "
                                         "checkpoint was trained with (" + "; ".join(changed) + "). Learning "
                                         "rate and precision may change; for anything else start a new run "
                                         "(--set run.name=...)"))
        if newest.state.get("world_size", 1) != self.world_size:
            self.notice(f"resuming a {newest.state.get('world_size')}-process checkpoint with "
                        f"{self.world_size} process(es): the data order will differ")
        return newest

    def carry_over_precision(self, info: ckpt.CheckpointInfo) -> None:
        """Keep the precision a restart switched to, unless train.precision was changed for this resume.

        A restart from the dashboard or the autopilot (fp16 -> bf16 after overflows, say) is
        recorded in the checkpoint: resuming with the same config must not bring back the
        precision that failed.
        """
        from loratui.hardware import UNSUPPORTED

        carried = info.state.get("precision")
        if info.state.get("config_precision") != self.config.train.precision or carried == self.precision_name \
                or self.capabilities.support.get(carried) == UNSUPPORTED:
            return
        self.notice(f"continuing in {carried}, the precision this run was restarted with "
                    f"(train.precision = {self.config.train.precision!r} would start in {self.precision_name})")
        self.precision_name = carried
        if carried != "bf16" and self.adapter_dtype_name == "bf16":
            self.adapter_dtype_name = "fp32"  # pure-bf16 adapters only make sense under bf16, as in restart

    def advised_precision(self, resume_from: ckpt.CheckpointInfo | None) -> str:
        """train.precision = "advise": the advisor's choice for a new run; a resumed run keeps its precision.

        Measuring again on a resume (to train longer, say) would take minutes only to be
        overruled by the checkpoint's precision, which a run keeps (see carry_over_precision).
        The advisor itself runs before this trainer is built (train/entry.py), never inside it.
        """
        kept = kept_precision(resume_from, self.capabilities)
        if kept is None:
            if self.advice is None:
                raise UserInputError(Problem("train.precision", '"advise" is measured by the command that starts '
                                             "the run (loratui run); this trainer was given no advice"))
            return self.advice
        self.notice(f'train.precision = "advise": continuing in {kept}, the precision of {resume_from.path.name}, '
                    f"without measuring again (the advisor runs when a run starts; to switch, set train.precision)")
        return kept

    def resume_learning_rate(self, info: ckpt.CheckpointInfo) -> float:
        """The config's learning rate if it was changed for this resume, else the checkpoint's.

        The checkpoint's rate is the one in effect, which a restart (lower_lr) may have
        changed since the config was written; only an edit of the config overrides it.
        """
        configured = self.config.train.learning_rate
        if info.state.get("config_learning_rate", configured) == configured:
            return float(info.state["learning_rate"])
        self.notice(f"train.learning_rate changed to {configured:g} for this resume "
                    f"(it was {float(info.state['learning_rate']):g})")
        return configured

    def publish_run_started(self, resumed_from) -> None:
        import accelerate
        import peft
        import torch
        import transformers

        import loratui
        import platform

        unwrapped = self.unwrapped_model
        total = sum(p.numel() for p in unwrapped.parameters())
        self.bus.publish(
            "run_started", step=self.step, precision=self.precision_name,
            requested_precision=self.config.train.precision, device=str(self.device),
            device_name=self.capabilities.device_name, world_size=self.world_size,
            versions={"loratui": loratui.__version__, "python": platform.python_version(),
                      "torch": torch.__version__, "transformers": transformers.__version__,
                      "peft": peft.__version__, "accelerate": accelerate.__version__},
            trainable_params=sum(p.numel() for p in self.params), total_params=total,
            loss_scaling=self.precision.scaler is not None, adapter_dtype=self.adapter_dtype_name,
            max_steps=self.config.train.max_steps, capabilities=self.capabilities.as_dict(),
            resumed_from=str(resumed_from.path) if resumed_from else None, config=to_dict(self.config),
            run_dir=str(self.run_dir.root), pid=os.getpid())

    def finish(self, reason: str, failed: bool = False) -> None:
        """Write the final adapter and say how the run ended."""
        if failed:
            self.bus.publish("run_failed", step=self.step, error=reason, traceback=None)
            return
        if getattr(self, "model", None) is not None and self.step > 0:
            self.save_adapter()
        self.bus.publish("run_finished", step=self.step, reason=reason, adapter=str(self.run_dir.adapter))

    def save_adapter(self) -> None:
        if self.is_main:
            self.unwrapped_model.save_pretrained(self.run_dir.adapter)
        self.accelerator.wait_for_everyone()

    def cleanup(self) -> None:
        self.signals.uninstall()
        accelerator = getattr(self, "accelerator", None)
        if accelerator is not None:
            accelerator.end_training()  # without it, ranks of a multi-process run may abort at exit

    # -------------------------------------------------------------- helpers

    @contextmanager
    def local_main_first(self):
        """Run the block on each machine's first process, then on the others.

        Unlike accelerate's main_process_first, the first process reaches the barrier even
        when the block fails, so the others never wait for it forever.
        """
        first = self.accelerator.is_local_main_process
        if not first:
            self.accelerator.wait_for_everyone()
        try:
            yield
        finally:
            if first:
                self.accelerator.wait_for_everyone()

    def share_from_main(self, value):
        """Rank 0's value on every rank (the value itself in a single-process run)."""
        if self.world_size == 1:
            return value
        from accelerate.utils import broadcast_object_list

        shared = [value]
        broadcast_object_list(shared, from_process=0)
        return shared[0]

    def first_error_on_any_rank(self, error: str | None) -> str | None:
        if self.world_size == 1:
            return error
        from accelerate.utils import gather_object

        return next((e for e in gather_object([error]) if e is not None), None)

    def phase(self, name: str, done: int, total: int) -> None:
        self.bus.publish("phase", name=name, done=done, total=total)

    def notice(self, message: str) -> None:
        self.bus.publish("notice", step=self.step, message=message)


def failure_exit(bus: EventBus, exc: Exception, *, step: int) -> int:
    """Say why the run cannot go on (run_failed); the exit code: 2 for bad input, 1 for anything else."""
    if isinstance(exc, UserInputError):
        bus.publish("run_failed", step=step, error=exc.render(), traceback=None, input_error=True)
        return EXIT_BAD_INPUT
    bus.publish("run_failed", step=step, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    return EXIT_TRAINING_FAILED


def kept_precision(resume_from: ckpt.CheckpointInfo | None, capabilities) -> str | None:
    """The precision a resume under train.precision = "advise" keeps: its checkpoint's, if this machine runs it."""
    from loratui.hardware import UNSUPPORTED

    kept = resume_from.state.get("precision") if resume_from is not None else None
    return None if kept is None or capabilities.support.get(kept) == UNSUPPORTED else kept


def _attempt(stage) -> str | None:
    """Run one stage of a checkpoint save; the error text if the disk refused it."""
    try:
        stage()
    except OSError as exc:
        return (exc.strerror or str(exc)) + (f": {exc.filename}" if getattr(exc, "filename", None) else "")
    return None


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
