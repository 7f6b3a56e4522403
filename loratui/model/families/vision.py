"""What every vision-language family shares: loading, reading rows with images, batching, what trains.

A family adapter (llava.py, qwen2_vl.py, and minicpmv.py for remote code) says, in
the spirit of LLaMA-Factory's mm_plugin: what an `<image>` placeholder becomes in
its chat text, how many of its own image tokens stand for an image of a given
size, how a batch of decoded images becomes the forward's inputs, and where its
vision tower, projector and language model live (`parts`). Rendering a
conversation, labelling only the assistant turns, checking images, decoding them
off the training thread and padding the text are the same for all of them.

What trains ([vision] in the config): LoRA on the language model's layers, always;
the vision tower frozen (default), with LoRA, or fully trained; the projector
fully trained (default) or frozen. Fully trained parts are peft `modules_to_save`,
so they are saved with the adapter and in every checkpoint.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loratui.data.dataset import IGNORE_INDEX, BadRow, _encode_messages, collate
from loratui.data.vision_rows import PLACEHOLDER, VisionExample, VisionRow
from loratui.model.families.base import ModelFamily

PARTS = ("vision_tower", "projector", "language_model")
# LoRA targets inside a part when lora.target_modules is "all-linear": the usual projections.
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "qkv", "proj",
                "fc1", "fc2", "out_proj", "linear_1", "linear_2", "linear_fc1", "linear_fc2")


@dataclass
class VisionProcessor:
    """A VLM's tokenizer and image processor together; it decodes text like its tokenizer."""

    tokenizer: Any
    image_processor: Any
    model_config: Any

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    def decode(self, ids, **kwargs) -> str:
        return self.tokenizer.decode(ids, **kwargs)


