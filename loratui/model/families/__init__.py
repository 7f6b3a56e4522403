"""Model families: where a kind of model plugs into the trainer, chosen by the Hugging Face `model_type`.

The trainer never names a model. `family_for(model_path)` reads the model's
`config.json`, looks its `model_type` up in a registry (as axolotl's
model_support does) and returns a family; anything unregistered is trained as
a text causal LM (`TextFamily`), which is what loratui did before families.
Adding a kind of model is one new file here that subclasses `ModelFamily` and
calls `register`, never a branch in the loop.

What a family provides (the trainer calls these, in this order):

- `load_processor(path, trust_remote_code=...)`: the tokenizer, or a processor
  for models that take more than text. The trainer keeps it as `trainer.tokenizer`.
- `build_examples(data_config, processor, progress=...)`: the rows of
  `[data] path` as training examples, and a `DataReport` (rows read, skipped,
  truncated) that the trainer publishes as the `data` event.
- `batches(examples, processor, batch_size=..., seed=..., shuffle=..., rank=...,
  world_size=...)`: the stream of micro-batches. It has `next_batch()`, which
  returns the batch collated into the model's forward keyword arguments, and a
  `position` (`DataPosition`) that checkpoints save and restore. The loop calls
  `model(**batch)` on that dict untouched, so a family may add position_ids,
  4D attention masks, pixel_values, image_grid_thw... without changing the loop.
  The order must be a pure function of (seed, epoch) for exact resume.
- `count_tokens(batch)`: the batch's real (non-pad) tokens, for tokens_per_s.
- `load_model(path, dtype, trust_remote_code=..., device_map=None,
  quantization_config=None)`: the base model (before LoRA), weights in `dtype`.
  `quantization_config` (a transformers BitsAndBytesConfig, say) is handed to
  `from_pretrained` as is; None loads full weights.
- `lora_task_type`: peft's task type for the LoRA config.
- `parts` and `part_of(module_name)`: where the model's parts live, as module
  name prefixes (`vision_tower`, `projector`, `language_model`); the monitor
  names them in readings. A text model is all `language_model`.
- `identity(config, processor)`: what a checkpoint must match to be resumed
  (the base model, the vocabulary, the adapter's shape and scale).
- `configure_batches(stream, model, data_config)`: fit the batch stream to the
  loaded model (the text family packs it, data/packing.py); returns a notice or None.
- Capabilities: `supports_packing` (several examples in one row, with masks
  that keep them apart).
"""

from __future__ import annotations

import json
from pathlib import Path

from loratui.model.families.base import ModelFamily
from loratui.model.families.gemma3 import Gemma3Family
from loratui.model.families.idefics3 import Idefics3Family
from loratui.model.families.llava import LlavaFamily
from loratui.model.families.llava_next import LlavaNextFamily
from loratui.model.families.minicpmv import MiniCPMVFamily
from loratui.model.families.minicpmv_native import MiniCPMVNativeFamily
from loratui.model.families.paligemma import PaliGemmaFamily
from loratui.model.families.qwen2_5_vl import Qwen2_5_VLFamily
from loratui.model.families.qwen2_vl import Qwen2VLFamily
from loratui.model.families.qwen3_vl import Qwen3VLFamily
from loratui.model.families.text import TextFamily

_BY_MODEL_TYPE: dict[str, type[ModelFamily]] = {}


def register(family: type[ModelFamily]) -> type[ModelFamily]:
    """Make `family` the one for each of its `model_types` (usable as a class decorator)."""
    for model_type in family.model_types:
        _BY_MODEL_TYPE[model_type] = family
    return family


def model_type_of(model_path: str) -> str | None:
    """The `model_type` in the model directory's config.json; None when there is none to read."""
    try:
        return json.loads((Path(model_path) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None  # not a local directory with a readable config: loading it will say what is wrong


def family_for(model_path: str) -> ModelFamily:
    """The family that trains the model at `model_path` (a built-in model's path once it is built)."""
    return family_for_model_type(model_type_of(model_path))


def family_for_model_type(model_type: str | None) -> ModelFamily:
    """The family for a config.json's `model_type` (the memory planner reads the config alone)."""
    return _BY_MODEL_TYPE.get(model_type, TextFamily)()


register(TextFamily)
register(LlavaFamily)
register(MiniCPMVFamily)
register(Qwen2VLFamily)
register(LlavaNextFamily)
register(Idefics3Family)
register(MiniCPMVNativeFamily)
register(Qwen2_5_VLFamily)
register(Qwen3VLFamily)
register(Gemma3Family)
register(PaliGemmaFamily)
