"""LLaVA-NeXT (LLaVA 1.6) models: "anyres" images, a grid of tiles plus the whole picture.

The image processor picks the grid resolution (from `image_grid_pinpoints`) that
keeps most of the picture, resizes and pads it into that grid, cuts it into tiles
of the tower's size and puts the picture resized whole in front: pixel values are
(images, tiles, 3, H, W), zero-padded to the batch's most tiles, with `image_sizes`
(height, width) so the model knows each image's grid. The model lays the grid's
features out as one feature map, removes the rows or columns that are padding,
ends each row with the learned `image_newline` and appends the whole picture's
features. So an image is (unpadded rows x (columns + 1)) + one tile's features
`<image>` tokens: the count LlavaNextProcessor computes, derived below the same way.
"""

from __future__ import annotations

from loratui.model.families.vision import VisionLanguageFamily, VisionProcessor


class LlavaNextFamily(VisionLanguageFamily):
    name = "LLaVA-NeXT vision-language model"
    model_types = ("llava_next",)
    parts = {"vision_tower": "model.vision_tower", "projector": "model.multi_modal_projector",
             "language_model": "model.language_model"}
    placeholder_text = "<image>"
    image_token = "<image>"
    # A parameter of the model itself, not a module: the row separator belongs with the projector's output.
    image_newline = "model.image_newline"

    def image_tokens(self, processor: VisionProcessor, width: int, height: int) -> int:
        from transformers.image_processing_utils import select_best_resolution

        config, images = processor.model_config, processor.image_processor
        tile = _tile_size(images)
        grid_height, grid_width = select_best_resolution((height, width), images.image_grid_pinpoints)
        per_tile = tile // config.vision_config.patch_size  # features along a tile's side
        rows, cols = per_tile * (grid_height // tile), per_tile * (grid_width // tile)
        # The picture was fitted into the grid keeping its aspect ratio and padded evenly on the short side:
        # the padding's feature rows (or columns) are dropped, as the model's unpad_image does.
        if width / height > cols / rows:
            rows -= 2 * ((rows - int(round(height * (cols / width), 7))) // 2)
        else:
            cols -= 2 * ((cols - int(round(width * (rows / height), 7))) // 2)
        whole_picture = per_tile * per_tile
        # CLIP towers add a CLS feature to every tile that the "default" strategy drops; SigLIP towers have none.
        extra = int(config.vision_config.model_type == "clip_vision_model")
        return rows * cols + rows + whole_picture + extra - int(config.vision_feature_select_strategy == "default")

    def image_inputs(self, processor: VisionProcessor, images: list, input_ids) -> dict:
        processed = processor.image_processor(images=images, return_tensors="pt")
        return {"pixel_values": processed["pixel_values"], "image_sizes": processed["image_sizes"]}

    def part_of(self, module_name: str) -> str:
        if module_name.removeprefix("base_model.model.") == self.image_newline:
            return "projector"
        return super().part_of(module_name)


def _tile_size(image_processor) -> int:
    """The side of one (square) tile, as the image processor cuts them: its crop size, else its resize size."""
    for size in (image_processor.crop_size, image_processor.size):
        side = size and (size.get("height") or size.get("shortest_edge"))
        if side:
            return side
    raise ValueError("the LLaVA-NeXT image processor has neither crop_size nor size")
