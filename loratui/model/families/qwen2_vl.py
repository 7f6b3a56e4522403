"""Qwen2-VL-layout models (Qwen2-VL and the built-in tiny-qwen2-vl).

Images keep their aspect ratio: each is resized to multiples of patch x merge
within the processor's pixel range, cut into patches, and the patches of every
image in the batch are concatenated, `image_grid_thw` giving each one's grid.
The merger joins merge x merge patches into one token, so an image is
(h / patch) * (w / patch) / merge^2 `<|image_pad|>` tokens between
<|vision_start|> and <|vision_end|>. Multimodal rope reads `mm_token_type_ids`
(1 on image tokens).
"""

from __future__ import annotations

from loratui.model.families.vision import VisionLanguageFamily, VisionProcessor


class Qwen2VLFamily(VisionLanguageFamily):
    name = "Qwen2-VL vision-language model"
    model_types = ("qwen2_vl",)
    # The merger sits inside the visual module: it is matched first.
    parts = {"projector": "model.visual.merger", "vision_tower": "model.visual",
             "language_model": "model.language_model"}
    placeholder_text = "<|vision_start|><|image_pad|><|vision_end|>"
    image_token = "<|image_pad|>"

    def image_tokens(self, processor: VisionProcessor, width: int, height: int) -> int:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        images = processor.image_processor
        resized_height, resized_width = smart_resize(height, width, factor=images.patch_size * images.merge_size,
                                                     min_pixels=images.size["shortest_edge"],
                                                     max_pixels=images.size["longest_edge"])
        return (resized_height // images.patch_size) * (resized_width // images.patch_size) // images.merge_size ** 2

    def image_inputs(self, processor: VisionProcessor, images: list, input_ids) -> dict:
        processed = processor.image_processor(images=images, return_tensors="pt")
        image_token_id = processor.tokenizer.convert_tokens_to_ids(self.image_token)
        return {"pixel_values": processed["pixel_values"], "image_grid_thw": processed["image_grid_thw"],
                "mm_token_type_ids": (input_ids == image_token_id).long()}
