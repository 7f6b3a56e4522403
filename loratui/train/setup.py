"""Setup builders: the runtime, the data, the model and the optimizer; each returns what it builds.

Only Trainer.setup (and restart, for a new model) assigns what these return, so
each builder can be read, and tested, on its own.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

from loratui.precision_facts import DTYPES

Phase = Callable[[str, int, int], None]  # (name, done, total) -> a `phase` event


@dataclass
class Runtime:
    """Where this process trains: its accelerator, device and place among the ranks."""

    accelerator: Any
    device: Any  # torch.device
    rank: int
    world_size: int
    is_main: bool

    @property
    def device_type(self) -> str:
        return self.device.type

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


@dataclass
class Data:
    tokenizer: Any  # the family's processor: a tokenizer for text models
    stream: Any  # the family's batch stream: next_batch() -> forward kwargs, position
    report: Any  # data.dataset.DataReport


@dataclass
class TrainableModel:
    model: Any  # the LoRA model, prepared by accelerate (DDP-wrapped on several ranks)
    params: list  # the trainable (adapter) parameters
    base_dtype_name: str  # fp32 | bf16 | fp16: the dtype its base weights were loaded in


def quiet_libraries() -> None:
    """transformers' own progress bars and chatter would interleave with our lines."""
    import warnings

    from loratui.model.quantization import bitsandbytes_problem

    # First: peft imports bitsandbytes whenever it is installed, and a plain import of it asks the Hub
    # for a kernel; imported offline here, it is the module everyone gets. Where it cannot load, only a
    # quantized config needs it, and machine_problems says so.
    bitsandbytes_problem()
    import transformers

    # peft still calls a transformers API deprecated in v5; the warning says nothing to users.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def setup_runtime(config) -> Runtime:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from loratui.hardware import runs_on_cpu

    # Mixed precision stays "no": loratui runs autocast and the scaler itself (see precision.py).
    accelerator = Accelerator(cpu=runs_on_cpu(config.train.device), mixed_precision="no")
    # accelerate names a CPU rank's device "cpu:0", which safetensors and torch.load cannot map to.
    device = torch.device("cpu") if accelerator.device.type == "cpu" else accelerator.device
    set_seed(config.train.seed)
    return Runtime(accelerator, device, accelerator.process_index, accelerator.num_processes,
                   accelerator.is_main_process)


def refuse_what_this_machine_cannot_run(config, capabilities, runtime: Runtime) -> None:
    """Bad input before any loading: a precision or device this machine lacks, an engine this loop cannot drive."""
    from loratui.errors import Problem, UserInputError
    from loratui.hardware import machine_problems

    problems = machine_problems(config, capabilities)
    engine = runtime.accelerator.distributed_type.value
    if engine in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
        # This loop runs backward and the optimizer itself and saves the adapter from rank 0's
        # module: right for data parallelism, wrong for sharded or engine-driven training.
        problems.append(f"accelerate launch: {engine} is not supported by loratui's trainer (it trains data "
                        f"parallel); to watch FSDP or DeepSpeed training, add LoraTuiCallback to a Hugging "
                        f"Face Trainer script")
    if problems:
        raise UserInputError([Problem("config", p) for p in problems])


def setup_model_path(config, runtime: Runtime, phase: Phase) -> str:
    """The model's local directory (a built-in model is built, or found cached, first)."""
    from loratui.model.loading import resolve_model_path

    # One process per machine builds or fetches the model first and the others then find it
    # cached: side by side they would race to move it into the cache.
    with runtime.local_main_first():
        return resolve_model_path(config.model.name_or_path, progress=phase)


def setup_data(config, family, model_path: str, runtime: Runtime, phase: Phase) -> Data:
    """The family's tokenizer, the examples of [data] path, and this rank's stream of batches."""
    tokenizer = family.load_processor(model_path, trust_remote_code=config.model.trust_remote_code)
    examples, report = family.build_examples(config.data, tokenizer,
                                             progress=lambda done, total: phase("tokenizing", done, total))
    stream = family.batches(examples, tokenizer, batch_size=config.train.batch_size, seed=config.train.seed,
                            shuffle=config.data.shuffle, rank=runtime.rank, world_size=runtime.world_size)
    return Data(tokenizer, stream, report)


