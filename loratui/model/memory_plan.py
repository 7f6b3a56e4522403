"""How much memory a config needs to train, before launch: each part, the total, and whether it fits.

The model is read from its config.json only: it is built on PyTorch's meta
device (shapes, no storage), which counts every parameter and finds every
linear layer without loading or downloading a weight. The parts of the peak:

- base weights: linear layers in their storage (4-bit codes with scales, 8-bit,
  or the precision's dtype), everything else in the precision's dtype, norms of
  a quantized base in fp32 (k-bit preparation keeps them there);
- a vision-language model's vision tower and projector, each its own part, never quantized (the
  tower in fp32 under fp16 with [vision] tower_fp32); a part trained in full ([vision] tower or
  projector = "full") adds its trainable copy, gradients and AdamW state;
- LoRA parameters, their gradients and AdamW's two moments, in the adapter dtype;
- activations kept for the backward pass, per token and layer, from the hidden
  and MLP sizes (or, with gradient checkpointing, each layer's input and one
  layer recomputed at a time), plus the logits and the loss's fp32 copies of
  them, which for a large vocabulary are often the biggest single part.

The per-token activation coefficients were measured (saved-for-backward bytes
of a Llama block with LoRA on every linear layer, dropout on) in fp32 and under
bf16 autocast; tests/test_memory_plan.py checks the whole estimate against the
real trainer's measured peak.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

GIB = 1 << 30
MIB = 1 << 20
# Room left for the allocator's fragmentation, the CUDA context and kernels' workspaces.
MARGIN = 0.10
# Bytes per token and layer held for the backward pass, per unit of hidden size and of MLP size: what
# autograd saves in a Llama block with LoRA on every linear layer and dropout on (fp32 adapters and their
# dropout keep fp32 copies of their inputs even under autocast), measured in fp32 and under bf16 autocast.
ACTIVATION_BYTES = {"full": {"hidden": 75, "mlp": 26}, "half": {"hidden": 54, "mlp": 15}}
# With gradient checkpointing: each layer's input (the residual stream) and its bookkeeping, per unit of
# hidden size, plus one layer recomputed at a time.
CHECKPOINTED_BYTES_PER_HIDDEN = {"full": 6.5, "half": 4.3}
# Per token and vocabulary entry: the logits in fp32, the loss's log-probabilities and their gradient.
LOGIT_BYTES = 12
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# What a training process holds beside its tensors' sizes: kernels' workspaces, the allocator's rounding and
# the framework's own buffers (measured on a CPU as the estimate's shortfall at zero activations; small
# beside any model worth planning for, and the margin covers the CUDA context).
RUNTIME_BYTES = 64 * MIB
# Where a vision-language model without a loratui family keeps its projector and its vision tower (a
# family's own map of its parts decides where it has one). Projector names are matched first: Qwen2-VL's
# merger sits inside its tower (`visual.merger`).
PROJECTOR_PARTS = ("resampler", "multi_modal_projector", "mm_projector", "merger", "connector")
VISION_PARTS = ("vision", "visual", "vpm")
NORM_HINTS = ("norm", "ln_")


@dataclass
class ModelShape:
    """What the estimate needs to know about a model, read from its config."""

    params: int
    linear_weights: int  # weights of the language model's linear layers (quantizable)
    norm_params: int
    vision_params: int  # the vision tower's
    lora_params: int  # on the language model's linear layers
    layers: int
    hidden: int
    mlp: int
    vocab: int
    image_tokens: int = 0  # per image, for a vision-language model
    projector_params: int = 0
    tower_lora_params: int = 0  # LoRA on the vision tower's linear layers, when [vision] tower = "lora"

    @property
    def other_params(self) -> int:
        return self.params - self.linear_weights - self.norm_params - self.vision_params - self.projector_params


@dataclass
class Estimate:
    parts: dict  # name -> bytes, in the order they are reported
    precision: str
    quantization: str

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def as_dict(self) -> dict:
        return {"total_mib": round(self.total / MIB, 1), "precision": self.precision,
                "quantization": self.quantization,
                "parts_mib": {name: round(size / MIB, 1) for name, size in self.parts.items()}}


@dataclass
class Plan:
    estimate: Estimate
    available: int | None  # bytes on the device, None when unknown
    device: str
    fixes: list = field(default_factory=list)  # (what to change, its estimate) that would fit
    image_tokens: int = 0

    @property
    def usable(self) -> int | None:
        return None if self.available is None else int(self.available * (1 - MARGIN))

    @property
    def fits(self) -> bool | None:
        return None if self.available is None else self.estimate.total <= self.usable


def read_model_config(model_dir: str) -> dict:
    """config.json of a local model directory (a built-in model is built first)."""
    from loratui.errors import Problem, UserInputError
    from loratui.model.loading import resolve_model_path

    path = Path(resolve_model_path(model_dir)) / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserInputError(Problem("model.name_or_path", f"cannot read {path} to plan memory: {exc}")) from None


def model_shape(model_config: dict, lora) -> ModelShape:
    """Count the parameters of the model `model_config` describes, on the meta device (no memory)."""
    import torch

    model = _meta_model(model_config)
    text = model_config.get("text_config") or model_config
    if model is None:
        return _counted_shape(model_config, text, lora)
    linear_weights = norm_params = vision_params = projector_params = lora_params = tower_lora_params = 0
    targets = lora.target_modules
    part_of = _part_finder(model_config.get("model_type"))
    for name, module in model.named_modules():
        own = sum(p.numel() for p in module.parameters(recurse=False))
        if not own:
            continue
        part = part_of(name)
        if part == "projector":
            projector_params += own
        elif part == "vision_tower":
            vision_params += own
            if isinstance(module, torch.nn.Linear) and _adapted(name, targets):
                tower_lora_params += lora.r * (module.in_features + module.out_features)
        elif isinstance(module, torch.nn.Linear) and not _is_output_layer(name, model):
            linear_weights += module.weight.numel()
            if _adapted(name, targets):
                lora_params += lora.r * (module.in_features + module.out_features)
        elif any(hint in type(module).__name__.lower() or name.rsplit(".", 1)[-1].startswith(hint)
                 for hint in NORM_HINTS):
            norm_params += own
    params = sum(p.numel() for p in model.parameters())
    return ModelShape(params=params, linear_weights=linear_weights, norm_params=norm_params,
                      vision_params=vision_params, lora_params=lora_params,
                      layers=text["num_hidden_layers"], hidden=text["hidden_size"],
                      mlp=text.get("intermediate_size") or 4 * text["hidden_size"], vocab=text["vocab_size"],
                      image_tokens=_image_tokens(model_config), projector_params=projector_params,
                      tower_lora_params=tower_lora_params)


def _part_finder(model_type: str | None):
    """name -> vision_tower | projector | language_model: the family's map of its parts (what the trainer
    freezes, trains in full and never quantizes), or common names for a model without a family."""
    from loratui.model.families import family_for_model_type

    family = family_for_model_type(model_type)
    if family.parts:
        return family.part_of

    def by_name(name: str) -> str:
        if any(part in name for part in PROJECTOR_PARTS):
            return "projector"
        return "vision_tower" if any(part in name for part in VISION_PARTS) else "language_model"

    return by_name


def estimate(shape: ModelShape, config, precision: str) -> Estimate:
    """The peak bytes of one training process for `config` in `precision` (fp32 | bf16 | fp16)."""
    quantization = config.model.quantization
    dtype_bytes = DTYPE_BYTES[precision]
    adapter_bytes = DTYPE_BYTES[config.train.adapter_dtype]
    parts = {}
    if quantization == "none":
        parts["base weights"] = (shape.params - shape.vision_params - shape.projector_params) * dtype_bytes
    else:
        from loratui.model.quantization import BYTES_PER_WEIGHT

        per_weight = BYTES_PER_WEIGHT["nf4_double" if quantization == "nf4" and config.model.double_quant
                                      else quantization]
        parts[f"base weights ({quantization})"] = int(shape.linear_weights * per_weight)
        parts["base weights kept unquantized"] = shape.other_params * dtype_bytes + shape.norm_params * 4
    vision = config.vision
    if shape.vision_params:
        fp32_tower = vision.tower_fp32 and precision == "fp16"
        parts["vision tower" + (" (fp32)" if fp32_tower else "")] = \
            shape.vision_params * (DTYPE_BYTES["fp32"] if fp32_tower else dtype_bytes)
    if shape.projector_params:
        parts["projector"] = shape.projector_params * dtype_bytes
    lora_params = shape.lora_params + (shape.tower_lora_params if vision.tower == "lora" else 0)
    parts["LoRA parameters"] = lora_params * adapter_bytes
    parts["LoRA gradients"] = lora_params * adapter_bytes
    parts["AdamW state"] = 2 * lora_params * adapter_bytes
    # A part trained in full is a peft modules_to_save: a trainable copy beside the frozen original, in the
    # adapter dtype, with its gradients and AdamW's two moments.
    for part, params, how in (("projector", shape.projector_params, vision.projector),
                              ("vision tower", shape.vision_params, vision.tower)):
        if params and how == "full":
            parts[f"{part} trained in full (copy, gradients, AdamW state)"] = 4 * params * adapter_bytes
    tokens = config.train.batch_size * config.data.max_length
    activations = int(tokens * _activation_bytes_per_token(shape, precision, config.train.gradient_checkpointing))
    parts["activations"] = activations
    if precision != "fp32":
        # The monitor's probe recomputes one micro-batch in fp32 arithmetic, without checkpointing.
        probe = int(tokens * _activation_bytes_per_token(shape, "fp32", False))
        parts["monitor probe (fp32 recomputation), beyond the step's"] = max(0, probe - activations)
    parts["logits and loss"] = tokens * shape.vocab * (LOGIT_BYTES + dtype_bytes)
    parts["runtime (workspaces, allocator)"] = RUNTIME_BYTES
    return Estimate(parts, precision, quantization)


def plan(shape: ModelShape, config, precision: str, available: int | None, device: str) -> Plan:
    """The estimate, and when it does not fit, the changes that would make it fit."""
    result = Plan(estimate(shape, config, precision), available, device, image_tokens=shape.image_tokens)
    if result.fits is False:
        result.fixes = _fixes(shape, config, precision, result.usable)
    return result


def plan_for_config(config, precision: str, available: int | None, device: str) -> Plan:
    return plan(model_shape(read_model_config(config.model.name_or_path), config.lora), config, precision,
                available, device)


def device_memory(caps) -> tuple[int | None, str]:
    """Bytes this run may use on its device and what that is: the GPU's total, or the RAM available now."""
    if caps.device == "cuda":
        return caps.memory_bytes, caps.device_name
    import psutil

    return psutil.virtual_memory().available, "CPU (RAM available now)"


