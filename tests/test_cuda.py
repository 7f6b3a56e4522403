"""On an NVIDIA GPU: the trainer's CUDA paths for real (skipped without CUDA, as on this project's CI).

Run on a GPU machine with `python -m pytest -m gpu tests/test_cuda.py`; it needs
torch, transformers, peft, accelerate and nvidia-ml-py, not textual (nothing here
imports the dashboard). Everything the CPU suite proves through fakes (NVML, the
compute-capability rule) is checked here against the real device.
"""

from __future__ import annotations

import math

import pytest
import torch

from helpers import make_config, steps_of, train_in_process

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (CUDA)")]


def capability() -> tuple[int, int]:
    return tuple(torch.cuda.get_device_capability(0))


def test_native_bf16_follows_the_compute_capability():
    from loratui.hardware import detect, resolve_precision

    caps = detect("cuda")
    assert caps.device == "cuda" and caps.compute_capability == capability()
    native = capability()[0] >= 8
    assert (caps.support["bf16"] == "native") == native
    assert resolve_precision("auto", caps) == ("bf16" if native else "fp16")


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_each_precision_trains_on_the_gpu_with_its_memory_figures(tmp_path, precision):
    if precision == "bf16" and capability()[0] < 8:
        pytest.skip("bf16 is emulated below compute capability 8.0")
    config = make_config(tmp_path, [f"train.precision={precision}", "train.device=cuda", "train.max_steps=20",
                                    f'run.output_dir="{tmp_path}"', "checkpoint.every_steps=10"])
    code, events, run_dir = train_in_process(config)
    assert code == 0
    started = next(e for e in events if e["type"] == "run_started")
    assert started["device"].startswith("cuda") and started["precision"] == precision
    steps = steps_of(events)
    assert len(steps) == 20 and all(e["precision"] == precision for e in steps)
    assert all(math.isfinite(e["loss"]) for e in steps)
    assert all(e["mem_allocated_mib"] > 0 and e["mem_peak_mib"] >= e["mem_allocated_mib"] for e in steps)
    if precision == "fp16":
        assert all(isinstance(e["scale"], float) and e["scale"] > 0 for e in steps)
    else:
        assert all(e["scale"] is None for e in steps)
    assert (run_dir.adapter / "adapter_model.safetensors").is_file()


def test_nvml_reads_this_gpu():
    from loratui.gpu import NvmlReader, NvmlUnavailable

    reader = NvmlReader()
    try:
        reader.open()
    except NvmlUnavailable as exc:
        pytest.skip(f"NVML unavailable here: {exc}")
    try:
        devices = reader.devices()
    finally:
        reader.close()
    assert devices and devices[0]["mem_total_mib"] > 0 and devices[0]["name"]
