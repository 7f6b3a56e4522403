"""Memory planning before launch (`loratui check`): the parts, fits-or-not, and the change that makes it fit.

Large models are described by their config.json alone (nothing downloaded, no
weights): Llama-3-8B's published sizes, and MiniCPM-V-2_6's, whose remote code
transformers cannot build here, so its sizes are counted from the config.
"""

import json

import pytest

from helpers import make_config
from loratui.cli import main

LLAMA_8B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
            "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
# MiniCPM-V-2_6's config.json (Qwen2-7B language model, SigLIP-400M tower, 64 resampler queries per slice).
MINICPM_V_2_6 = {"architectures": ["MiniCPMV"], "model_type": "minicpmv", "hidden_size": 3584,
                 "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
                 "num_key_value_heads": 4, "vocab_size": 151666, "tie_word_embeddings": False,
                 "query_num": 64, "slice_mode": True, "use_image_id": True, "version": 2.6,
                 "slice_config": {"max_slice_nums": 9, "patch_size": 14, "scale_resolution": 448},
                 "vision_config": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                                   "patch_size": 14, "image_size": 980, "model_type": "siglip_vision_model"}}
GIB = 1 << 30


def model_dir(tmp_path, name: str, model_config: dict):
    path = tmp_path / name
    path.mkdir()
    (path / "config.json").write_text(json.dumps(model_config))
    return path


def test_an_8b_model_does_not_fit_16_gib_and_check_names_the_fix(tmp_path, capsys):
    path = model_dir(tmp_path, "llama-8b", LLAMA_8B)
    config = tmp_path / "config.toml"
    config.write_text(f'[model]\nname_or_path = "{path}"\n[train]\nprecision = "fp16"\nbatch_size = 4\n'
                      f'[data]\nmax_length = 512\n')
    assert main(["check", str(config), "--device-memory", "16"]) == 0
    out = capsys.readouterr().out
    assert "memory estimate (fp16, quantization none):" in out
    assert "base weights: 14.96 GiB" in out  # 8.03e9 parameters in 2 bytes
    assert "does NOT fit: a 16 GiB device (--device-memory) has 16.00 GiB" in out
    fixes = out.split("to fit, change:")[1]
    assert 'model.quantization = "nf4"' in fixes
    # Fixes are estimated again with the change applied, and each one listed fits.
    for line in fixes.strip().splitlines():
        size, unit = line.rsplit("-> ", 1)[1].split()
        assert float(size) * (GIB if unit == "GiB" else 1 << 20) <= 16 * GIB * 0.9


def test_the_same_8b_config_fits_an_80_gib_device(tmp_path, capsys):
    path = model_dir(tmp_path, "llama-8b", LLAMA_8B)
    config = make_config(tmp_path, [f'model.name_or_path="{path}"', 'train.precision="bf16"',
                                    "train.batch_size=1", "data.max_length=512"])
    from loratui.model.memory_plan import plan_for_config, render

    result = plan_for_config(config, "bf16", 80 * GIB, "an 80 GiB device")
    assert result.fits and result.fixes == []
    assert render(result)[-1].startswith("fits: an 80 GiB device has 80.00 GiB")


def test_quantization_and_checkpointing_shrink_what_they_should(tmp_path):
    from loratui.model.memory_plan import estimate, model_shape

    shape = model_shape(LLAMA_8B, make_config(tmp_path).lora)
    plain = make_config(tmp_path, ['train.precision="bf16"', "train.batch_size=2", "data.max_length=1024"])
    nf4 = make_config(tmp_path, ['train.precision="bf16"', "train.batch_size=2", "data.max_length=1024",
                                 'model.quantization="nf4"'])
    nf4_single = make_config(tmp_path, ['train.precision="bf16"', "train.batch_size=2", "data.max_length=1024",
                                        'model.quantization="nf4"', "model.double_quant=false"])
    checkpointed = make_config(tmp_path, ['train.precision="bf16"', "train.batch_size=2", "data.max_length=1024",
                                          "train.gradient_checkpointing=true"])
    full, quantized = estimate(shape, plain, "bf16"), estimate(shape, nf4, "bf16")
    # The linear layers go from 2 bytes to about 0.53 per weight; embeddings and the output layer stay bf16.
    assert quantized.parts["base weights (nf4)"] == pytest.approx(shape.linear_weights * 0.516, rel=0.01)
    assert quantized.parts["base weights kept unquantized"] == pytest.approx(2 * 128256 * 4096 * 2, rel=0.01)
    assert estimate(shape, nf4_single, "bf16").parts["base weights (nf4)"] > quantized.parts["base weights (nf4)"]
    assert quantized.parts["activations"] == full.parts["activations"]
    lighter = estimate(shape, checkpointed, "bf16")
    assert lighter.parts["activations"] < full.parts["activations"] / 10
    assert lighter.parts["base weights"] == full.parts["base weights"]