def render(result: Plan) -> list[str]:
    """`loratui check`'s memory lines."""
    est = result.estimate
    lines = [f"memory estimate ({est.precision}, quantization {est.quantization}): {_gib(est.total)} peak"]
    lines += [f"  {name}: {_gib(size)}" for name, size in est.parts.items()]
    if result.image_tokens:
        lines.append(f"  each image is {result.image_tokens} language-model tokens, within data.max_length")
    if result.available is None:
        lines.append(f"  {result.device}: memory unknown, fit not judged")
        return lines
    verdict = "fits" if result.fits else "does NOT fit"
    lines.append(f"{verdict}: {result.device} has {_gib(result.available)}; with a {MARGIN:.0%} margin "
                 f"{_gib(result.usable)} is usable")
    if result.fits is False:
        if result.fixes:
            lines.append("  to fit, change:")
            lines += [f"    {change}  -> {_gib(fixed.total)}" for change, fixed in result.fixes]
        else:
            lines.append("  no single change here fits it: a larger device, or several processes")
    return lines


def _fixes(shape: ModelShape, config, precision: str, usable: int) -> list:
    """What to change, in the order a user would try it (cheapest in quality first).

    Each single change that fits on its own is listed; when none does, the changes
    are applied one after another (halving the batch and the length as often as
    needed) and the first combination that fits is the answer.
    """
    def fits(changed) -> bool:
        return estimate(shape, changed, precision).total <= usable

    singles = [(change, changed) for _, change, changed in _next_changes(config) if fits(changed)]
    if singles:
        return [(change, estimate(shape, changed, precision)) for change, changed in singles]
    applied, current = {}, config  # key -> its latest change (the batch may halve more than once)
    while True:
        step = _next_changes(current)
        if not step:
            return []
        key, applied[key], current = step[0]
        if fits(current):
            return [("; ".join(applied.values()), estimate(shape, current, precision))]


