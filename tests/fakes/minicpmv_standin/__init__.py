"""Build the MiniCPM-V-2_6 stand-in (a test fake: see modeling_minicpmv.py) as a remote-code model directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 99
# MiniCPM-V-2_6's image tokens: source image, slices, image ids, and the query token its features replace.
IMAGE_TOKENS = ["<image>", "</image>", "<unk>", "<slice>", "</slice>", "<image_id>", "</image_id>"]


def build_standin(out_dir: Path, *, slice_mode: bool = True, max_slice_nums: int = 3, use_image_id: bool = True,
                  version: float | None = 2.6) -> Path:
    """A model directory like openbmb/MiniCPM-V-2_6's: config.json with auto_map and 2.6's slicing keys, its
    code, weights, tokenizer, and a preprocessor_config.json with the slicing settings its processor reads.

    Tiny sizes: 28 px pictures (2 x 2 patches of 14), 4 queries each; max_slice_nums 3 cuts the 56 px
    shapes pictures into a source and 2 slices of 3 x 1 patches (pictures of two sizes in one batch).
    """
    import importlib.util

    import torch

    from loratui.model.builtin_vlm import train_vlm_tokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = train_vlm_tokenizer(IMAGE_TOKENS)
    tokenizer.save_pretrained(out_dir)
    spec = importlib.util.spec_from_file_location("minicpmv_standin_modeling", HERE / "modeling_minicpmv.py")
    modeling = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(modeling)
    slicing = {"max_slice_nums": max_slice_nums, "scale_resolution": 28, "patch_size": 14}
    config = modeling.MiniCPMVConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14, vision_use_head=False),
        query_num=4, patch_size=14, image_size=28, slice_mode=slice_mode, slice_config=slicing,
        use_image_id=use_image_id, version=version, vocab_size=len(tokenizer), hidden_size=64,
        intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None, tie_word_embeddings=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = modeling.MiniCPMV(config)
    model.save_pretrained(out_dir, safe_serialization=True)
    shutil.copy(HERE / "modeling_minicpmv.py", out_dir / "modeling_minicpmv.py")
    saved = json.loads((out_dir / "config.json").read_text())
    saved["auto_map"] = {"AutoConfig": "modeling_minicpmv.MiniCPMVConfig", "AutoModel": "modeling_minicpmv.MiniCPMV"}
    (out_dir / "config.json").write_text(json.dumps(saved, indent=2))
    preprocessor = {**slicing, "image_feature_size": 4, "slice_mode": slice_mode, "use_image_id": use_image_id,
                    "norm_mean": [0.5, 0.5, 0.5], "norm_std": [0.5, 0.5, 0.5]}
    if version is not None:
        preprocessor["version"] = version
    (out_dir / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    return out_dir
