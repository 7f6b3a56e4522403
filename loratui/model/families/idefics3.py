"""Idefics3 models: a large picture split into tiles named by their row and column, plus the whole picture.

The image processor resizes the picture's longest edge to `size`, then (with
`do_image_splitting`) to multiples of the tower's `max_image_size` and cuts it into
rows x cols tiles of that size, adding the whole picture shrunk to one tile; a
picture no larger than one tile is not split. Each tile becomes `image_seq_len`
features after the connector's pixel shuffle: (image_size / patch_size)^2 / scale_factor^2.
In the text, as Idefics3Processor writes it, each tile is
`<fake_token_around_image><row_r_col_c>` + its `<image>` tokens, each row of tiles
ends with a newline, and the whole picture follows as
`\\n<fake_token_around_image><global-img>` + its `<image>` tokens + `<fake_token_around_image>`.
Tiles are zero-padded to the batch's largest with `pixel_attention_mask` saying
which pixels are real.
"""

from __future__ import annotations

from loratui.model.families.vision import VisionLanguageFamily, VisionProcessor

AROUND_IMAGE = "<fake_token_around_image>"
GLOBAL_IMAGE = "<global-img>"


class Idefics3Family(VisionLanguageFamily):
    name = "Idefics3 vision-language model"
    model_types = ("idefics3",)
    parts = {"vision_tower": "model.vision_model", "projector": "model.connector",
             "language_model": "model.text_model"}
    placeholder_text = "<image>"
    image_token = "<image>"

    def image_tokens(self, processor: VisionProcessor, width: int, height: int) -> int:
        rows, cols = _tile_grid(processor, width, height)
        return _tile_tokens(processor) * (rows * cols + 1)  # every tile and the whole picture

    def image_expansion(self, processor: VisionProcessor, width: int, height: int, *, index: int) -> list[int]:
        rows, cols = _tile_grid(processor, width, height)
        features = self.image_token * _tile_tokens(processor)
        whole = f"{AROUND_IMAGE}{GLOBAL_IMAGE}{features}{AROUND_IMAGE}"
        if rows and cols:
            tiles = "".join("".join(f"{AROUND_IMAGE}<row_{row + 1}_col_{col + 1}>{features}" for col in range(cols))
                            + "\n" for row in range(rows))
            whole = f"{tiles}\n{whole}"
        # Tokenized whole, as the processor tokenizes its text: newlines between tiles merge as they would there.
        return processor.tokenizer(whole, add_special_tokens=False)["input_ids"]

    def image_inputs(self, processor: VisionProcessor, images: list, input_ids) -> dict:
        # The model feeds every real tile to the tower and writes the features into the `<image>` tokens in
        # reading order, so the batch's pictures go in as one group: no padding tiles between rows.
        processed = processor.image_processor(images=[images], return_tensors="pt")
        return {"pixel_values": processed["pixel_values"], "pixel_attention_mask": processed["pixel_attention_mask"]}

    def load_processor(self, path: str, *, trust_remote_code: bool) -> VisionProcessor:
        from loratui.errors import Problem, UserInputError

        processor = super().load_processor(path, trust_remote_code=trust_remote_code)
        vocabulary = processor.tokenizer.get_vocab()
        rows, cols = _most_tiles(processor.image_processor)
        missing = [token for token in (AROUND_IMAGE, GLOBAL_IMAGE, f"<row_{rows}_col_{cols}>")
                   if token not in vocabulary]
        if missing:
            raise UserInputError(Problem("model.name_or_path", f"the tokenizer at {path} has no "
                                         f"{', '.join(missing)} token (Idefics3's image layout)"))
        return processor


def _tile_tokens(processor: VisionProcessor) -> int:
    """Features per tile: the tower's patches, fewer by scale_factor^2 after the connector's pixel shuffle."""
    config = processor.model_config
    side = config.vision_config.image_size // config.vision_config.patch_size
    return side * side // config.scale_factor ** 2


def _tile_grid(processor: VisionProcessor, width: int, height: int) -> tuple[int, int]:
    """(rows, cols) of tiles, (0, 0) for a picture left whole: the image processor's own reckoning."""
    _, rows, cols = processor.image_processor.get_number_of_image_patches(height, width, {})
    return rows, cols


def _most_tiles(image_processor) -> tuple[int, int]:
    """The largest grid this image processor cuts (its size over its tile size, per side), at least 1 x 1."""
    if not image_processor.do_image_splitting:
        return 1, 1
    per_side = -(-image_processor.size["longest_edge"] // image_processor.max_image_size["longest_edge"])
    return per_side, per_side