def _next_changes(config) -> list:
    """Each change still possible from `config`: (key, what to write in the config, the changed config)."""
    changes = []
    if config.model.quantization != "nf4":
        changes.append(("quantization", 'model.quantization = "nf4"', _with(config, model={"quantization": "nf4"})))
    if not config.train.gradient_checkpointing:
        changes.append(("checkpointing", "train.gradient_checkpointing = true",
                        _with(config, train={"gradient_checkpointing": True})))
    if config.train.batch_size > 1:
        smaller = config.train.batch_size // 2
        accum = config.train.grad_accum * config.train.batch_size // smaller
        changes.append(("batch", f"train.batch_size = {smaller} with train.grad_accum = {accum} (the same batch "
                        "per step)", _with(config, train={"batch_size": smaller, "grad_accum": accum})))
    if config.data.max_length > 256:
        changes.append(("length", f"data.max_length = {config.data.max_length // 2}",
                        _with(config, data={"max_length": config.data.max_length // 2})))
    return changes


def _with(config, **sections):
    changed = {name: replace(getattr(config, name), **values) for name, values in sections.items()}
    return replace(config, **changed)


def _activation_bytes_per_token(shape: ModelShape, precision: str, checkpointing: bool) -> float:
    width = "full" if precision == "fp32" else "half"
    one_layer = ACTIVATION_BYTES[width]["hidden"] * shape.hidden + ACTIVATION_BYTES[width]["mlp"] * shape.mlp
    if checkpointing:
        return shape.layers * CHECKPOINTED_BYTES_PER_HIDDEN[width] * shape.hidden + one_layer
    return shape.layers * one_layer


def _meta_model(model_config: dict):
    """The model on the meta device, or None when transformers does not know its model_type here
    (a remote-code model such as MiniCPM-V 2.6)."""
    import warnings

    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    values = dict(model_config)
    model_type = values.pop("model_type", None)
    try:
        config = AutoConfig.for_model(model_type, **values)
    except (KeyError, ValueError):
        return None
    with init_empty_weights(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return AutoModelForCausalLM.from_config(config)
        except ValueError:
            from transformers import AutoModelForImageTextToText

            return AutoModelForImageTextToText.from_config(config)


def _counted_shape(model_config: dict, text: dict, lora) -> ModelShape:
    """A Llama-style decoder (Qwen2, MiniCPM, Mistral...) counted from its config's sizes, with a
    ViT-style vision tower when the config has one: for model types this transformers cannot build."""
    from loratui.errors import Problem, UserInputError

    try:
        hidden, layers, vocab = text["hidden_size"], text["num_hidden_layers"], text["vocab_size"]
    except KeyError as exc:
        raise UserInputError(Problem("model.name_or_path", f"cannot plan memory: the model's config has no "
                                     f"{exc.args[0]} (model_type {model_config.get('model_type')!r})")) from None
    mlp = text.get("intermediate_size") or 4 * hidden
    heads = text.get("num_attention_heads", 1)
    head_dim = text.get("head_dim") or hidden // heads
    kv = text.get("num_key_value_heads", heads) * head_dim
    projections = {"q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv), "v_proj": (hidden, kv),
                   "o_proj": (heads * head_dim, hidden), "gate_proj": (hidden, mlp), "up_proj": (hidden, mlp),
                   "down_proj": (mlp, hidden)}
    linear = layers * sum(i * o for i, o in projections.values())
    adapted = layers * sum(lora.r * (i + o) for name, (i, o) in projections.items() if _adapted(name, lora.target_modules))
    embeddings = vocab * hidden * (1 if text.get("tie_word_embeddings", False) else 2)
    norms = (2 * layers + 1) * hidden
    vision = _vision_params(model_config.get("vision_config") or {})
    projector = _resampler_params(model_config, hidden)
    return ModelShape(params=linear + embeddings + norms + vision + projector, linear_weights=linear,
                      norm_params=norms, vision_params=vision, lora_params=adapted, layers=layers, hidden=hidden,
                      mlp=mlp, vocab=vocab, image_tokens=_image_tokens(model_config), projector_params=projector)


def _vision_params(vision: dict) -> int:
    """A ViT (SigLIP, CLIP) tower: attention and MLP per layer, and the patch embedding."""
    if not vision.get("hidden_size"):
        return 0
    hidden, layers = vision["hidden_size"], vision.get("num_hidden_layers", 0)
    mlp = vision.get("intermediate_size") or 4 * hidden
    patch = vision.get("patch_size", 14)
    return layers * (4 * hidden * hidden + 2 * hidden * mlp) + 3 * patch * patch * hidden


def _resampler_params(model_config: dict, hidden: int) -> int:
    """MiniCPM-V's perceiver resampler (its resampler.py): query_num learned queries, a projection from the
    tower's width, one multi-head attention (in and out projections with biases), three layer norms and an
    output projection. 0 for a config without one."""
    queries, tower = model_config.get("query_num"), (model_config.get("vision_config") or {}).get("hidden_size")
    if not queries or not tower:
        return 0
    attention = 4 * hidden * hidden + 4 * hidden
    return queries * hidden + tower * hidden + attention + 3 * 2 * hidden + hidden * hidden


def _is_output_layer(name: str, model) -> bool:
    """The vocabulary projection: peft's "all-linear" leaves it out and k-bit loading keeps it unquantized."""
    output = model.get_output_embeddings()
    return output is not None and model.get_submodule(name) is output


def _adapted(name: str, targets) -> bool:
    if targets == "all-linear":
        return True
    if isinstance(targets, str):
        targets = [targets]
    return name.rsplit(".", 1)[-1] in targets or any(name.endswith(f".{t}") for t in targets)


def _image_tokens(model_config: dict) -> int:
    """Language-model tokens one image becomes (0 for a text model)."""
    vision = model_config.get("vision_config")
    if not vision:
        return 0
    if "query_num" in model_config:  # MiniCPM-V: a resampler's fixed queries per slice, plus the slices
        # 2.6 keeps max_slice_nums in slice_config; 2.0 and 2.5 at the top level.
        most = model_config.get("max_slice_nums") or (model_config.get("slice_config") or {}).get("max_slice_nums", 0)
        slices = most if model_config.get("slice_mode", False) else 0
        return model_config["query_num"] * (1 + slices)
    if "image_size" in vision and "patch_size" in vision:
        return (vision["image_size"] // vision["patch_size"]) ** 2
    return 0


def _gib(size: int) -> str:
    return f"{size / GIB:.2f} GiB" if size >= GIB else f"{size / MIB:.1f} MiB"
