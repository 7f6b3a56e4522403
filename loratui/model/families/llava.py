"""LLaVA-layout models (LLaVA 1.5 and the built-in tiny-vlm): one image token per vision feature.

The image processor resizes every picture to the tower's fixed size, so each image
is the same number of tokens and pixel values stack as (B, 3, H, W).
"""

from __future__ import annotations

from loratui.model.families.vision import VisionLanguageFamily, VisionProcessor


class LlavaFamily(VisionLanguageFamily):
    name = "LLaVA vision-language model"
    model_types = ("llava",)
    parts = {"vision_tower": "model.vision_tower", "projector": "model.multi_modal_projector",
             "language_model": "model.language_model"}
    placeholder_text = "<image>"
    image_token = "<image>"

    def image_tokens(self, processor: VisionProcessor, width: int, height: int) -> int:
        config = processor.model_config
        vision = config.vision_config
        patches = (vision.image_size // vision.patch_size) ** 2
        # CLIP towers add a CLS feature that the "default" strategy drops; SigLIP towers have none.
        features = patches + int(vision.model_type == "clip_vision_model")
        return features - int(config.vision_feature_select_strategy == "default")

    def image_inputs(self, processor: VisionProcessor, images: list, input_ids) -> dict:
        return {"pixel_values": processor.image_processor(images=images, return_tensors="pt")["pixel_values"]}
