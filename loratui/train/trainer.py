"""The LoRA training loop, read top to bottom: run -> setup -> fit -> train_step -> publish_step.

`fit` polls commands and signals at the step boundary, runs one optimizer step,
publishes its figures and checkpoints when due. What it builds on lives beside
it: the setup builders (setup.py), run control between steps (run_control.py),
the Checkpointer (checkpoint.py), mixed precision (precision.py) and the model
family that loads, batches and counts for the model (loratui/model/families).

Multi-process runs (accelerate launch) run this same loop on every rank:
rank 0 alone publishes events and reads control.jsonl; commands and signals
are shared with every rank at each step boundary so that all ranks act at
the same step.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from loratui import checkpoint_files as ckpt
from loratui import faults
from loratui.config.schema import Config
from loratui.control import ControlReader
from loratui.errors import EXIT_OK, EXIT_TRAINING_FAILED, UserInputError
from loratui.events.bus import EventBus
from loratui.events.jsonl import next_attempt
from loratui.run_dir import PRIVATE_UMASK, RunDir
from loratui.train import run_control, setup
from loratui.train.checkpoint import Checkpointer, CheckpointNotWritten, Trainables, TrainState
from loratui.train.memory import PeakMemory, memory_figures
from loratui.train.precision import scale_tensor, setup_precision
from loratui.train.run_control import StopTraining
from loratui.train.signals import SignalWatcher


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
    carried: list[float] = field(default_factory=list)  # the monitor's device figures, in the same transfer


class Trainer:
    def __init__(self, config: Config, run_dir: RunDir, bus: EventBus, *, resume: bool = False,
                 monitor=None, advised_precision: str | None = None, attempt: int | None = None):
        """`advised_precision`: train.precision = "advise" as measured before this trainer (entry.py);
        `attempt`: the attempt number when the caller already published under it (a resume that advised first).
        """
        self.config, self.run_dir, self.bus, self.resume, self.monitor = config, run_dir, bus, resume, monitor
        self.advice, self.numbered_attempt = advised_precision, attempt
        self.signals = SignalWatcher()
        self.control = ControlReader(run_dir.control)
        self.step = self.attempt = 0
        self.paused = False
        self.last_saved_step: int | None = None
        self.last_loss: float | None = None
        self.precision_name = config.train.precision
        self.learning_rate = config.train.learning_rate
        self.adapter_dtype_name = config.train.adapter_dtype
        self.peak_memory: PeakMemory | None = None  # set in setup, before the model loads
        self.memory_estimate = None  # the planner's Estimate for this run, when it can size the model

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
            if isinstance(exc, UserInputError) and self.resume and self.is_main:
                self.run_dir.discard_pending_config()  # a refused resume leaves the run's config as it was
            return run_control.failure_exit(self.bus, exc, step=self.step)
        finally:
            self.cleanup()
            os.umask(previous_umask)

    def setup(self) -> None:
        """Runtime, data, resume plan, model, optimizer and precision, in the order each needs the last."""
        from loratui.hardware import detect, resolve_precision
        from loratui.model.families import family_for

        setup.quiet_libraries()
        self.runtime = runtime = setup.setup_runtime(self.config)
        # The names the monitor, the advisor and tests read.
        self.accelerator, self.device, self.device_type = runtime.accelerator, runtime.device, runtime.device.type
        self.rank, self.world_size, self.is_main = runtime.rank, runtime.world_size, runtime.is_main
        self.bus.enabled = self.is_main
        ckpt.clean_partials(self.run_dir.checkpoints) if self.is_main else None
        self.capabilities = detect(self.config.train.device)
        setup.refuse_what_this_machine_cannot_run(self.config, self.capabilities, runtime)
        if self.resume:
            # Numbered before this process publishes anything, so that all of its events carry
            # the new attempt (read later, the log's last line would be this process's own).
            self.attempt = self.numbered_attempt if self.numbered_attempt is not None \
                else next_attempt(self.run_dir.events)
            self.bus.attempt = self.attempt
        self.phase("loading_model", 0, 2)
        self.model_path = setup.setup_model_path(self.config, self.runtime, self.phase)
        self.family = family_for(self.model_path)
        if self.config.model.trust_remote_code:
            self.notice("model.trust_remote_code is on: code shipped with the model will run")
        data = setup.setup_data(self.config, self.family, self.model_path, self.runtime, self.phase)
        self.tokenizer, self.stream, self.data_report = data.tokenizer, data.stream, data.report
        self.bus.publish("data", **data.report.as_dict(), summary=data.report.summary())
        run_control.check_interrupted(self)
        resume_from = run_control.pick_resume_checkpoint(self) if self.resume else None
        plan = run_control.plan_start(self.config, resume_from, self.capabilities, advice=self.advice,
                                      precision=resolve_precision(self.config.train.precision, self.capabilities),
                                      adapter_dtype=self.adapter_dtype_name)
        if self.resume and self.is_main:
            self.run_dir.adopt_pending_config()  # the resume is accepted: its config is the run's now
        for notice in plan.notices:
            self.notice(notice)
        self.precision_name, self.adapter_dtype_name = plan.precision, plan.adapter_dtype
        self.peak_memory = PeakMemory(self.device)  # after the imports, before the model: what training holds
        self.load_model(self.precision_name)
        self.peak_memory.model_loaded(self.unwrapped_model)
        notice = self.family.configure_batches(self.stream, self.unwrapped_model, self.config.data)
        if notice:
            self.notice(notice)
        self.memory_estimate = setup.memory_estimate(self.config, self.model_path, self.precision_name)
        self.precision = setup_precision(self.precision_name, self.device_type, self.config.amp)
        self.checkpointer = Checkpointer(self.run_dir.checkpoints, self.runtime, keep=self.config.checkpoint.keep)
        if resume_from is not None:
            self.load_checkpoint(resume_from, learning_rate=plan.learning_rate)
        self.bus.publish("run_started", **setup.run_started_fields(self, resume_from))
        if self.monitor is not None:
            self.monitor.attach(self)
        if resume_from is None:
            # Step 0 is a checkpoint too: a fault in the first steps still has a state to
            # restart from with another precision or learning rate.
            self.save_checkpoint("start")

    def load_model(self, precision_name: str) -> None:
        """The LoRA model with its base weights in `precision_name`, and a fresh optimizer and schedule for it."""
        self.phase("loading_model", 1, 2)
        built = setup.setup_model(self.config, self.family, self.model_path, precision_name,
                                  self.adapter_dtype_name, self.runtime)
        self.model, self.params, self.base_dtype_name = built.model, built.params, built.base_dtype_name
        self.phase("loading_model", 2, 2)
        self.optimizer, self.scheduler = setup.setup_optimizer(self.config, self.params, self.learning_rate,
                                                               self.runtime)

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
            commands, signum = run_control.poll_commands_and_signals(self)
            if signum:
                run_control.stop_for_signal(self, signum)
            for command in commands:
                run_control.obey(self, command)
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
            batch = self.stream.next_batch()  # the family's forward kwargs, passed through untouched
            tokens += self.family.count_tokens(batch)
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            last = micro == accum - 1
            # DDP all-reduces gradients on every backward; only the last micro-batch needs it.
            with self.accelerator.no_sync(self.model) if not last else nullcontext():
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
        nonfinite = nonfinite_count([p.grad for p in self.params if p.grad is not None])
        loss_mean = loss_sum / accum
        if self.world_size > 1:
            loss_mean = self.accelerator.reduce(loss_mean, "mean")
            tokens = int(self.accelerator.reduce(torch.tensor(tokens, device=self.device), "sum"))
        scale = scale_tensor(scaler).to(loss_mean.device) if scaler else torch.zeros((), device=self.device)
        carried = self.monitor.carried_figures() if self.monitor is not None else None
        # The step's one host sync: every figure crosses to the CPU in a single transfer,
        # the monitor's device-side figures from the last update included.
        values = torch.stack([loss_mean.float(), torch.as_tensor(grad_norm, device=loss_mean.device).float(), scale,
                              torch.as_tensor(nonfinite, device=loss_mean.device).float()])
        if carried is not None:
            values = torch.cat([values, carried.to(values.device).float()])
        loss_value, norm_value, scale_value, nonfinite_value, *carried_values = values.tolist()
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
        if self.monitor is not None:
            self.monitor.after_update(self, self.step + 1, lr, skipped)
        return StepFigures(loss=loss_value, grad_norm=norm_value, scale=scale_value if scaler else None,
                           skipped=skipped, nonfinite_grads=int(nonfinite_value), tokens=tokens, lr=lr,
                           seconds=time.perf_counter() - started, carried=carried_values)

    def publish_step(self, figures: StepFigures) -> None:
        self.last_loss = figures.loss
        self.bus.publish("step", step=self.step, loss=figures.loss, grad_norm=figures.grad_norm, lr=figures.lr,
                         precision=self.precision_name, scale=figures.scale, skipped=figures.skipped,
                         nonfinite_grads=figures.nonfinite_grads, tokens=figures.tokens,
                         step_time_s=round(figures.seconds, 6),
                         tokens_per_s=round(figures.tokens / figures.seconds, 1) if figures.seconds > 0 else None,
                         epoch=self.stream.position.epoch, **memory_figures(self.device),
                         **self.family.step_figures(self.stream, figures.seconds))

    def save_checkpoint(self, reason: str) -> Path | None:
        """Write a complete checkpoint of everything needed to continue exactly from here."""
        if self.last_saved_step == self.step:
            return None  # this exact state is already saved
        try:
            path, removed = self.checkpointer.save(self.step, self.trainables(with_scaler=True), self.train_state)
        except CheckpointNotWritten as failure:
            return run_control.checkpoint_not_written(self, str(failure))
        self.last_saved_step = self.step
        if self.is_main:
            self.bus.publish("checkpoint", step=self.step, path=str(path), reason=reason, loss=self.last_loss,
                             removed=[p.name for p in removed])
        self.accelerator.wait_for_everyone()
        return path

    def load_checkpoint(self, info: ckpt.CheckpointInfo, *, learning_rate: float | None = None) -> None:
        """Restore the training state of a verified checkpoint into the current setup."""
        from loratui.data.dataset import DataPosition

        # A loss scale means something only to the precision that grew it.
        same_precision = info.state.get("precision") == self.precision_name
        state = self.checkpointer.load(info, self.trainables(with_scaler=same_precision))
        self.stream.position = DataPosition(state.data_position["epoch"], state.data_position["batch"])
        # This state is on disk already: a stop or signal right now must not save the step again.
        self.step = self.last_saved_step = info.step
        self.last_loss = state.loss
        self.learning_rate = learning_rate if learning_rate is not None else float(state.learning_rate)
        setup.set_peak_learning_rate(self.scheduler, self.learning_rate)

    def trainables(self, *, with_scaler: bool) -> Trainables:
        return Trainables(self.unwrapped_model, self.optimizer.optimizer, self.scheduler,
                          self.precision.scaler if with_scaler else None)

    def train_state(self) -> TrainState:
        return TrainState(step=self.step, attempt=self.attempt, precision=self.precision_name,
                          adapter_dtype=self.adapter_dtype_name, learning_rate=self.learning_rate,
                          config_learning_rate=self.config.train.learning_rate,
                          config_precision=self.config.train.precision,
                          config_max_steps=self.config.train.max_steps,
                          data_position={"epoch": self.stream.position.epoch, "batch": self.stream.position.batch},
                          world_size=self.world_size, loss=self.last_loss,
                          health=self.monitor.health_summary() if self.monitor is not None else None,
                          identity=self.family.identity(self.config, self.tokenizer), time=time.time())

    def finish(self, reason: str, failed: bool = False) -> None:
        """Write the final adapter and say how the run ended."""
        if failed:
            self.bus.publish("run_failed", step=self.step, error=reason, traceback=None)
            return
        if getattr(self, "model", None) is not None and self.step > 0:
            self.save_adapter()
        self.bus.publish("run_finished", step=self.step, reason=reason, adapter=str(self.run_dir.adapter),
                         **(self.peak_memory.outcome(self.memory_estimate) if self.peak_memory else {}))

    @property
    def unwrapped_model(self):
        return self.accelerator.unwrap_model(self.model)

    def save_adapter(self) -> None:
        if self.is_main:
            self.unwrapped_model.save_pretrained(self.run_dir.adapter)
        self.accelerator.wait_for_everyone()

    def cleanup(self) -> None:
        self.signals.uninstall()
        runtime = getattr(self, "runtime", None)
        if runtime is not None:
            runtime.accelerator.end_training()  # without it, ranks of a multi-process run may abort at exit

    def phase(self, name: str, done: int, total: int) -> None:
        self.bus.publish("phase", name=name, done=done, total=total)

    def notice(self, message: str) -> None:
        self.bus.publish("notice", step=self.step, message=message)


def nonfinite_count(tensors: list):
    """How many values of `tensors` are inf or NaN, as a device tensor, in three kernels for any number of them.

    x * 0 is 0 for a finite x and NaN otherwise, and the 0-norm counts the non-zero values (NaN
    among them); counted in fp32 whatever the gradients' dtype. A loop of isfinite and sum per
    tensor costs three kernels per tensor (about 2% of a small model's step on a CPU).
    """
    import torch

    if not tensors:
        return torch.zeros(())
    flags = torch._foreach_mul(tensors, 0.0)
    return torch.stack(torch._foreach_norm(flags, 0, dtype=torch.float32)).sum()
