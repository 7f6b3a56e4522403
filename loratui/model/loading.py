"""Load a base model and tokenizer (any local HF directory, or a built-in one) and add LoRA."""

from __future__ import annotations

import hashlib

from loratui.errors import Problem, UserInputError


def resolve_model_path(name_or_path: str, progress=None) -> str:
    if name_or_path.startswith("builtin:"):
        from loratui.model.builtin import builtin_model_dir
        from loratui.model.builtin_vlm import builtin_vlm_dir, is_builtin_vlm

        if is_builtin_vlm(name_or_path):
            return str(builtin_vlm_dir(name_or_path, progress=progress))

        return str(builtin_model_dir(name_or_path, progress=progress))
    return name_or_path


def load_tokenizer(path: str, *, trust_remote_code: bool):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserInputError(Problem("model.name_or_path", f"cannot load a tokenizer from {path}: "
                                     f"{_first_line(exc)}")) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise UserInputError(Problem("model.name_or_path", f"the tokenizer at {path} has no end-of-sequence "
                                     "token"))
    return tokenizer


def tokenizer_fingerprint(tokenizer) -> str:
    """Identifies the vocabulary: a resumed run must tokenize exactly as before."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(repr(vocab).encode()).hexdigest()[:16]


def load_base_model(auto_class, kind: str, path: str, dtype, *, trust_remote_code: bool, device_map=None,
                    quantization_config=None):
    """`auto_class.from_pretrained` (a family's choice) with the weights in `dtype`; `kind` names it in errors.

    device_map and quantization_config reach from_pretrained only when given, so a plain
    load is exactly transformers' default.
    """
    from loratui import faults

    faults.maybe_fail_loading(dtype)
    extra = {key: value for key, value in (("device_map", device_map), ("quantization_config", quantization_config))
             if value is not None}
    try:
        return auto_class.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code, **extra)
    except (OSError, ValueError) as exc:
        raise UserInputError(Problem("model.name_or_path", f"cannot load {kind} from {path}: "
                                     f"{_first_line(exc)}")) from None


def add_lora(model, lora_config, *, adapter_dtype, task_type: str = "CAUSAL_LM", target_modules=None,
             modules_to_save=None):
    """Wrap the model with LoRA adapters; only the adapters train, kept in `adapter_dtype`.

    A family may confine LoRA to some of its parts (`target_modules`, replacing the config's) and train
    others in full (`modules_to_save`, saved with the adapter).

    Under fp16 autocast the trainable weights must be fp32 (GradScaler refuses
    to unscale fp16 gradients), which peft's autocast_adapter_dtype provides.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora_config.r, lora_alpha=lora_config.alpha, lora_dropout=lora_config.dropout,
                        target_modules=target_modules or lora_config.target_modules,
                        modules_to_save=modules_to_save, task_type=task_type)
    try:
        peft_model = get_peft_model(model, config, autocast_adapter_dtype=True)
    except ValueError as exc:
        raise UserInputError(Problem("lora.target_modules", _first_line(exc))) from None
    for param in peft_model.parameters():
        if param.requires_grad and param.dtype != adapter_dtype:
            param.data = param.data.to(adapter_dtype)
    peft_model.config.use_cache = False
    return peft_model


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def model_identity(config, tokenizer) -> dict:
    """What a checkpoint must match to be resumed: what its adapter means.

    The base model, the tokenizer, and the adapter's shape and scale (its update is
    scaled by alpha / r). Dropout is left out: it acts in training only, so a resume
    may change it like the learning rate.
    """
    return {"model": config.model.name_or_path, "lora_r": config.lora.r, "lora_alpha": config.lora.alpha,
            "lora_target_modules": config.lora.target_modules,
            "tokenizer": tokenizer_fingerprint(tokenizer)}


def identity_mismatches(recorded: dict, current: dict) -> list[str]:
    """'key: checkpoint's value -> config's value' for each part of the identity that changed.

    A key the checkpoint does not record (one written before the key was added) is unknown,
    not a change: older checkpoints stay resumable.
    """
    return [f"{key}: {recorded[key]!r} -> {value!r}" for key, value in current.items()
            if key in recorded and recorded[key] != value]
