"""loratui for a Hugging Face `transformers.Trainer` you already run: `LoraTuiCallback(run_dir)`.

    from loratui.integrations.transformers import LoraTuiCallback

    trainer = Trainer(..., callbacks=[LoraTuiCallback("runs/my-finetune")])

and `loratui watch runs/my-finetune` in another terminal. Any Trainer subclass
works (TRL's SFTTrainer, a fine-tuning script's own), in one process or under
`accelerate launch`/`torchrun` (rank 0 writes, every rank follows commands).

It writes the run directory's events.jsonl with the events loratui's own
trainer writes:
- `run_started`: effective precision, device, world size, versions, parameters;
- `step` per optimizer step: the RAW loss, that is the sum of what
  `Trainer.training_step` returned for the step's micro-batches, averaged over
  ranks (the Trainer's logged loss replaces a NaN or inf step by the running
  average and hides it); the gradient norm the Trainer computed (before
  clipping); the learning rate applied; the GradScaler's scale and whether the
  step was skipped (fp16); tokens and time;
- `health` every `probe_every` steps: non-finite gradients, updates lost to
  rounding, loss scale and skip rate, as far as the callback hooks can see;
- `checkpoint` on each save, `control` acknowledgements, `run_finished` or `run_failed`.

control.jsonl is followed at every step end: stop (a checkpoint, then stop), save,
pause and resume. restart is acknowledged as not supported: the Trainer owns its
loop, so stop and run the script again with `resume_from_checkpoint`.
"""

from __future__ import annotations

import atexit
import os
import platform
import sys
import time
import traceback
from pathlib import Path

from transformers import TrainerCallback

from loratui.config.schema import MonitorSection
from loratui.control import Command, ControlReader, Rejected
from loratui.events.bus import EventBus
from loratui.events.jsonl import JsonlSink, next_attempt
from loratui.train.memory import memory_figures
from loratui.gpu import GpuSampler
from loratui.run_dir import RunDir
from loratui.train.precision import scale_tensor

RESTART_UNSUPPORTED = ("restart is not supported under a Hugging Face Trainer, which runs its own loop: stop, then "
                       "run the script again with trainer.train(resume_from_checkpoint=...) and the new settings")


