"""The command line as a user runs it: three precisions headless, check, errors, no traceback."""

import math
import re
import subprocess
import sys
import textwrap

import pytest

from helpers import ROOT, loratui_cli, steps_of
from loratui.events.jsonl import read_events

EXAMPLE = str(ROOT / "config.example.toml")


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_example_config_trains_headless_in_each_precision(tmp_path, precision):
    # fp32 leaves out --headless: without a terminal, run must go headless by itself and say so.
    flags = [] if precision == "fp32" else ["--headless"]
    result = loratui_cli("run", EXAMPLE, *flags, "--set", "train.max_steps=30", "--set",
                         f"train.precision={precision}", "--set", f"run.output_dir={tmp_path}",
                         "--set", "train.batch_size=2", "--set", "monitor.log_every=10")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("loratui: stdout is not a terminal; running headless") == (not flags)
    step_lines = [line for line in lines if line.startswith("step ")]
    assert [line.split()[1] for line in step_lines] == ["10/30", "20/30", "30/30"]
    assert len([line for line in lines if re.fullmatch(r"data: \d+ examples from \d+ rows", line)]) == 1
    assert "Traceback" not in result.stderr and "it/s" not in result.stderr  # no progress bars
    events = read_events(tmp_path / "loratui-run" / "events.jsonl")
    steps = steps_of(events)
    assert len(steps) == 30
    for event in steps:
        assert math.isfinite(event["loss"]) and event["precision"] == precision
        if event["skipped"]:
            # fp16 only: GradScaler's calibration (its 2**16 start overflows once or twice, then it backs
            # off). The scaled gradients overflowed, so the honest grad norm of that step is inf.
            assert precision == "fp16" and event["step"] <= 10 and event["grad_norm"] in ("inf", "nan")
        else:
            assert math.isfinite(event["grad_norm"])
        assert (isinstance(event["scale"], float) and event["scale"] > 0) if precision == "fp16" \
            else event["scale"] is None
    assert sum(e["skipped"] for e in steps) <= 2
    assert [e["type"] for e in events][-1] == "run_finished"
    tokenizing = [(e["done"], e["total"]) for e in events if e["type"] == "phase" and e["name"] == "tokenizing"]
    assert tokenizing[-1] == (1000, 1000)  # the bundled file's 1000 rows, none counted twice
    assert (tmp_path / "loratui-run" / "adapter" / "adapter_model.safetensors").is_file()
    resolved = (tmp_path / "loratui-run" / "config.toml").read_text()
    assert f'precision = "{precision}"' in resolved and "max_steps = 30" in resolved


def test_several_mistakes_are_all_reported_with_exit_2_and_no_traceback(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text(textwrap.dedent("""\
        [train]
        precision = "fp8"
        lerning_rate = 0.1
        max_steps = 0
        [lora]
        r = "eight"
        [data]
        path = "missing.jsonl"
    """))
    result = loratui_cli("run", str(config), "--headless", "--set", "train.seed=-1")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    message = result.stderr
    for expected in (f"{config}:2: train.precision = \"fp8\"", f"{config}:3: train.lerning_rate: unknown key "
                     "(did you mean train.learning_rate?)", f"{config}:4: train.max_steps = 0",
                     f"{config}:6: lora.r = \"eight\"", f"{config}:8: data.path",
                     "--set: train.seed = -1"):
        assert expected in message, message
    assert not (tmp_path / "runs").exists()  # nothing created for a bad config


def test_set_takes_toml_values_and_bare_words():
    from loratui.config.load import parse_override

    assert parse_override("train.precision=fp16")[:2] == ("train.precision", "fp16")
    assert parse_override("train.learning_rate=1e-4")[:2] == ("train.learning_rate", 1e-4)
    assert parse_override("lora.target_modules=[\"q_proj\", \"v_proj\"]")[1] == ["q_proj", "v_proj"]
    assert parse_override("checkpoint.keep=2")[1] == 2


def test_check_reports_this_machine(tmp_path):
    result = loratui_cli("check", EXAMPLE)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "device: cpu" in out and "CUDA: no" in out
    assert "bf16:" in out and "fp16: emulated" in out and "NVML: unavailable" in out
    assert "train.precision = 'auto' -> bf16" in out


def test_check_refuses_cuda_on_a_machine_without_it(tmp_path):
    result = loratui_cli("check", EXAMPLE, "--set", "train.device=cuda")
    assert result.returncode == 2
    assert 'train.device = "cuda" but no CUDA device is available' in result.stderr
    assert "Traceback" not in result.stderr


def test_a_training_process_never_loads_textual_or_rich(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from loratui.cli import main
        code = main(["run", {EXAMPLE!r}, "--headless", "--set", "train.max_steps=2", "--set",
                     "train.precision=fp32", "--set", "run.output_dir={tmp_path}"])
        assert code == 0, code
        ui = sorted(m for m in sys.modules if m.split(".")[0] in ("textual", "rich", "textual_plotext"))
        print("UI-MODULES:", ui)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "UI-MODULES: []" in result.stdout
