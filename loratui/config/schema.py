"""The config's shape: one dataclass per TOML section, each key with its rules.

The rules live beside the keys (in field metadata) so that validation, the
defaults, the resolved `config.toml` and the documentation cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, get_type_hints

PRECISIONS = ("auto", "advise", "bf16", "fp16", "fp32")
TRAINING_PRECISIONS = ("bf16", "fp16", "fp32")
ALERT_KINDS = (
    "overflow",
    "underflow",
    "nonfinite_loss",
    "nonfinite_grads",
    "scale_collapse",
    "loss_spike",
    "stale_update",
    "divergence",
    "checkpoint_failed",
    "loss_collapse",
    "overflow_forecast",
)
AUTOPILOT_ACTIONS = ("switch_precision", "lower_lr", "rollback", "stop", "none")
# Alerts the trainer raises itself, past the monitor: the autopilot never sees them, so only "none" may be
# mapped to them (configs written before this rule list checkpoint_failed = "none").
AUTOPILOT_UNSEEN = {"checkpoint_failed": 'the trainer raises it itself and the autopilot cannot act on it; '
                                         'checkpoint.on_error = "stop" or "continue" decides what a failed '
                                         'checkpoint does'}


def key(default: Any, doc: str, *, choices: tuple | None = None, min: float | None = None,
        max: float | None = None, min_exclusive: bool = False, kind: str | None = None):
    """A config key: its default, one line of documentation and what is allowed.

    `kind` names a value shape that a Python type cannot express:
    "str_list", "modules" (a list of names or "all-linear"), "action_map".
    """
    rules = {"doc": doc, "choices": choices, "min": min, "max": max,
             "min_exclusive": min_exclusive, "kind": kind}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=rules)
    return field(default=default, metadata=rules)


@dataclass
class RunSection:
    """Where the run directory lives, and the experiment trackers that mirror its figures."""

    name: str = key("loratui-run", "Run name; the run directory is <output_dir>/<name>.")
    output_dir: str = key("runs", "Directory that holds run directories (relative to the config file).")
    report_to: list = key([], "Experiment trackers to mirror metrics to.", kind="str_list",
                          choices=("tensorboard", "wandb", "mlflow", "trackio"))


@dataclass
class ModelSection:
    """The base model the LoRA adapter is trained on."""

    name_or_path: str = key("builtin:tiny-llama",
                            'A local Hugging Face model directory, a hub id already in the local cache, '
                            'or "builtin:tiny-llama" (built offline from a seeded config).')
    trust_remote_code: bool = key(False, "Run code shipped with the model. Off unless you trust its source.")
    quantization: str = key("none", 'Store the base weights quantized (QLoRA, with bitsandbytes): "nf4" = 4 bits, '
                            '"int8" = 8 bits; they compute in the run\'s precision and the adapters stay '
                            'train.adapter_dtype.', choices=("none", "nf4", "int8"))
    double_quant: bool = key(True, 'nf4 only: quantize the 4-bit blocks\' scales too (about 0.4 bits less '
                             'per weight).')


@dataclass
class DataSection:
    """The training data: where it is, its row format, and what happens to rows that do not fit."""

    path: str = key("builtin:tiny-chat",
                    '"builtin:tiny-text", "builtin:tiny-qa", "builtin:tiny-chat" or a .jsonl file '
                    "(relative to the config file).")
    format: str = key("messages", 'Row format; "messages" rows may carry an "images" list, "minicpmv" reads '
                      "MiniCPM-V's own fine-tuning file (a .json list or .jsonl).",
                      choices=("text", "prompt_completion", "messages", "minicpmv"))
    max_length: int = key(256, "Longest tokenized row.", min=8, max=1_048_576)
    on_too_long: str = key("truncate", "What to do with a row longer than max_length.",
                           choices=("truncate", "drop", "error"))
    on_bad_row: str = key("error", "What to do with a malformed row.", choices=("error", "skip"))
    shuffle: bool = key(True, "Shuffle rows each epoch (seeded by train.seed and the epoch).")
    packing: bool = key(True, "Pack each micro-batch's examples into shared rows, so no padding is computed; "
                        "attention stays within each example and the loss is the same. Text models with sdpa "
                        "or eager attention; others are padded.")
    group_by_length: bool = key(True, "Padded micro-batches (packing off or not possible): batch examples of "
                                "similar length together so less padding is computed; the order stays random.")
    max_pixels: int = key(4_194_304, "Vision-language rows: an image with more pixels than this (width x height, "
                          "read from its header) is a bad row; bounds the memory of one decoded image.", min=1)


@dataclass
class VisionSection:
    """Vision-language models: which parts train besides the language model's LoRA adapters."""

    tower: str = key("frozen", "The vision tower: frozen, LoRA adapters on its layers, or every weight trained.",
                     choices=("frozen", "lora", "full"))
    projector: str = key("full", "The projector (resampler, merger, multi_modal_projector): trained in full "
                         "(MiniCPM-V's recipe) or frozen.", choices=("full", "frozen"))
    tower_fp32: bool = key(False, "fp16 runs: keep the vision tower's weights and arithmetic in fp32 (a fix for "
                           "vision-tower activations past fp16's 65504 where bf16 is not native).")