class VisionLanguageFamily(ModelFamily):
    placeholder_text: str  # what a `<image>` placeholder becomes in the chat text
    image_token: str  # the token each image's features replace, repeated image_tokens() times

    @abstractmethod
    def image_tokens(self, processor: VisionProcessor, width: int, height: int) -> int:
        """How many image tokens an image of this size becomes."""

    def image_expansion(self, processor: VisionProcessor, width: int, height: int, *, index: int) -> list[int]:
        """The token ids one image becomes where its image token sits in the rendered chat (`index`: its place
        in the row). The image token repeated image_tokens() times; a family whose images carry structure
        (Idefics3's tiles between row and column tokens, MiniCPM-V 4.x's numbered slices) spells it out here."""
        image_token_id = processor.tokenizer.convert_tokens_to_ids(self.image_token)
        return [image_token_id] * self.image_tokens(processor, width, height)

    @abstractmethod
    def image_inputs(self, processor: VisionProcessor, images: list, input_ids) -> dict:
        """The forward's image inputs for decoded `images` (in row order) and the padded `input_ids`."""

    # ----------------------------------------------------------------- loading

    def load_processor(self, path: str, *, trust_remote_code: bool) -> VisionProcessor:
        from transformers import AutoConfig, AutoImageProcessor

        from loratui.errors import Problem, UserInputError
        from loratui.model.loading import load_tokenizer

        tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        try:
            # The PIL-based processors: the default ones need torchvision, which does not load with every torch.
            image_processor = AutoImageProcessor.from_pretrained(path, trust_remote_code=trust_remote_code,
                                                                 backend="pil")
        except (OSError, ValueError, TypeError) as exc:
            raise UserInputError(Problem("model.name_or_path", f"cannot load an image processor from {path}: "
                                         f"{str(exc).strip().splitlines()[0]}")) from None
        if self.image_token not in tokenizer.get_vocab():
            raise UserInputError(Problem("model.name_or_path", f"the tokenizer at {path} has no {self.image_token} "
                                         "token"))
        return VisionProcessor(tokenizer, image_processor,
                               AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code))

    def load_model(self, path: str, dtype, *, trust_remote_code: bool, device_map=None, quantization_config=None):
        from transformers import AutoModelForImageTextToText

        from loratui.model.loading import load_base_model

        return load_base_model(AutoModelForImageTextToText, "a vision-language model", path, dtype,
                               trust_remote_code=trust_remote_code, device_map=device_map,
                               quantization_config=quantization_config)

    def identity(self, config, processor: VisionProcessor) -> dict:
        from loratui.config.schema import to_dict
        from loratui.model.loading import model_identity

        # What trains is part of what the adapter means: a resume must train the same parts. tower_fp32 is
        # arithmetic, like train.precision: a resume may turn it on (the fix for an overflowing tower on fp16).
        trains = {key: value for key, value in to_dict(config.vision).items() if key != "tower_fp32"}
        return {**model_identity(config, processor.tokenizer), "vision": trains}

    # -------------------------------------------------------------------- data

    def build_examples(self, data_config, processor: VisionProcessor, *, progress=None):
        from loratui.data.builtin_shapes import is_shapes_dataset, shapes_dataset_path
        from loratui.data.vision_rows import load_vision_examples
        from loratui.errors import Problem, UserInputError

        if data_config.format not in ("messages", "minicpmv"):
            raise UserInputError(Problem("data.format", f'a vision-language model reads "messages" or "minicpmv" '
                                         f'rows, not "{data_config.format}"'))
        path = data_config.path
        file = shapes_dataset_path(path, data_config.format) if is_shapes_dataset(path) else Path(path)
        return load_vision_examples(file, data_config.format, lambda row: self.encode(processor, row),
                                    max_length=data_config.max_length, on_too_long=data_config.on_too_long,
                                    on_bad_row=data_config.on_bad_row, max_pixels=data_config.max_pixels,
                                    image_token_ids={processor.tokenizer.convert_tokens_to_ids(self.image_token)},
                                    progress=progress)

    def encode(self, processor: VisionProcessor, row: VisionRow) -> tuple[list[int], list[int]]:
        """Token ids and labels of a row, each image's token expanded into its tokens (image_expansion)."""
        tokenizer = processor.tokenizer
        image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        messages = [dict(m, content=m["content"].replace(PLACEHOLDER, self.placeholder_text)) for m in row.messages]
        for turn, message in enumerate(row.messages):
            if message.get("role") != "user" and PLACEHOLDER in message["content"]:
                raise BadRow(f"messages[{turn}] has an {PLACEHOLDER} placeholder outside a user turn")
        example = _encode_messages({"messages": messages}, tokenizer)
        sizes = iter(row.sizes)
        input_ids, labels = [], []
        images_placed = 0
        for token, label in zip(example.input_ids, example.labels):
            if token == image_token_id:
                expansion = self.image_expansion(processor, *next(sizes), index=images_placed)
                images_placed += 1
                input_ids += expansion
                labels += [IGNORE_INDEX] * len(expansion)
            else:
                input_ids.append(token)
                labels.append(label)
        return input_ids, labels

    def batches(self, examples: list, processor: VisionProcessor, *, batch_size: int, seed: int, shuffle: bool,
                rank: int, world_size: int):
        from loratui.data.vision_stream import VisionBatchStream

        return VisionBatchStream(examples, batch_size, collate=lambda rows, images: self.collate(processor, rows, images),
                                 seed=seed, shuffle=shuffle, pad_id=processor.pad_token_id, rank=rank,
                                 world_size=world_size)

    def collate(self, processor: VisionProcessor, examples: list[VisionExample], images: list) -> dict:
        """Forward kwargs: the padded text plus the family's image inputs."""
        batch = collate(examples, processor.pad_token_id)
        if images:
            batch.update(self.image_inputs(processor, images, batch["input_ids"]))
        return batch

    def count_tokens(self, batch: dict) -> int:
        return int(batch["attention_mask"].sum())

    # ------------------------------------------------------------ what trains

    def lora_targets(self, lora_config, vision_config) -> dict:
        """peft's target_modules (a regex confined to the parts that get LoRA) and modules_to_save."""
        import re

        names = LINEAR_NAMES if lora_config.target_modules == "all-linear" else tuple(lora_config.target_modules)
        parts = ["language_model"] + (["vision_tower"] if vision_config.tower == "lora" else [])
        prefixes = "|".join(re.escape(self.parts[part]) for part in parts)
        pattern = rf"(?:{prefixes})\..*\.(?:{'|'.join(re.escape(n) for n in names)})"
        if vision_config.tower == "lora" and "projector" in self.parts:
            # The projector can sit inside the tower's module (Qwen2-VL's merger): never adapt it with LoRA.
            pattern = rf"(?!{re.escape(self.parts['projector'])}\.){pattern}"
        saved = [self.parts[part] for part, how in (("projector", vision_config.projector),
                                                     ("vision_tower", vision_config.tower)) if how == "full"]
        return {"target_modules": pattern, "modules_to_save": saved or None}

    def prepare_model(self, model, config, precision_name: str, device_type: str) -> None:
        """After LoRA is added: the vision tower in fp32 under fp16 when [vision] tower_fp32 asks."""
        if config.vision.tower_fp32 and precision_name == "fp16":
            keep_in_fp32(model.get_base_model().get_submodule(self.parts["vision_tower"]), device_type)

    def step_figures(self, stream, seconds: float) -> dict:
        """The step event's image figures: images in the step and images per second, over every rank."""
        images = stream.take_images_served()
        if stream.world_size > 1:  # each rank decodes its own share; the step's tokens are counted over all too
            from accelerate.utils import gather_object

            images = sum(gather_object([images]))
        return {"images": images, "images_per_s": round(images / seconds, 1) if seconds > 0 else None}


def keep_in_fp32(module, device_type: str) -> None:
    """Run `module` in fp32 whatever autocast says: its weights to fp32, autocast off inside its forward.

    The known fix for a vision tower whose activations pass fp16's 65504 on a machine
    without native bf16; the rest of the model still runs in fp16.
    """
    import functools

    import torch

    module.float()
    forward = module.forward

    @functools.wraps(forward)
    def fp32_forward(*args, **kwargs):
        def up(value):
            return value.float() if isinstance(value, torch.Tensor) and value.is_floating_point() else value

        with torch.autocast(device_type, enabled=False):
            return forward(*[up(a) for a in args], **{k: up(v) for k, v in kwargs.items()})

    module.forward = fp32_forward
