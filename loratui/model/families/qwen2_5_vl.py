"""Qwen2.5-VL: Qwen2-VL's input layout with a window-attention vision tower.

Its processor is Qwen2-VL's (the same Qwen2VLImageProcessor, 14 px patches merged
2 x 2, the same `<|vision_start|><|image_pad|><|vision_end|>` tokens, the same
`image_grid_thw` and `mm_token_type_ids` for multimodal rope), so everything but
the name is Qwen2VLFamily's. The tower's blocks, the merger and the language model
sit where Qwen2-VL has them. `second_per_grid_ts` is for videos only.
"""

from __future__ import annotations

from loratui.model.families.qwen2_vl import Qwen2VLFamily


class Qwen2_5_VLFamily(Qwen2VLFamily):
    name = "Qwen2.5-VL vision-language model"
    model_types = ("qwen2_5_vl",)
