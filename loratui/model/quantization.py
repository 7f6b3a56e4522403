"""A quantized base model (QLoRA): the bitsandbytes config, k-bit preparation, and what 4-bit costs.

`model.quantization = "nf4"` stores every linear layer of the base in 4 bits
(bitsandbytes' Linear4bit, NormalFloat codes with one absmax per 64 weights),
"int8" in 8 bits (Linear8bitLt); the LoRA adapters on top stay fp32 unless
train.adapter_dtype asks otherwise. The 4-bit layers compute in the run's
precision (their compute dtype follows it), so fp16 on a T4 and bf16 where it
is native both work. bitsandbytes 0.50 runs these layers on a CPU as well, so
everything here is exercised for real by the CPU tests.

The dequantization error is the one figure quantization adds: how far the base
weights the run computes with are from the checkpoint's. It is measured against
the original weights read one tensor at a time from the model's safetensors
files (no second copy of the model), so a poor 4-bit fit is reported as itself
and not blamed on fp16 or bf16.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

QUANTIZATIONS = ("none", "nf4", "int8")
# What each stores per base weight, in bytes, with its scales: nf4 keeps one fp32 absmax per block
# of 64 weights (4 bytes / 64), or with double quantization one byte per block plus an fp32 scale
# per 256 blocks; int8 keeps one fp32 scale per output row (counted separately by the planner).
BYTES_PER_WEIGHT = {"nf4": 0.5 + 4 / 64, "nf4_double": 0.5 + 1 / 64 + 4 / (64 * 256), "int8": 1.0}
_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class QuantizationUnavailable(Exception):
    """bitsandbytes cannot be imported or cannot run here; the message says why and what to do."""


def bitsandbytes_problem() -> str | None:
    """Why a quantized base cannot load on this machine, or None when bitsandbytes works here."""
    try:
        import_bitsandbytes()
    except QuantizationUnavailable as exc:
        return str(exc)
    return None


def import_bitsandbytes():
    """Import bitsandbytes offline.

    On a CPU with AVX512-BF16, importing bitsandbytes asks the Hugging Face Hub
    for an optional 4-bit kernel (through the `kernels` package). loratui never
    downloads, so during this import `kernels` is hidden: bitsandbytes then
    keeps its own bundled CPU kernels, and its warning about the missing one is
    silenced because nothing is missing.
    """
    if "bitsandbytes" in sys.modules:
        return sys.modules["bitsandbytes"]
    missing = object()
    kernels = sys.modules.get("kernels", missing)
    sys.modules["kernels"] = None  # `from kernels import get_kernel` raises ImportError
    cpu_backend_log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    level = cpu_backend_log.level
    cpu_backend_log.setLevel(logging.ERROR)
    try:
        import bitsandbytes
    except Exception as exc:  # ImportError, or the native library failing to load (OSError, RuntimeError)
        sys.modules.pop("bitsandbytes", None)
        raise QuantizationUnavailable(
            f"bitsandbytes cannot be imported here ({type(exc).__name__}: "
            f"{_first_line(exc)}); install it with `pip install 'bitsandbytes>=0.50'`, "
            f'or set model.quantization = "none"') from None
    finally:
        if kernels is missing:
            del sys.modules["kernels"]
        else:
            sys.modules["kernels"] = kernels
        cpu_backend_log.setLevel(level)
    return bitsandbytes


def bnb_config(quantization: str, precision: str, *, double_quant: bool, keep_unquantized: list | None = None):
    """transformers' BitsAndBytesConfig for `quantization` in a run of `precision`; None for "none".

    The 4-bit layers dequantize into their compute dtype for every matmul, so it
    follows the run's precision: fp16 where bf16 is not native, bf16 where it is.
    `keep_unquantized` names module prefixes that keep their own dtype: a
    vision-language model's tower and projector, as MiniCPM-V-2_6-int4 does
    (only its language model is 4-bit). Naming them replaces transformers'
    default list, so the output layer is named too.
    """
    if quantization == "none":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    import_bitsandbytes()
    compute_dtype = getattr(torch, _DTYPE_NAMES[precision])
    skip = sorted(set(keep_unquantized) | {"lm_head"}) if keep_unquantized else None
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype,
                              bnb_4bit_use_double_quant=double_quant, bnb_4bit_quant_storage=torch.uint8,
                              llm_int8_skip_modules=skip)


def prepare_for_kbit_training(model, *, gradient_checkpointing: bool):
    """The k-bit preparation, before the adapters are added.

    Every base weight freezes. The norms are kept in fp32: they rescale every
    activation, and the 4-bit weights' error already disturbs what they see.
    Embeddings and the output layer stay in the precision's dtype, as in a run
    without quantization: peft's prepare_model_for_kbit_training would make
    them fp32 too, which for a large vocabulary costs gigabytes (an 8B model's
    two 128k x 4096 matrices: 4 GiB) and changes nothing autocast computes.
    With gradient checkpointing the inputs must ask for gradients, or the
    checkpointed blocks would see no tensor requiring grad (the frozen base has
    none) and the adapters inside them would get none.
    """
    import torch

    for param in model.parameters():
        param.requires_grad_(False)
    for name, module in model.named_modules():
        if "norm" in type(module).__name__.lower():
            module.float()
    for layer in quantized_modules(model).values():
        # On AVX512-BF16 CPUs a 4-bit layer in eval mode repacks its codes in place into an inference
        # layout that needs sizes divisible by its block and that dequantize_4bit cannot read: one
        # layout for training, evaluation and the monitor's dequantization.
        if hasattr(layer, "support_avx512bf16_for_cpu"):
            layer.support_avx512bf16_for_cpu = False
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model


def enable_gradient_checkpointing(model) -> None:
    """Recompute each layer in the backward pass; the frozen base's inputs ask for gradients so the
    checkpointed layers still give their adapters some (non-reentrant checkpointing, as torch advises)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # the name since transformers 5
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.enable_input_require_grads()