def setup_model(config, family, model_path: str, precision_name: str, adapter_dtype_name: str,
                runtime: Runtime) -> TrainableModel:
    """The base model in the precision's dtype (its linear layers quantized when model.quantization asks),
    with LoRA adapters in adapter_dtype."""
    import torch

    from loratui.model import quantization
    from loratui.model.loading import add_lora

    quantized = quantization.bnb_config(config.model.quantization, precision_name,
                                        double_quant=config.model.double_quant,
                                        keep_unquantized=[prefix for part, prefix in family.parts.items()
                                                          if part != "language_model" and prefix])
    base = family.load_model(model_path, getattr(torch, DTYPES[precision_name]),
                             trust_remote_code=config.model.trust_remote_code,
                             # bitsandbytes quantizes as it loads, on the device it is given
                             device_map={"": runtime.device} if quantized else None, quantization_config=quantized)
    if quantized:
        base = quantization.prepare_for_kbit_training(base, gradient_checkpointing=config.train.gradient_checkpointing)
    elif config.train.gradient_checkpointing:
        quantization.enable_gradient_checkpointing(base)
    # LoRA init must be the same on every rank and for every precision: seed it.
    torch.manual_seed(config.train.seed)
    adapter_dtype = torch.bfloat16 if adapter_dtype_name == "bf16" else torch.float32
    model = add_lora(base, config.lora, adapter_dtype=adapter_dtype, task_type=family.lora_task_type,
                     **family.lora_targets(config.lora, config.vision))
    family.prepare_model(model, config, precision_name, runtime.device_type)
    model.to(runtime.device)
    model.train()
    model = runtime.accelerator.prepare_model(model)
    if runtime.rank:
        torch.manual_seed(config.train.seed + runtime.rank)  # distinct dropout per rank
    return TrainableModel(model, [p for p in model.parameters() if p.requires_grad], precision_name)


def setup_optimizer(config, params: list, learning_rate: float, runtime: Runtime) -> tuple[Any, Any]:
    """AdamW over the adapter (prepared by accelerate) and the configured schedule; (optimizer, scheduler)."""
    import torch
    from transformers import get_scheduler

    train = config.train
    # The fused kernel (CPU and CUDA) updates every adapter tensor in one call: the per-tensor
    # loop costs several milliseconds a step on a LoRA's hundreds of small tensors. The Hugging
    # Face Trainer defaults to it too (adamw_torch_fused), so speed comparisons stay fair.
    fused = runtime.device.type in ("cpu", "cuda")
    optimizer = runtime.accelerator.prepare_optimizer(
        torch.optim.AdamW(params, lr=learning_rate, weight_decay=train.weight_decay, fused=fused))
    scheduler_name = {"constant": "constant_with_warmup"}.get(train.lr_scheduler, train.lr_scheduler)
    kwargs = {} if scheduler_name == "constant_with_warmup" else {"num_training_steps": train.max_steps}
    scheduler = get_scheduler(scheduler_name, optimizer.optimizer, num_warmup_steps=train.warmup_steps, **kwargs)
    return optimizer, scheduler


def set_peak_learning_rate(scheduler, learning_rate: float) -> None:
    """A new peak learning rate; the schedule's shape (warmup, decay) carries on from where it is."""
    scheduler.base_lrs = [learning_rate for _ in scheduler.base_lrs]
    for group, factor in zip(scheduler.optimizer.param_groups, scheduler.lr_lambdas):
        group["initial_lr"] = learning_rate
        group["lr"] = learning_rate * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


def memory_estimate(config, model_path: str, precision_name: str):
    """The planner's estimate for this run (loratui check's), or None for a model it cannot size."""
    from loratui.errors import UserInputError
    from loratui.model.memory_plan import estimate, model_shape, read_model_config

    try:
        return estimate(model_shape(read_model_config(model_path), config.lora), config, precision_name)
    except UserInputError:
        return None


def quantization_fields(config, model, model_path: str, precision_name: str) -> dict | None:
    """What run_started says about a quantized base: its format, compute dtype and dequantization error."""
    if config.model.quantization == "none":
        return None
    from loratui.model.quantization import dequantization_error

    error = dequantization_error(model, model_path, config.model.quantization)
    return {"method": config.model.quantization, "double_quant": config.model.double_quant,
            "compute_dtype": precision_name, "dequantization_error": error.as_dict()}


def run_started_fields(trainer, resumed_from) -> dict:
    """The `run_started` event: what is in effect (precision, device, sizes, versions, config)."""
    import platform

    import accelerate
    import peft
    import torch
    import transformers

    import loratui
    from loratui.config.schema import to_dict

    config = trainer.config
    return dict(
        step=trainer.step, precision=trainer.precision_name, requested_precision=config.train.precision,
        device=str(trainer.device), device_name=trainer.capabilities.device_name, world_size=trainer.world_size,
        versions={"loratui": loratui.__version__, "python": platform.python_version(),
                  "torch": torch.__version__, "transformers": transformers.__version__,
                  "peft": peft.__version__, "accelerate": accelerate.__version__},
        trainable_params=sum(p.numel() for p in trainer.params),
        total_params=sum(p.numel() for p in trainer.unwrapped_model.parameters()),
        loss_scaling=trainer.precision.scaler is not None, adapter_dtype=trainer.adapter_dtype_name,
        max_steps=config.train.max_steps, capabilities=trainer.capabilities.as_dict(),
        resumed_from=str(resumed_from.path) if resumed_from else None, config=to_dict(config),
        run_dir=str(trainer.run_dir.root), pid=os.getpid(),
        memory_estimate=trainer.memory_estimate.as_dict() if trainer.memory_estimate else None,
        quantization=quantization_fields(config, trainer.unwrapped_model, trainer.model_path, trainer.precision_name))