class LoraTuiCallback(TrainerCallback):
    def __init__(self, run_dir: str | os.PathLike, *, probe_every: int | None = None):
        self.run_dir = RunDir(Path(run_dir))
        self.thresholds = MonitorSection()
        self.probe_every = probe_every or self.thresholds.probe_every
        self.bus = EventBus(enabled=False)  # replaced on the rank that publishes
        self.control_reader: ControlReader | None = None
        self.trainer = None
        self.running = False
        self.paused = False
        self.stop_reason: str | None = None
        self.save_reason: str | None = None
        self.last_loss: float | None = None
        self.skipped_steps = 0
        self._restore: list[tuple] = []
        self._start_step()

    # ------------------------------------------------------------ lifecycle

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.trainer = trainer_calling(self)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.world_size = args.world_size
        # RANK too: launched on CPU without use_cpu=True, every rank trains alone as its own "rank 0".
        if state.is_world_process_zero and int(os.environ.get("RANK", "0")) == 0:
            self.run_dir.create()
            self.bus = EventBus(attempt=next_attempt(self.run_dir.events))
            self.bus.add_sink(JsonlSink(self.run_dir.events))
            self.bus.add_sink(GpuSampler(self.bus.publish))
            self.control_reader = ControlReader(self.run_dir.control)
        self._wrap(self.trainer, "training_step", self._recording_loss)
        self._wrap(self.trainer.accelerator, "clip_grad_norm_", self._recording_grad_norm)
        atexit.register(self._exited_early)
        self.running = True
        self._publish_run_started(args, state, model)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.running:
            self.bus.publish("run_finished", step=state.global_step, reason=self.stop_reason or "completed",
                             adapter=None, output_dir=args.output_dir)
            self._end()
        return control

    def _publish_run_started(self, args, state, model) -> None:
        import accelerate
        import peft
        import torch
        import transformers

        import loratui
        from loratui.hardware import detect

        caps = detect("cuda" if args.device.type == "cuda" else "cpu")
        scaler = self.trainer.accelerator.scaler
        adapter_dtype = "bf16" if self.params and self.params[0].dtype == torch.bfloat16 else "fp32"
        self.bus.publish(
            "run_started", step=state.global_step, precision=effective_precision(self.trainer.accelerator, model),
            requested_precision=self.trainer.accelerator.mixed_precision, device=str(args.device),
            device_name=caps.device_name, world_size=self.world_size,
            versions={"loratui": loratui.__version__, "python": platform.python_version(),
                      "torch": torch.__version__, "transformers": transformers.__version__,
                      "peft": peft.__version__, "accelerate": accelerate.__version__},
            trainable_params=sum(p.numel() for p in self.params),
            total_params=sum(p.numel() for p in model.parameters()), loss_scaling=scaler is not None,
            adapter_dtype=adapter_dtype, max_steps=state.max_steps, capabilities=caps.as_dict(),
            resumed_from=f"checkpoint-{state.global_step}" if state.global_step else None,
            config={"run": {"name": self.run_dir.root.name},
                    "train": {"learning_rate": args.learning_rate, "max_steps": state.max_steps,
                              "batch_size": args.per_device_train_batch_size,
                              "grad_accum": args.gradient_accumulation_steps,
                              "max_grad_norm": args.max_grad_norm, "seed": args.seed},
                    "training_arguments": args.to_dict()},
            trainer=type(self.trainer).__name__, run_dir=str(self.run_dir.root), pid=os.getpid())

    def _fail(self, error: str, trace: str | None) -> None:
        if self.running:
            self.bus.publish("run_failed", step=self.trainer.state.global_step, error=error, traceback=trace)
            self._end()

    def _exited_early(self) -> None:
        """The process is exiting inside trainer.train(): an error outside a training step, or an interrupt."""
        error = getattr(sys, "last_value", None)
        self._fail(f"{type(error).__name__}: {error}" if error is not None
                   else "the process exited before the Trainer finished", None)

    def _end(self) -> None:
        self.running = False
        atexit.unregister(self._exited_early)
        for owner, name, own_attribute, original in reversed(self._restore):
            if own_attribute:
                setattr(owner, name, original)
            else:
                delattr(owner, name)
        self._restore.clear()
        self.bus.close()

    # ------------------------------------------------------------ one step

    def _start_step(self) -> None:
        self.losses, self.tokens = [], []
        self.grad_norm = self.scale = self.lr = self.nonfinite = self.stale = None
        self.snapshot = None
        self.started = time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        self._start_step()
        return control

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        """Gradients are final here (unscaled by the Trainer's clipping under fp16)."""
        import torch

        self.lr = optimizer.param_groups[0]["lr"]
        scaler = self.trainer.accelerator.scaler
        # The scale this step runs with, as a device tensor: read with the step's other figures.
        self.scale = scale_tensor(scaler).clone() if scaler is not None else None
        grads = [p.grad for p in self.params if p.grad is not None]
        self.nonfinite = sum((~torch.isfinite(g)).sum() for g in grads) if grads else None
        if (state.global_step + 1) % self.probe_every == 0:
            self.snapshot = [(p, p.detach().clone(), p.grad != 0) for p in self.params if p.grad is not None]
        return control

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.snapshot is not None:
            # An element with a gradient that did not move lost its update to rounding (bf16 weights).
            moving = sum(mask.sum() for _, _, mask in self.snapshot)
            unmoved = sum(((p.detach() == before) & mask).sum() for p, before, mask in self.snapshot)
            self.stale = (unmoved, moving)
            self.snapshot = None
        return control

    def on_step_end(self, args, state, control, **kwargs):
        import torch

        device = args.device
        zero = torch.zeros((), device=device)
        figures = torch.stack([sum(self.losses, zero).float(), sum(self.tokens, zero).float(),
                               (self.nonfinite if self.nonfinite is not None else zero).float()])
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(figures)  # the global loss, tokens and non-finite count
        scaler = self.trainer.accelerator.scaler
        # A skipped step is one whose scale the GradScaler backed off. accelerate's own flag
        # (optimizer_step_was_skipped) misses skips of fused optimizers, the Trainer's default.
        scales = torch.stack([self.scale, scale_tensor(scaler)]) if self.scale is not None else zero.new_zeros(0)
        # The step's one host sync: every figure crosses to the CPU in a single transfer.
        loss_sum, tokens, nonfinite, *scale_figures = torch.cat([figures, scales.to(device)]).tolist()
        loss = loss_sum / self.world_size
        scale = scale_figures[0] if scale_figures else None
        skipped = bool(scale_figures) and scale_figures[1] < scale_figures[0]
        self.skipped_steps += skipped
        self.last_loss = loss
        seconds = time.perf_counter() - self.started
        step = state.global_step
        self.bus.publish(
            "step", step=step, loss=loss, grad_norm=float(self.grad_norm) if self.grad_norm is not None else None,
            lr=self.lr, precision=effective_precision(self.trainer.accelerator, self.trainer.model),
            scale=scale, skipped=skipped, nonfinite_grads=int(nonfinite), tokens=int(tokens),
            step_time_s=round(seconds, 6), tokens_per_s=round(tokens / seconds, 1) if seconds > 0 else None,
            epoch=state.epoch, **memory_figures(device))
        if self.stale is not None:
            self._publish_health(step, int(nonfinite), scale)
        self._follow_commands(control)
        return control

    def _publish_health(self, step: int, nonfinite: int, scale: float | None) -> None:
        unmoved, moving = (int(v) for v in self.stale)
        stale_share = unmoved / moving if moving else 0.0
        skip_rate = self.skipped_steps / step if step else 0.0
        checks = {
            "nonfinite_grads": {"status": "alert" if nonfinite else "ok", "value": nonfinite,
                                "summary": "non-finite gradient values this step"},
            "stale_update": {"status": "alert" if stale_share > self.thresholds.stale_max else "ok",
                             "value": stale_share,
                             "summary": f"{unmoved} of {moving} adapter values with a gradient did not move"},
            "skip_rate": {"status": "warn" if skip_rate > self.thresholds.skip_rate_max else "ok",
                          "value": skip_rate, "summary": f"{self.skipped_steps} of {step} steps skipped"},
            "loss_scale": ({"status": "alert" if scale < 1 else "ok", "value": scale,
                            "summary": "below 1: values overflow even unscaled" if scale < 1 else "fp16 scale"}
                           if scale is not None else {"status": "n/a", "value": None, "summary": "no loss scaling"}),
        }
        self.bus.publish("health", step=step, checks=checks, source="transformers callback")

    def on_save(self, args, state, control, **kwargs):
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self.bus.publish("checkpoint", step=state.global_step, path=str(path.resolve()),
                         reason=self.save_reason or "interval", loss=self.last_loss, removed=[])
        self.save_reason = None
        return control

    # ------------------------------------------------------------ recording

    def _wrap(self, owner, name: str, wrapper) -> None:
        """Replace `owner.name` for this run with a recording wrapper; undone when the run ends."""
        original = getattr(owner, name)
        self._restore.append((owner, name, name in vars(owner), original))
        setattr(owner, name, wrapper(original))

    def _recording_loss(self, training_step):
        def recorded(model, inputs, *args, **kwargs):
            try:
                loss = training_step(model, inputs, *args, **kwargs)
            except Exception as exc:
                self._fail(f"{type(exc).__name__}: {exc}", traceback.format_exc())
                raise
            self.losses.append(loss.detach())
            mask = inputs.get("attention_mask") if hasattr(inputs, "get") else None
            if mask is not None:
                self.tokens.append(mask.sum())
            return loss

        return recorded

    def _recording_grad_norm(self, clip_grad_norm_):
        def recorded(*args, **kwargs):
            self.grad_norm = clip_grad_norm_(*args, **kwargs)
            return self.grad_norm

        return recorded

    # ------------------------------------------------------------- commands

    def _follow_commands(self, control) -> None:
        while True:
            for command in self._shared_commands():
                self._obey(command, control)
            if not self.paused:
                return
            time.sleep(0.2)

    def _shared_commands(self) -> list:
        """The commands rank 0 read, on every rank: each rank must stop or save at the same step."""
        commands = self.control_reader.poll() if self.control_reader is not None else []
        if self.world_size == 1:
            return commands
        import torch
        import torch.distributed as dist
        from accelerate.utils import broadcast_object_list

        count = torch.tensor([len(commands)], device=self.trainer.args.device)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        if int(count):
            shared = [commands]
            broadcast_object_list(shared, from_process=0)
            commands = shared[0]
        return commands

    def _obey(self, command: Command | Rejected, control) -> None:
        step = self.trainer.state.global_step
        if isinstance(command, Rejected):
            self.bus.publish("control", step=step, cmd=None, accepted=False, message=f"ignored: {command.reason}",
                             line=command.line[:200])
            return
        ack = dict(step=step, cmd=command.cmd, args=command.args, id=command.id)
        if command.cmd == "stop":
            control.should_save = control.should_training_stop = True
            self.save_reason, self.paused = "stop", False
            self.stop_reason = command.args.get("reason") or "stopped by command"
            self.bus.publish("control", **ack, accepted=True, message="stopping after a checkpoint")
        elif command.cmd == "save":
            control.should_save = True
            self.save_reason = "command"
            self.bus.publish("control", **ack, accepted=True, message="saving a checkpoint")
        elif command.cmd == "pause":
            self.paused = True
            self.bus.publish("control", **ack, accepted=True, message="paused")
        elif command.cmd == "resume":
            self.paused = False
            self.bus.publish("control", **ack, accepted=True, message="resumed")
        else:
            self.bus.publish("control", **ack, accepted=False, message=RESTART_UNSUPPORTED)


def trainer_calling(callback) -> object:
    """The Trainer whose callback handler is calling `callback`.

    Callback hooks get the model and optimizer but not the Trainer, and the raw
    per-step loss exists only as `Trainer.training_step`'s return value. So the
    callback looks for the Trainer that holds it among its callers' frames: that
    finds any subclass, however it was constructed.
    """
    from transformers import Trainer

    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Trainer) and callback in candidate.callback_handler.callbacks:
            return candidate
        frame = frame.f_back
    raise RuntimeError("LoraTuiCallback works inside a transformers.Trainer: pass it in callbacks=[...] or "
                       "add it with trainer.add_callback(...)")


def effective_precision(accelerator, model) -> str:
    """The precision the forward pass computes in: accelerate's autocast, else the base weights' dtype."""
    import torch

    if accelerator.mixed_precision in ("fp16", "bf16", "fp8"):
        return accelerator.mixed_precision
    base = next((p.dtype for p in model.parameters() if not p.requires_grad and p.is_floating_point()),
                torch.float32)
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(base, "fp32")