@dataclass
class LoraSection:
    """The shape of the LoRA adapter."""

    r: int = key(8, "LoRA rank.", min=1, max=4096)
    alpha: float = key(16.0, "LoRA alpha; the update is scaled by alpha / r.", min=0, min_exclusive=True)
    dropout: float = key(0.05, "Dropout on the LoRA input.", min=0, max=0.9)
    target_modules: Any = key("all-linear", 'Module names to adapt, or "all-linear".', kind="modules")


@dataclass
class TrainSection:
    """The optimization: precision, learning-rate schedule, batch, steps and seed."""

    precision: str = key("auto", "auto = bf16 where native (CUDA capability >= 8.0, or CPU), else fp16 "
                         "on CUDA, else fp32; advise = measure first (loratui advise), then train "
                         "with its choice.", choices=PRECISIONS)
    adapter_dtype: str = key("fp32", "dtype of the trainable LoRA weights; bf16 saves memory "
                             "(pure-bf16 training) and needs precision = bf16.", choices=("fp32", "bf16"))
    device: str = key("auto", "auto = CUDA when present, else CPU.", choices=("auto", "cpu", "cuda"))
    learning_rate: float = key(2e-3, "Peak learning rate.", min=0, max=10, min_exclusive=True)
    lr_scheduler: str = key("cosine", "Learning-rate schedule after warmup.",
                            choices=("constant", "linear", "cosine"))
    warmup_steps: int = key(10, "Linear warmup steps.", min=0)
    max_steps: int = key(200, "Optimizer steps to train.", min=1)
    batch_size: int = key(8, "Rows per micro-batch (per process).", min=1)
    grad_accum: int = key(1, "Micro-batches per optimizer step.", min=1)
    gradient_checkpointing: bool = key(False, "Recompute each layer's activations in the backward pass "
                                       "instead of keeping them: less memory, about a third more compute.")
    max_grad_norm: float = key(1.0, "Clip the gradient norm to this; 0 turns clipping off.", min=0)
    weight_decay: float = key(0.0, "AdamW weight decay.", min=0)
    seed: int = key(42, "Seed for weights, LoRA init, shuffling and dropout.", min=0)
    lr_factor: float = key(0.5, "Factor the dashboard's 'lower learning rate' key suggests.",
                           min=0, max=1, min_exclusive=True)


@dataclass
class AmpSection:
    """fp16 dynamic loss scaling (torch.amp.GradScaler); bf16 and fp32 runs do not use it."""

    loss_scaling: bool = key(True, "fp16 only: dynamic loss scaling with torch.amp.GradScaler.")
    init_scale: float = key(65536.0, "fp16 only: the GradScaler's initial scale.", min=0, min_exclusive=True)
    growth_interval: int = key(2000, "fp16 only: clean steps before the scale doubles.", min=1)
    growth_factor: float = key(2.0, "fp16 only: scale growth factor.", min=1, min_exclusive=True)
    backoff_factor: float = key(0.5, "fp16 only: scale backoff factor after an overflow.",
                                min=0, max=1, min_exclusive=True)


@dataclass
class CheckpointSection:
    """When checkpoints are written, how many are kept, and what a failed save does."""

    every_steps: int = key(50, "Save a checkpoint every this many optimizer steps.", min=1)
    keep: int = key(3, "Complete checkpoints to keep (older ones are deleted after a new one is complete).",
                    min=1)
    on_error: str = key("stop", "When a checkpoint cannot be written (disk full): stop, or continue "
                        "training and retry at the next interval.", choices=("stop", "continue"))


@dataclass
class AutopilotSection:
    """Fixes applied without a person: the action each alert kind takes, and how many in a run."""

    enabled: bool = key(False, "Apply fixes without a person (for headless runs).")
    max_actions: int = key(3, "Most fixes the autopilot may apply in one run.", min=0)
    actions: dict = key({"overflow": "switch_precision", "scale_collapse": "switch_precision",
                         "nonfinite_loss": "switch_precision", "nonfinite_grads": "lower_lr",
                         "underflow": "switch_precision",
                         "stale_update": "switch_precision", "divergence": "lower_lr",
                         "loss_spike": "none"},
                        "Alert kind -> action (switch_precision, lower_lr, rollback, stop, none).",
                        kind="action_map")


