"""`loratui demo`: the built-in offline example and the precision-fault scenarios.

Each scenario is the healthy demo config plus a few overrides that reproduce a
fault by a mechanism that happens in real training (see docs/alerts.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Scenario:
    description: str
    overrides: dict = field(default_factory=dict)
    alert: str | None = None  # the alert kind the monitor raises for it
    fix: str | None = None  # the suggestion that alert carries


SCENARIOS: dict[str, Scenario] = {
    "healthy": Scenario("The tiny Llama learns the bundled chat data; no faults."),
    "fp16-overflow": Scenario(
        "fp16 on a model with outlier activations (as models pretrained in bf16 have): layer 1's MLP "
        "multiplies values up to ~1e7, beyond fp16's 65504, so every forward pass overflows.",
        {"model.name_or_path": "builtin:tiny-llama-outliers", "train.precision": "fp16"},
        alert="overflow", fix="switch_precision"),
    "fp16-underflow": Scenario(
        "fp16 with loss scaling turned off and the loss divided by grad_accum = 4: LoRA gradients fall "
        "below fp16's smallest normal number (6.1e-5) and lose precision or flush to zero.",
        {"train.precision": "fp16", "amp.loss_scaling": False, "train.grad_accum": 4, "train.batch_size": 2},
        alert="underflow", fix="switch_precision"),
    "divergence": Scenario(
        "A learning rate far too high (0.03, fifteen times the demo's, held constant after warmup): the loss "
        "falls while warmup keeps the rate small, then climbs and stays up once the rate passes what the model "
        "tolerates.",
        {"train.learning_rate": 0.03, "train.warmup_steps": 10, "train.lr_scheduler": "constant"},
        alert="divergence", fix="lower_lr"),
    "bf16-stale": Scenario(
        "Pure-bf16 training (bf16 adapter weights) at a typical fine-tuning learning rate (1e-4): most "
        "updates are smaller than the weights' bf16 resolution and round away.",
        {"train.precision": "bf16", "train.adapter_dtype": "bf16", "train.learning_rate": 1e-4},
        alert="stale_update", fix="switch_precision"),
    "nonfinite-data": Scenario(
        "fp16 on chat data where one row in twenty is mojibake (UTF-8 read back as Windows-1252, "
        "'What’s' -> 'Whatâ€™s'), with a model whose massive activation sits on that stray byte token: "
        "batches holding such a row give a NaN loss.",
        {"model.name_or_path": "builtin:tiny-llama-token-outliers", "data.path": "builtin:tiny-chat-mojibake",
         "train.precision": "fp16"},
        alert="nonfinite_loss", fix="switch_precision"),
    "vlm-healthy": Scenario(
        "The built-in tiny vision-language model (a SigLIP tower, a projector and a small Llama) learns to read "
        "the colour of shapes from pictures; no faults.",
        {"model.name_or_path": "builtin:tiny-vlm", "data.path": "builtin:tiny-shapes", "train.learning_rate": 0.005}),
    "vlm-fp16-overflow": Scenario(
        "fp16 on a vision-language model whose SigLIP vision tower has outlier features (two MLP units near "
        "1e5, as SigLIP-family towers have): the vision tower overflows fp16's 65504 on every picture.",
        {"model.name_or_path": "builtin:tiny-vlm-outliers", "data.path": "builtin:tiny-shapes",
         "train.learning_rate": 0.005, "train.precision": "fp16"},
        alert="overflow", fix="switch_precision"),
}


def demo_config(name: str, overrides: list[str], *, resume: bool = False):
    """The demo config for a scenario, with the user's --set overrides applied last."""
    from loratui.config.load import load_config

    scenario = SCENARIOS[name]
    scenario_overrides = [f"{key}={_toml(value)}" for key, value in scenario.overrides.items()]
    base_name = f"demo-{name}"
    config = load_config(_empty_config(), [*scenario_overrides, f"run.name={base_name}",
                                            f"run.output_dir={Path.cwd() / 'runs'}", *overrides])
    if config.run.name == base_name:  # not chosen by the user: one directory per demo run
        config.run.name = _demo_run_name(Path(config.run.output_dir), base_name, resume)
    return config


def _demo_run_name(output_dir: Path, base_name: str, resume: bool) -> str:
    if resume:
        existing = sorted(output_dir.glob(f"{base_name}-*"))
        if existing:
            return existing[-1].name
    return f"{base_name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _empty_config() -> Path:
    """The demo is the defaults: an empty TOML file stands for them."""
    from loratui.data.builtin_data import BUILTIN_DIR

    return BUILTIN_DIR.parent / "demo.toml"


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)
