"""Native vs emulated bf16 by compute capability, and what `auto` resolves to, on made-up CUDA devices.

The made-up devices enter through `hardware.cuda_device`, the one place that reads torch.cuda;
everything after it (the precision rules, `machine_problems`, `loratui check`'s output) runs for real.
"""

import pytest

from helpers import ROOT, make_config
from loratui import hardware
from loratui.cli import main
from loratui.hardware import EMULATED, NATIVE, UNSUPPORTED, CudaDevice, cuda_capabilities, resolve_precision

EXAMPLE = str(ROOT / "config.example.toml")

V100 = CudaDevice("Tesla V100-SXM2-16GB", (7, 0), bf16_available=True)
T4 = CudaDevice("Tesla T4", (7, 5), bf16_available=True)
A100 = CudaDevice("NVIDIA A100-SXM4-80GB", (8, 0), bf16_available=True)
H100 = CudaDevice("NVIDIA H100 80GB HBM3", (9, 0), bf16_available=True)
T4_WITHOUT_BF16 = CudaDevice("Tesla T4", (7, 5), bf16_available=False)


@pytest.mark.parametrize("cuda,bf16,bf16_note,auto", [
    (V100, EMULATED, "compute capability 7.0 < 8.0: bf16 is emulated (slow)", "fp16"),
    (T4, EMULATED, "compute capability 7.5 < 8.0: bf16 is emulated (slow)", "fp16"),
    (A100, NATIVE, "compute capability 8.0 >= 8.0", "bf16"),
    (H100, NATIVE, "compute capability 9.0 >= 8.0", "bf16"),
    (T4_WITHOUT_BF16, UNSUPPORTED, "compute capability 7.5: no bf16", "fp16"),
])
def test_bf16_is_native_only_from_compute_capability_8(cuda, bf16, bf16_note, auto):
    caps = cuda_capabilities(cuda)
    assert caps.device == "cuda" and caps.device_name == cuda.name
    assert caps.compute_capability == cuda.compute_capability
    assert caps.support == {"fp32": NATIVE, "bf16": bf16, "fp16": NATIVE}
    assert caps.notes["bf16"] == bf16_note
    assert "GradScaler" in caps.notes["fp16"]
    assert resolve_precision("auto", caps) == auto
    # An explicit precision is taken as asked; only `auto` follows the rules.
    assert resolve_precision("fp32", caps) == "fp32" and resolve_precision("bf16", caps) == "bf16"


def test_without_cuda_auto_is_bf16_under_cpu_autocast(monkeypatch):
    monkeypatch.setattr(hardware, "cuda_device", lambda device="auto": None)
    caps = hardware.detect("auto")
    assert caps.device == "cpu" and caps.compute_capability is None
    assert caps.support["fp32"] == NATIVE and caps.support["fp16"] == EMULATED
    assert caps.support["bf16"] in (NATIVE, EMULATED) and caps.notes["bf16"].startswith("CPU autocast")
    assert resolve_precision("auto", caps) == "bf16"


def test_this_machine_without_cuda_is_described_as_cpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert hardware.cuda_device("auto") is None and hardware.cuda_device("cuda") is None
    assert hardware.detect("cuda").device == "cpu"


def test_bf16_is_refused_where_cuda_cannot_run_it_at_all(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "cuda_device", lambda device="auto": T4_WITHOUT_BF16)
    caps = hardware.detect("auto")
    refused = make_config(tmp_path, ["train.precision=bf16"])
    assert hardware.machine_problems(refused, caps) == [
        'train.precision = "bf16" is not supported here: compute capability 7.5: no bf16']
    # Emulated bf16 is slow but allowed: the user asked for it.
    assert hardware.machine_problems(refused, cuda_capabilities(T4)) == []


@pytest.mark.parametrize("cuda,bf16_line,auto_line", [
    (T4, "  bf16: emulated (compute capability 7.5 < 8.0: bf16 is emulated (slow))",
     "train.precision = 'auto' -> fp16"),
    (A100, "  bf16: native (compute capability 8.0 >= 8.0)", "train.precision = 'auto' -> bf16"),
])
def test_check_names_native_or_emulated_bf16_on_a_cuda_device(monkeypatch, capsys, cuda, bf16_line, auto_line):
    monkeypatch.setattr(hardware, "cuda_device", lambda device="auto": cuda)
    assert main(["check", EXAMPLE]) == 0
    lines = capsys.readouterr().out.splitlines()
    major, minor = cuda.compute_capability
    assert f"device: cuda ({cuda.name}), compute capability {major}.{minor}" in lines
    assert any(line.startswith("torch: ") and line.endswith("; CUDA: yes") for line in lines)
    assert bf16_line in lines
    assert "  fp16: native (fp16 autocast with dynamic loss scaling (GradScaler))" in lines
    assert auto_line in lines


def test_check_refuses_bf16_on_a_gpu_without_it(monkeypatch, capsys):
    monkeypatch.setattr(hardware, "cuda_device", lambda device="auto": T4_WITHOUT_BF16)
    assert main(["check", EXAMPLE, "--set", "train.precision=bf16"]) == 2
    captured = capsys.readouterr()
    assert "  bf16: unsupported (compute capability 7.5: no bf16)" in captured.out.splitlines()
    assert 'train.precision = "bf16" is not supported here: compute capability 7.5: no bf16' in captured.err
    assert "Traceback" not in captured.err