@dataclass
class MonitorSection:
    """The precision monitor: when the probes run, and the thresholds behind each alert."""

    log_every: int = key(10, "Headless: print one line every this many steps.", min=1)
    probe_every: int = key(50, "Run the health probes every this many steps (or at a later multiple of it "
                           "when probe_budget requires).", min=1)
    probe_budget: float = key(0.02, "Most of the training time the periodic probes may take: a probe that "
                              "costs more than this share of the steps since the last one pushes the next "
                              "to a later multiple of probe_every (1: no budget).", min=0, max=1,
                              min_exclusive=True)
    probe_first_steps: int = key(3, "Also probe the first this many steps of every attempt, so a fault that "
                                 "a config or a restart brings shows at once.", min=0)
    fp16_headroom_min: float = key(4.0, "Alert when fp16's max (65504) is less than this many times the "
                                   "largest activation.", min=1)
    underflow_max: float = key(0.05, "Alert when this share of gradient values underflows in fp16.",
                               min=0, max=1)
    fidelity_min: float = key(0.98, "Alert when the cosine of the run's gradients against fp32 falls "
                              "below this.", min=0, max=1)
    stale_max: float = key(0.25, "Alert when this share of adapter weights stops changing (update lost "
                           "to rounding).", min=0, max=1)
    skip_rate_max: float = key(0.1, "Alert when more than this share of steps is skipped for non-finite "
                               "gradients (after calibration, with a loss scaler).", min=0, max=1)
    consecutive_skips_max: int = key(5, "Alert after this many skipped steps in a row.", min=1)
    skip_window: int = key(50, "The skip rate is measured over this many steps.", min=5)
    calibration_steps: int = key(30, "fp16 with loss scaling: skips in this many steps after a start or "
                                 "restart are the loss scale's calibration, not alerts.", min=0)
    spike_sigma: float = key(6.0, "Loss spike: above mean + this many standard deviations.",
                             min=0, min_exclusive=True)
    spike_window: int = key(50, "Loss spike: rolling window of finite losses.", min=5)
    divergence_window: int = key(5, "Divergence: the median loss of this many steps is compared with the "
                                 "lowest such median of the attempt (more steps where a step holds fewer "
                                 "than 16 examples, so the median spans at least 16).", min=2)
    divergence_rise: float = key(0.25, "Divergence: alert when that median stays this much (relative) above "
                                 "the lowest.", min=0, min_exclusive=True)
    divergence_lr_factor: float = key(0.1, "Divergence: the suggested learning rate is the current one "
                                      "times this.", min=0, max=1, min_exclusive=True)
    min_loss_scale: float = key(2.0 ** -24, "fp16 with loss scaling: a loss scale that falls below this ends the "
                                "attempt with a checkpoint (2^-24, fp16's smallest value: below it the scaled "
                                "loss itself is zero, so no step can train).", min=0, min_exclusive=True)
    update_ratio_max: float = key(0.1, "Learning rate too high: alert when the LoRA weights move more than this "
                                  "share of their norm in one step, two steps in a row (healthy runs of the "
                                  "built-in model move 0.01-3% per step).", min=0, min_exclusive=True)
    update_ratio_target: float = key(0.01, "The per-step update-to-weight ratio the suggested learning rate "
                                     "aims at.", min=0, min_exclusive=True)
    weight_growth_max: float = key(4.0, "Learning rate too high: alert when the LoRA weights' norm grows past "
                                   "this many times its value at the attempt's start.", min=1,
                                   min_exclusive=True)
    grad_norm_growth_max: float = key(10.0, "Learning rate too high: alert when the gradient norm's median over "
                                      "divergence_window steps stays this many times above its early level.",
                                      min=1, min_exclusive=True)
    forecast_horizon: int = key(100, "Warn when the headroom's or the loss scale's trend says fp16 overflows (or "
                                "the scale falls below 1) within this many steps.", min=1)
    resolve_after: int = key(10, "An alert from the per-step figures is resolved after this many healthy "
                             "steps in a row (a probe's, at the next healthy probe).", min=1)
    autopilot: AutopilotSection = field(default_factory=AutopilotSection)


@dataclass
class LaunchSection:
    """Multi-process runs that the dashboard starts through `accelerate launch`."""

    num_processes: int = key(1, "Processes for `accelerate launch` when the dashboard starts the run.",
                             min=1)
    accelerate_args: list = key([], "Extra `accelerate launch` options, e.g. [\"--config_file\", "
                                "\"fsdp.yaml\"].", kind="str_list")


@dataclass
class Config:
    run: RunSection = field(default_factory=RunSection)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    lora: LoraSection = field(default_factory=LoraSection)
    vision: VisionSection = field(default_factory=VisionSection)
    train: TrainSection = field(default_factory=TrainSection)
    amp: AmpSection = field(default_factory=AmpSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    monitor: MonitorSection = field(default_factory=MonitorSection)
    launch: LaunchSection = field(default_factory=LaunchSection)


def is_section(value_type: Any) -> bool:
    return isinstance(value_type, type) and is_dataclass(value_type)


def section_fields(section_type: type):
    """(name, python type, rules) for each key of a section, nested sections included."""
    hints = get_type_hints(section_type)
    for f in fields(section_type):
        yield f.name, hints[f.name], f.metadata


def to_dict(obj: Any) -> dict:
    """A plain nested dict of a config (or section), the shape TOML and JSON want."""
    out = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        out[f.name] = to_dict(value) if is_dataclass(value) else value
    return out
