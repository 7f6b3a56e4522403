"""The quantized base's parts on their own: the bitsandbytes config, the offline import, the 4-bit weights.

bitsandbytes runs for real here (its CPU backend). The one fake is a broken
`bitsandbytes` package put first on PYTHONPATH, standing for a machine where it
cannot load, to see `loratui check` refuse a quantized config with exit 2.
"""

import subprocess
import sys

import pytest

from helpers import ROOT, loratui_cli

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("precision,dtype", [("fp32", "float32"), ("bf16", "bfloat16"), ("fp16", "float16")])
def test_nf4_computes_in_the_runs_precision(precision, dtype):
    from loratui.model.quantization import bnb_config

    config = bnb_config("nf4", precision, double_quant=True)
    assert config.load_in_4bit and not config.load_in_8bit
    assert config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_compute_dtype == getattr(torch, dtype)
    assert config.bnb_4bit_use_double_quant is True
    assert bnb_config("nf4", precision, double_quant=False).bnb_4bit_use_double_quant is False


def test_int8_and_none():
    from loratui.model.quantization import bnb_config

    assert bnb_config("int8", "fp16", double_quant=True).load_in_8bit
    assert bnb_config("none", "bf16", double_quant=True) is None


def test_bitsandbytes_imports_offline_and_quietly():
    """Importing it must not ask the Hub for a kernel (it tries on AVX512-BF16 CPUs) nor warn about it."""
    code = ("from loratui.model.quantization import import_bitsandbytes, bitsandbytes_problem\n"
            "import_bitsandbytes()\n"
            "import sys, peft\n"  # peft imports bitsandbytes itself: after ours, it is the same module
            "assert bitsandbytes_problem() is None\n"
            "print('kernels' in sys.modules and sys.modules['kernels'] is not None)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "kernels-community" not in done.stderr and "gemm_4bit" not in done.stderr


def test_check_refuses_a_quantized_config_where_bitsandbytes_cannot_load(tmp_path):
    fake = tmp_path / "fake" / "bitsandbytes"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise OSError("libbitsandbytes_cpu.so: cannot open shared object file")\n')
    config = tmp_path / "config.toml"
    config.write_text('[model]\nquantization = "nf4"\n')
    done = loratui_cli("check", str(config), env={"PYTHONPATH": str(fake.parent)})
    assert done.returncode == 2, done.stdout + done.stderr
    assert 'model.quantization = "nf4": bitsandbytes cannot be imported here' in done.stderr
    assert "libbitsandbytes_cpu.so" in done.stderr and "Traceback" not in done.stderr
    assert 'model.quantization = "none"' in done.stderr  # the way out
    # The same config without quantization is fine on that machine.
    done = loratui_cli("check", str(config), "--set", 'model.quantization="none"',
                       env={"PYTHONPATH": str(fake.parent)})
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def quantized_models():
    from transformers import AutoModelForCausalLM

    from loratui.model.loading import resolve_model_path
    from loratui.model.quantization import bnb_config, import_bitsandbytes, prepare_for_kbit_training

    import_bitsandbytes()
    path = resolve_model_path("builtin:tiny-llama")
    models = {}
    for quantization in ("nf4", "int8"):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map="cpu",
                                                     quantization_config=bnb_config(quantization, "bf16",
                                                                                    double_quant=True))
        models[quantization] = prepare_for_kbit_training(model, gradient_checkpointing=False).eval()
    return path, models


def test_kbit_preparation_freezes_the_base_and_keeps_norms_in_fp32(quantized_models):
    _, models = quantized_models
    model = models["nf4"]
    assert not any(p.requires_grad for p in model.parameters())
    assert model.model.norm.weight.dtype == torch.float32
    assert model.model.layers[0].input_layernorm.weight.dtype == torch.float32
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16  # the precision's dtype, not fp32


def test_dequantized_weight_is_what_the_layer_computes_with(quantized_models):
    from loratui.model.quantization import dequantized_weight, quantized_modules

    _, models = quantized_models
    for model in models.values():
        layers = quantized_modules(model)
        assert len(layers) == 4 * 7  # every attention and MLP projection of the four layers
        layer = layers["model.layers.1.mlp.up_proj"]
        x = torch.randn(3, layer.in_features, dtype=torch.bfloat16)
        with torch.no_grad():  # in eval mode: the layout stays the training one (see prepare_for_kbit_training)
            reference = x.float() @ dequantized_weight(layer).T
            assert torch.allclose(layer(x).float(), reference, rtol=3e-2, atol=3e-2)


def test_dequantization_error_names_the_worst_module_and_4bit_costs_more(quantized_models):
    from loratui.model.quantization import dequantization_error

    path, models = quantized_models
    nf4 = dequantization_error(models["nf4"], path, "nf4")
    int8 = dequantization_error(models["int8"], path, "int8")
    assert len(nf4.per_module) == len(int8.per_module) == 28
    assert nf4.worst_module in nf4.per_module and nf4.worst == max(nf4.per_module.values())
    # 16 levels against 255: 4-bit rounding is an order of magnitude coarser than 8-bit.
    assert 0 < int8.mean < nf4.mean / 5
    assert nf4.as_dict()["modules"] == 28
