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
As in the real model, every picture of the batch goes through the tower at once, in row
order, padded to the longest with the padding masked (tower and resampler), each patch
placed on the position table by its picture's grid. What it checks, the real model
fails on too (its scatter of features into the spans needs exactly query_num tokens per
picture). It is a few layers of random weights, loaded with trust_remote_code through
AutoModel.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2PreTrainedModel, SiglipVisionConfig, SiglipVisionModel
from transformers.modeling_outputs import BaseModelOutput


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


class VisionTower(SiglipVisionModel):
    """SigLIP entered as MiniCPM-V's tower is: every picture of the batch at once, patches side by side and
    zero-padded to the longest (B, 3, patch, L), `patch_attention_mask` (B, 1, L / patch) marking the real
    patches, whose grid `tgt_sizes` places each patch on the position table (scaled to the table's side)."""

    def forward(self, pixel_values, patch_attention_mask, tgt_sizes):
        embeddings = self.embeddings
        patches = embeddings.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
        real = patch_attention_mask[:, 0]
        side = self.config.image_size // self.config.patch_size
        positions = torch.zeros(real.shape, dtype=torch.long, device=pixel_values.device)
        for index, (height, width) in enumerate(tgt_sizes.tolist()):
            rows = torch.arange(height, device=positions.device) * side // height
            columns = torch.arange(width, device=positions.device) * side // width
            positions[index, :height * width] = (rows[:, None] * side + columns[None, :]).flatten()
        hidden = patches + embeddings.position_embedding(positions)
        padding = torch.zeros(real.shape, dtype=hidden.dtype, device=hidden.device)
        padding = padding.masked_fill(~real, torch.finfo(hidden.dtype).min)[:, None, None, :]
        hidden = self.encoder(inputs_embeds=hidden, attention_mask=padding).last_hidden_state
        return BaseModelOutput(last_hidden_state=self.post_layernorm(hidden))


class Resampler(nn.Module):
    def __init__(self, query_num: int, embed_dim: int, kv_dim: int, heads: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(query_num, embed_dim) * 0.02)
        self.kv_proj = nn.Linear(kv_dim, embed_dim, bias=False)
        self.attn = nn.MultiheadAttention(embed_dim, heads, batch_first=True)
        self.ln_q, self.ln_kv, self.ln_post = nn.LayerNorm(embed_dim), nn.LayerNorm(embed_dim), nn.LayerNorm(embed_dim)
        self.proj = nn.Parameter(torch.randn(embed_dim, embed_dim) * embed_dim ** -0.5)

    def forward(self, features, tgt_sizes):
        """Each picture's query_num features from its real patches (the padding after them is not attended)."""
        real = torch.arange(features.shape[1], device=features.device)[None, :] < \
            (tgt_sizes[:, 0] * tgt_sizes[:, 1])[:, None]
        keys = self.ln_kv(self.kv_proj(features))
        queries = self.ln_q(self.query).unsqueeze(0).expand(features.shape[0], -1, -1)
        out, _ = self.attn(queries, keys, keys, key_padding_mask=~real, need_weights=False)
        return self.ln_post(out) @ self.proj


class MiniCPMV(Qwen2PreTrainedModel):
    config_class = MiniCPMVConfig

    def __init__(self, config):
        super().__init__(config)
        self.llm = Qwen2ForCausalLM(config)
        vision = SiglipVisionConfig(**config.vision_config)
        self.vpm = VisionTower(vision)
        self.resampler = Resampler(config.query_num, config.hidden_size, vision.hidden_size,
                                   heads=max(1, config.hidden_size // 32))
        self.post_init()

    def get_input_embeddings(self):
        return self.llm.get_input_embeddings()

    def get_vllm_embedding(self, data):
        embeds = self.llm.get_input_embeddings()(data["input_ids"])
        patch = self.config.patch_size
        pictures = []  # (row, span, pixels, grid) of every picture, in row order
        for row, (row_pixels, row_sizes, row_bounds) in enumerate(zip(data["pixel_values"], data["tgt_sizes"],
                                                                      data["image_bound"])):
            if not (len(row_pixels) == len(row_sizes) == len(row_bounds)):
                raise ValueError(f"row {row}: {len(row_pixels)} pictures, {len(row_sizes)} tgt_sizes, "
                                 f"{len(row_bounds)} image_bound spans")
            for pixels, size, span in zip(row_pixels, row_sizes, row_bounds):
                height, width = (int(value) for value in size)
                # Longer is padding the mask leaves out, as in the real tower; shorter is a picture cut off.
                if pixels.shape[1] != patch or pixels.shape[-1] < height * width * patch:
                    raise ValueError(f"row {row}: pixels {tuple(pixels.shape)} hold no {height} x {width} patch grid")
                if int(span[1]) - int(span[0]) != self.config.query_num:
                    raise ValueError(f"row {row}: image_bound {span.tolist()} does not span query_num tokens")
                pictures.append((row, span, pixels, size))
        if not pictures:
            return embeds
        longest = max(pixels.shape[-1] for _, _, pixels, _ in pictures)
        pixels = torch.stack([nn.functional.pad(pixels, (0, longest - pixels.shape[-1]))
                              for _, _, pixels, _ in pictures]).to(embeds.dtype)
        grids = torch.stack([size for *_, size in pictures]).long().to(embeds.device)
        real = torch.arange(longest // patch, device=embeds.device)[None, :] < (grids[:, 0] * grids[:, 1])[:, None]
        hidden = self.vpm(pixels, patch_attention_mask=real[:, None, :], tgt_sizes=grids).last_hidden_state
        features = self.resampler(hidden, grids)
        embeds = embeds.clone()
        for (row, span, _, _), feature in zip(pictures, features):
            embeds[row, int(span[0]):int(span[1])] = feature.to(embeds.dtype)
        return embeds

    def forward(self, data, **kwargs):
        embeds = self.get_vllm_embedding(data)
        return self.llm(input_ids=None, position_ids=data["position_ids"], inputs_embeds=embeds, **kwargs)
