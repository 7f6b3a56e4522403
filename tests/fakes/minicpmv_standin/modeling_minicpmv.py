"""A STAND-IN for MiniCPM-V-2_6's remote code (openbmb/MiniCPM-V-2_6, modeling_minicpmv.py), for tests only.

MiniCPM-V-2_6's own code and weights cannot exist offline here. This tiny model has
the same interface, which is what loratui's MiniCPM-V family adapter relies on:
- `model(data={...}, **kwargs)` where `data` holds `input_ids`, `position_ids`,
  `pixel_values` (per row, a list of images, each (3, patch_size, L): the patches laid
  side by side as MiniCPM-V's processor does), `tgt_sizes` (per row, each image's patch
  grid (h, w)) and `image_bound` (per row, the [start, end) spans of the query tokens
  each image's features replace); `**kwargs` (labels, attention_mask) go to the
  language model, which computes the loss;
- the parts `vpm` (a SigLIP vision transformer), `resampler` (learned queries that
  cross-attend to the patches: a perceiver resampler) and `llm` (a Qwen2 causal LM).
It does not slice large images (the real processor adds up to 9 slices) and is a few
layers of random weights; it is loaded with trust_remote_code through AutoModel.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2PreTrainedModel, SiglipVisionConfig, SiglipVisionModel


class MiniCPMVConfig(Qwen2Config):
    model_type = "minicpmv"

    def __init__(self, vision_config=None, query_num=4, patch_size=14, scale_resolution=28, **kwargs):
        self.vision_config = vision_config or {}
        self.query_num = query_num
        self.patch_size = patch_size
        self.scale_resolution = scale_resolution
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
        patch = self.config.patch_size
        images = [(row, pixels, size) for row, (row_pixels, row_sizes) in
                  enumerate(zip(data["pixel_values"], data["tgt_sizes"])) for pixels, size in zip(row_pixels, row_sizes)]
        if not images:
            return embeds
        # (3, patch, h*w*patch) back to (3, h*patch, w*patch): the inverse of the processor's reshape_by_patch.
        pictures = []
        for _, pixels, (h, w) in images:
            patches = pixels.reshape(3, patch, int(h) * int(w), patch).permute(0, 2, 1, 3)
            grid = patches.reshape(3, int(h), int(w), patch, patch).permute(0, 1, 3, 2, 4)
            pictures.append(grid.reshape(3, int(h) * patch, int(w) * patch))
        features = self.resampler(self.vpm(torch.stack(pictures).to(embeds.dtype)).last_hidden_state)
        bounds = [span for row_bounds in data["image_bound"] for span in row_bounds]
        rows = [row for row, _, _ in images]
        embeds = embeds.clone()
        for (start, end), row, feature in zip(bounds, rows, features):
            embeds[row, int(start):int(end)] = feature.to(embeds.dtype)
        return embeds

    def forward(self, data, **kwargs):
        embeds = self.get_vllm_embedding(data)
        return self.llm(input_ids=None, position_ids=data["position_ids"], inputs_embeds=embeds, **kwargs)