def test_sizes_counted_from_a_config_match_the_model_built_on_the_meta_device(tmp_path):
    """The counting that serves remote-code models agrees with transformers' own Llama, parameter for parameter."""
    from loratui.model.memory_plan import _counted_shape, model_shape

    lora = make_config(tmp_path, ['lora.target_modules=["q_proj", "v_proj"]', "lora.r=16"]).lora
    built, counted = model_shape(LLAMA_8B, lora), _counted_shape(LLAMA_8B, LLAMA_8B, lora)
    assert built.params == counted.params == 8_030_261_248
    assert built.linear_weights == counted.linear_weights
    assert built.norm_params == counted.norm_params
    assert built.lora_params == counted.lora_params == 32 * 16 * ((4096 + 4096) + (4096 + 1024))


def test_a_vision_language_model_keeps_its_tower_unquantized_and_counts_image_tokens(tmp_path, capsys):
    path = model_dir(tmp_path, "minicpm-v-2_6", MINICPM_V_2_6)
    config = tmp_path / "config.toml"
    config.write_text(f'[model]\nname_or_path = "{path}"\nquantization = "nf4"\n[train]\nprecision = "fp16"\n'
                      f'batch_size = 1\ngradient_checkpointing = true\n[data]\nmax_length = 2048\n')
    assert main(["check", str(config), "--device-memory", "16"]) == 0
    out = capsys.readouterr().out
    assert "each image is 640 language-model tokens" in out  # 64 queries x (1 + 9 slices)
    from loratui.config import load_config
    from loratui.model.memory_plan import estimate, model_shape

    loaded = load_config(config, [])
    shape = model_shape(MINICPM_V_2_6, loaded.lora)
    assert shape.vision_params > 350_000_000 and shape.image_tokens == 640
    planned = estimate(shape, loaded, "fp16")
    assert planned.parts["vision tower"] == shape.vision_params * 2  # fp16, not 4-bit
    # The language model's linear layers are 4-bit: about 0.52 bytes a weight.
    assert planned.parts["base weights (nf4)"] == pytest.approx(shape.linear_weights * 0.516, rel=0.01)


def test_minicpm_v_2_5_keeps_its_slice_count_at_the_top_level():
    from loratui.model.memory_plan import _image_tokens

    older = {key: value for key, value in MINICPM_V_2_6.items() if key not in ("slice_config", "version")}
    assert _image_tokens(dict(older, max_slice_nums=9)) == 640
    assert _image_tokens(dict(older, max_slice_nums=9, slice_mode=False)) == 64


def test_device_memory_must_be_a_size(tmp_path, capsys):
    config = tmp_path / "config.toml"
    config.write_text("")
    assert main(["check", str(config), "--device-memory", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--device-memory" in err and "positive number of GiB" in err


def test_the_dashboards_event_list_sets_the_measured_peak_beside_the_estimate():
    from loratui.ui.run_model import RunModel

    model = RunModel("run")
    model.apply_events([
        {"type": "run_started", "time": 1.0, "attempt": 0, "step": 0, "precision": "bf16", "config": {}},
        {"type": "run_finished", "time": 2.0, "attempt": 0, "step": 2, "reason": "completed",
         "mem_estimate_mib": 900.0, "mem_peak_measured_mib": 1100.0, "mem_peak_measured_as": "cuda allocated"}])
    assert model.entries[-1].text == ("run finished at step 2: completed; memory peak 1.1 GiB (cuda allocated), "
                                      "estimated 900 MiB")
