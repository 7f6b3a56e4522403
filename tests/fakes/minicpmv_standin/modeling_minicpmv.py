"""A STAND-IN for MiniCPM-V-2_6's remote code (openbmb/MiniCPM-V-2_6, modeling_minicpmv.py), for tests only.

MiniCPM-V-2_6's own code and weights cannot exist offline here. This tiny model has
the same interface, which is what loratui's MiniCPM-V family adapter relies on:
- `model(data={...}, **kwargs)` where `data` holds `input_ids`, `position_ids`,
  `pixel_values` (per row, a list of pictures: each image's source and its slices,
  each (3, patch_size, L) with its own L: the patches laid side by side as MiniCPM-V's
  processor does), `tgt_sizes` (per row, a (k, 2) tensor: each picture's patch grid
  (h, w), h * w * patch_size == L) and `image_bound` (per row, a (k, 2) tensor: the
  [start, end) span of the query_num tokens each picture's features replace); rows
  without images have empty lists; `**kwargs` (labels, attention_mask) go to the
  language model, which computes the loss;
- the parts `vpm` (a SigLIP vision transformer), `resampler` (learned queries that
  cross-attend to the patches: a perceiver resampler) and `llm` (a Qwen2 causal LM);
- 2.6's config keys: query_num, slice_mode, slice_config (max_slice_nums,
  scale_resolution, patch_size), use_image_id, version.
What it checks, the real model fails on too (its scatter of features into the spans
needs exactly query_num tokens per picture). Unlike the real tower, which pads the
pictures and masks the padding, it runs pictures of one size together; it is a few
layers of random weights, loaded with trust_remote_code through AutoModel.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2PreTrainedModel, SiglipVisionConfig, SiglipVisionModel


class MiniCPMVConfig(Qwen2Config):
    model_type = "minicpmv"

    def __init__(self, vision_config=None, query_num=4, patch_size=14, image_size=28, slice_mode=True,
                 slice_config=None, use_image_id=True, version=2.6, **kwargs):
        self.vision_config = vision_config or {}
        self.query_num = query_num
        self.patch_size = patch_size
        self.image_size = image_size
        self.slice_mode = slice_mode
        self.slice_config = slice_config or {"max_slice_nums": 9, "scale_resolution": image_size,
                                             "patch_size": patch_size}
        self.use_image_id = use_image_id
        self.version = version
        super().__init__(**kwargs)


class Resampler(nn.Module):
    def __init__(self, query_num: int, embed_dim: int, kv_dim: int, heads: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(query_num, embed_dim) * 0.02)
        self.kv_proj = nn.Linear(kv_dim, embed_dim, bias=False)
        self.attn = nn.MultiheadAttention(embed_dim, heads, batch_first=True)
        self.ln_q, self.ln_kv, self.ln_post = nn.LayerNorm(embed_dim), nn.LayerNorm(embed_dim), nn.LayerNorm(embed_dim)
        self.proj = nn.Parameter(torch.randn(embed_dim, embed_dim) * embed_dim ** -0.5)

    def forward(self, features):
        keys = self.ln_kv(self.kv_proj(features))
        queries = self.ln_q(self.query).unsqueeze(0).expand(features.shape[0], -1, -1)
        out, _ = self.attn(queries, keys, keys, need_weights=False)
        return self.ln_post(out) @ self.proj


class MiniCPMV(Qwen2PreTrainedModel):
    config_class = MiniCPMVConfig

    def __init__(self, config):
        super().__init__(config)
        self.llm = Qwen2ForCausalLM(config)
        vision = SiglipVisionConfig(**config.vision_config)
        self.vpm = SiglipVisionModel(vision)
        self.resampler = Resampler(config.query_num, config.hidden_size, vision.hidden_size,
                                   heads=max(1, config.hidden_size // 32))
        self.post_init()

    def get_input_embeddings(self):
        return self.llm.get_input_embeddings()

    def get_vllm_embedding(self, data):
        embeds = self.llm.get_input_embeddings()(data["input_ids"])
        pictures = []  # (row, span, pixels, grid) of every picture, in row order
        for row, (row_pixels, row_sizes, row_bounds) in enumerate(zip(data["pixel_values"], data["tgt_sizes"],
                                                                      data["image_bound"])):
            if not (len(row_pixels) == len(row_sizes) == len(row_bounds)):
                raise ValueError(f"row {row}: {len(row_pixels)} pictures, {len(row_sizes)} tgt_sizes, "
                                 f"{len(row_bounds)} image_bound spans")
            for pixels, size, span in zip(row_pixels, row_sizes, row_bounds):
                grid = (int(size[0]), int(size[1]))
                if pixels.shape[-1] != grid[0] * grid[1] * self.config.patch_size:
                    raise ValueError(f"row {row}: pixels {tuple(pixels.shape)} are not a {grid} patch grid")
                if int(span[1]) - int(span[0]) != self.config.query_num:
                    raise ValueError(f"row {row}: image_bound {span.tolist()} does not span query_num tokens")
                pictures.append((row, span, pixels, grid))
        if not pictures:
            return embeds
        features = [None] * len(pictures)
        for grid in sorted({grid for *_, grid in pictures}):
            same = [index for index, (*_, other) in enumerate(pictures) if other == grid]
            batch = torch.stack([self._picture(pictures[index][2], grid) for index in same]).to(embeds.dtype)
            hidden = self.vpm(batch, interpolate_pos_encoding=True).last_hidden_state
            for index, feature in zip(same, self.resampler(hidden)):
                features[index] = feature
        embeds = embeds.clone()
        for (row, span, _, _), feature in zip(pictures, features):
            embeds[row, int(span[0]):int(span[1])] = feature.to(embeds.dtype)
        return embeds

    def _picture(self, pixels, grid):
        """(3, patch, h*w*patch) back to (3, h*patch, w*patch): the inverse of the processor's reshape_by_patch."""
        patch, (h, w) = self.config.patch_size, grid
        patches = pixels.reshape(3, patch, h * w, patch).permute(0, 2, 1, 3)
        return patches.reshape(3, h, w, patch, patch).permute(0, 1, 3, 2, 4).reshape(3, h * patch, w * patch)

    def forward(self, data, **kwargs):
        embeds = self.get_vllm_embedding(data)
        return self.llm(input_ids=None, position_ids=data["position_ids"], inputs_embeds=embeds, **kwargs)