def quantized_modules(model) -> dict:
    """name -> bitsandbytes layer, for every quantized linear layer in `model`."""
    bnb = import_bitsandbytes()
    kinds = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    return {name: module for name, module in model.named_modules() if isinstance(module, kinds)}


def dequantized_weight(module):
    """The fp32 weight a quantized layer computes with (a new tensor; the layer keeps its codes)."""
    import torch

    bnb = import_bitsandbytes()
    weight = module.weight
    if isinstance(module, bnb.nn.Linear4bit):
        return bnb.functional.dequantize_4bit(weight.data, weight.quant_state).float()
    scale = weight.SCB if getattr(weight, "SCB", None) is not None else module.state.SCB
    return weight.data.float() * (scale.float().unsqueeze(1) / 127.0) if weight.dtype == torch.int8 \
        else weight.data.float()


@dataclass
class DequantizationError:
    """How far the quantized base weights are from the checkpoint's, per layer (relative Frobenius norm)."""

    method: str
    per_module: dict  # module name -> relative error
    worst_module: str | None
    worst: float | None
    mean: float | None

    def as_dict(self) -> dict:
        return {"method": self.method, "worst_module": self.worst_module, "worst": self.worst,
                "mean": self.mean, "modules": len(self.per_module)}


def dequantization_error(model, model_dir: str, method: str, *, max_modules: int = 28) -> DequantizationError:
    """Each quantized layer's ||W_dequantized - W|| / ||W||, W read lazily from the safetensors files.

    One original tensor is in memory at a time, so this costs one layer's fp32
    weight, not a second model. A large model is sampled: `max_modules` layers
    spread evenly from the first to the last (the tiny model's 28 are all of them).
    """
    import torch

    originals = _safetensors_index(Path(model_dir))
    errors = {}
    layers = list(quantized_modules(model).items())
    if len(layers) > max_modules:
        layers = [layers[round(i * (len(layers) - 1) / (max_modules - 1))] for i in range(max_modules)]
    for name, module in layers:
        key = _checkpoint_key(name, originals)
        if key is None:
            continue
        original = _read_tensor(originals[key], key).float()
        with torch.no_grad():
            approx = dequantized_weight(module).reshape(original.shape)
            norm = float(original.norm())
            errors[_plain_name(name)] = float((approx - original).norm()) / norm if norm else 0.0
        del original, approx
    if not errors:
        return DequantizationError(method, {}, None, None, None)
    worst_module = max(errors, key=errors.get)
    return DequantizationError(method, errors, worst_module, errors[worst_module],
                               sum(errors.values()) / len(errors))


def _safetensors_index(model_dir: Path) -> dict:
    """tensor name -> the safetensors file that holds it."""
    import json

    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: model_dir / file for name, file in weight_map.items()}
    single = model_dir / "model.safetensors"
    if not single.is_file():
        return {}
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as handle:
        return {name: single for name in handle.keys()}


def _read_tensor(path: Path, key: str):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.get_tensor(key)


def _checkpoint_key(module_name: str, originals: dict) -> str | None:
    """The checkpoint's name for a (possibly peft-wrapped) module's weight."""
    plain = _plain_name(module_name)
    for candidate in (f"{plain}.weight", f"{plain.removeprefix('model.')}.weight"):
        if candidate in originals:
            return candidate
    return None


def _plain_name(module_name: str) -> str:
    """A module's name as the base model knows it: without peft's wrappers."""
    return module_name.removeprefix("base_model.model.").replace(".base_layer", "")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextmanager
def gradient_checkpointing_paused(model):
    """Layers keep their activations inside the block, whatever train.gradient_checkpointing says.

    The monitor's fp32 reference needs it: checkpointed layers recompute in the
    backward pass, outside the fp32 arithmetic the reference's forward ran in,
    so their gradients would be half-precision ones again.
    """
    switched = [module for module in model.modules() if getattr(module, "gradient_checkpointing", None) is True]
    for module in switched:
        module.gradient_checkpointing = False
    try:
        yield
    finally:
        for module in switched:
            module.gradient_checkpointing = True
