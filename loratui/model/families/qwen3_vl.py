"""Qwen3-VL and Qwen3-VL-MoE: Qwen2-VL's input layout with 16 px patches and deepstack mergers.

Its processor still uses Qwen2VLImageProcessor (patch_size 16 in its
preprocessor_config, merged 2 x 2: an image of h x w pixels is (h/16)(w/16)/4
`<|image_pad|>` tokens, read from the image processor as Qwen2VLFamily does) and
`mm_token_type_ids` for its interleaved multimodal rope.

Parts: the merger that turns the last block's patches into tokens is the projector.
The deepstack mergers (`model.visual.deepstack_merger_list`, which feed features of
intermediate blocks to the first language-model layers) are counted with the vision
tower, as a part is one module prefix and they sit among the tower's own modules;
so [vision] projector = "full" trains the final merger, and the deepstack mergers
train with the tower (tower = "full" or "lora").

The MoE models differ only in their language model: its experts are stacked weights,
not Linear modules, so LoRA reaches the attention projections of those layers (and
the MLPs of any dense layers), as peft's module matching does for any MoE model.
"""

from __future__ import annotations

from loratui.model.families.qwen2_vl import Qwen2VLFamily


class Qwen3VLFamily(Qwen2VLFamily):
    name = "Qwen3-VL vision-language model"
    model_types = ("qwen3_vl", "qwen3_vl_moe")
