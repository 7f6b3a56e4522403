"""MiniCPM-V 4.x as transformers ships it natively (model types minicpmv4_6 and minicpmv4_7, no remote code).

Unlike MiniCPM-V 2.x (minicpmv.py: remote code, a resampler with fixed queries),
these take an ordinary `model(**batch)` forward: the image processor slices a
large picture into a grid (up to `max_slice_nums` slices of about
`scale_resolution` pixels each), keeps the picture resized whole as the source,
and packs every crop's patches side by side (pixel_values (1, 3, patch, total),
`target_sizes` each crop's patch grid). The tower merges 2 x 2 patches once inside
(its window-attention merger), the merger again, so a crop of h x w patches is
h * w / 16 `<|image_pad|>` tokens (/ 4 with downsample_mode "4x"). In the text, as
MiniCPMV4_6Processor writes it: `<image_id>N</image_id>` (the image's place in its
row, with use_image_id), `<image>` + the source's tokens + `</image>`, then the
slices, `<slice>` + tokens + `</slice>` each, their rows joined by newlines.
MiniCPM-V 4.7's canvas M-RoPE also reads `mm_token_type_ids` (1 on image tokens).

The vision tower holds its window-attention merger; the projector is `model.merger`.
"""

from __future__ import annotations

from loratui.model.families.vision import VisionLanguageFamily, VisionProcessor

# The released checkpoints' markers (their tokenizer_config's extra_special_tokens).
IMAGE_START, IMAGE_END = "<image>", "</image>"
SLICE_START, SLICE_END = "<slice>", "</slice>"
IMAGE_ID_START, IMAGE_ID_END = "<image_id>", "</image_id>"
# The input projections of the language model's (Qwen3.5) linear-attention layers, beside the usual attention and
# MLP names: "all-linear" adapts them too, as peft's all-linear would.
LINEAR_ATTENTION_NAMES = ("in_proj_qkv", "in_proj_z", "in_proj_a", "in_proj_b")


class MiniCPMVNativeFamily(VisionLanguageFamily):
    name = "MiniCPM-V 4.x vision-language model"
    model_types = ("minicpmv4_6", "minicpmv4_7")
    parts = {"vision_tower": "model.vision_tower", "projector": "model.merger",
             "language_model": "model.language_model"}
    placeholder_text = "<|image_pad|>"
    image_token = "<|image_pad|>"

    def image_tokens(self, processor: VisionProcessor, width: int, height: int) -> int:
        source, slices, _ = _crop_tokens(processor.image_processor, width, height)
        return source + sum(slices)

    def image_expansion(self, processor: VisionProcessor, width: int, height: int, *, index: int) -> list[int]:
        source, slices, cols = _crop_tokens(processor.image_processor, width, height)
        text = f"{IMAGE_START}{self.image_token * source}{IMAGE_END}"
        if slices:
            crops = [f"{SLICE_START}{self.image_token * count}{SLICE_END}" for count in slices]
            text += "\n".join("".join(crops[start:start + cols]) for start in range(0, len(crops), cols))
        if processor.image_processor.use_image_id:
            text = f"{IMAGE_ID_START}{index}{IMAGE_ID_END}{text}"
        # Tokenized whole, as the processor tokenizes its text (the image number and newlines are plain text).
        return processor.tokenizer(text, add_special_tokens=False)["input_ids"]

    def image_inputs(self, processor: VisionProcessor, images: list, input_ids) -> dict:
        processed = processor.image_processor(images=images, return_tensors="pt")
        inputs = {"pixel_values": processed["pixel_values"], "target_sizes": processed["target_sizes"]}
        if processor.model_config.model_type == "minicpmv4_7":
            image_token_id = processor.tokenizer.convert_tokens_to_ids(self.image_token)
            inputs["mm_token_type_ids"] = (input_ids == image_token_id).long()
        return inputs

    def lora_targets(self, lora_config, vision_config) -> dict:
        import re

        targets = super().lora_targets(lora_config, vision_config)
        if lora_config.target_modules == "all-linear":
            linear_attention = rf"{re.escape(self.parts['language_model'])}\..*\.(?:{'|'.join(LINEAR_ATTENTION_NAMES)})"
            targets["target_modules"] = rf"(?:{targets['target_modules']})|(?:{linear_attention})"
        return targets

    def load_processor(self, path: str, *, trust_remote_code: bool) -> VisionProcessor:
        from loratui.errors import Problem, UserInputError

        processor = super().load_processor(path, trust_remote_code=trust_remote_code)
        vocabulary = processor.tokenizer.get_vocab()
        missing = [token for token in (IMAGE_START, IMAGE_END, SLICE_START, SLICE_END, IMAGE_ID_START, IMAGE_ID_END)
                   if token not in vocabulary]
        if missing:
            raise UserInputError(Problem("model.name_or_path", f"the tokenizer at {path} has no "
                                         f"{', '.join(missing)} token (MiniCPM-V 4.x's image markers)"))
        return processor


def _crop_tokens(image_processor, width: int, height: int) -> tuple[int, list[int], int]:
    """(the source's tokens, each slice's tokens, slices per row): the crops the image processor makes."""
    images = image_processor
    divisor = 4 if images.downsample_mode == "4x" else 16
    patch = images.patch_size
    grid = images.get_sliced_grid((height, width), images.max_slice_nums, images.scale_resolution) \
        if images.slice_mode else None
    source_height, source_width = images.find_best_resize((height, width), images.scale_resolution, patch,
                                                          images.downsample_mode, allow_upscale=grid is None)
    source = (source_height // patch) * (source_width // patch) // divisor
    if grid is None:
        return source, [], 0
    rows, cols = grid
    refine_height, refine_width = images.get_refine_size((height, width), grid, images.scale_resolution, patch,
                                                         images.downsample_mode, allow_upscale=True)
    per_slice = (refine_height // rows // patch) * (refine_width // cols // patch) // divisor
    return source, [per_slice] * (rows * cols), cols
