"""Hygiene: no code runs from a config or a checkpoint, remote code is opt-in and announced,
run directories are private, control commands are validated, and no network port is opened.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import train_in_process
from loratui import cli
from loratui.config import load_config
from loratui.control import Command, ControlReader, Rejected, parse_command
from loratui.train import checkpoint as ckpt
from test_reliability_support import (
    HeadlessRun,
    inet_sockets,
    single_cpu_thread,  # noqa: F401 (an autouse fixture)
    torture_count,
    write_run_config,
)

ROOT = Path(__file__).resolve().parent.parent


def assert_private(root: Path) -> None:
    """Every directory 0700 and every file 0600, all the way down."""
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path} is {oct(mode)}"


def test_a_real_run_is_private_listens_nowhere_and_announces_remote_code(tmp_path):
    config = write_run_config(tmp_path, every_steps=2, extra="[model]\ntrust_remote_code = true\n")
    run = HeadlessRun(config)
    try:
        run.wait_for_step(3)
        sockets = inet_sockets(run.pid)
        run.send(signal.SIGTERM)
        assert run.finish() == 143
    finally:
        run.kill()
    assert sockets == [], f"the trainer holds network sockets: {sockets}"
    notices = [e["message"] for e in run.all_events() if e["type"] == "notice"]
    assert any("trust_remote_code is on" in n and "code shipped with the model will run" in n for n in notices)
    assert "trust_remote_code is on" in run.output()
    # The whole output directory: run dir, checkpoints, the final adapter, every file in them.
    assert (run.run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert_private(tmp_path / "runs")


def test_trust_remote_code_is_off_unless_set(tmp_path):
    config = load_config(write_run_config(tmp_path, max_steps=1, every_steps=1))
    assert config.model.trust_remote_code is False
    code, events, _ = train_in_process(config)
    assert code == 0
    started = next(e for e in events if e["type"] == "run_started")
    assert started["config"]["model"]["trust_remote_code"] is False
    assert not [e for e in events if e["type"] == "notice" and "trust_remote_code" in e["message"]]


def code_injections(marker: Path) -> list[str]:
    return [f"__import__('os').mkdir('{marker}')", f"$(mkdir {marker})", f"`mkdir {marker}`",
            f"{{{{ ''.__class__.__mro__ }}}}; mkdir {marker}", f"!!python/object/apply:os.mkdir ['{marker}']"]


@pytest.mark.parametrize("command", ["check", "run"])
def test_the_config_never_executes_code(tmp_path, capsys, command):
    marker = tmp_path / "executed"
    for number, payload in enumerate(code_injections(marker)):
        path = tmp_path / f"config{number}.toml"
        quoted = json.dumps(payload)
        path.write_text(f"[run]\nname = {quoted}\noutput_dir = {quoted}\n[model]\nname_or_path = {quoted}\n"
                        f"[data]\npath = {quoted}\n[lora]\ntarget_modules = [{quoted}]\n")
        overrides = [f"--set=train.learning_rate={payload}", f"--set=train.precision={payload}"]
        args = [command, str(path), *overrides] + (["--headless"] if command == "run" else [])
        assert cli.main(args) == 2
        assert "Traceback" not in "".join(capsys.readouterr())
    assert not marker.exists()


def test_the_config_loader_has_no_way_to_run_code():
    """A guard against regressions: nothing on the config path evaluates or unpickles text."""
    builtins = {"eval", "exec", "compile", "__import__"}
    unpicklers = {"pickle", "marshal", "dill", "shelve", "yaml"}
    for source in [*sorted((ROOT / "loratui" / "config").glob("*.py")), ROOT / "loratui" / "cli.py"]:
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Call):
                called = getattr(node.func, "id", None)
                owner = getattr(getattr(node.func, "value", None), "id", None)
                assert called not in builtins and owner not in unpicklers, f"{source.name}:{node.lineno}"


class RunsCode:
    """Unpickling this would create a directory: the proof that a checkpoint ran code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_a_tampered_checkpoint_cannot_run_code_on_resume(tmp_path):
    config_path = write_run_config(tmp_path, max_steps=2, every_steps=2)
    code, _, run_dir = train_in_process(load_config(config_path))
    assert code == 0
    newest = run_dir.checkpoints / ckpt.checkpoint_name(2)
    marker = tmp_path / "executed"
    import torch

    # Someone with write access swaps the optimizer state for a pickle that runs code,
    # and even rewrites the manifest so that the checkpoint verifies.
    torch.save({"state": RunsCode(marker)}, newest / "optimizer.pt")
    manifest = json.loads((newest / ckpt.MANIFEST).read_text())
    manifest["files"]["optimizer.pt"] = {"size": (newest / "optimizer.pt").stat().st_size,
                                         "sha256": ckpt._sha256(newest / "optimizer.pt")}
    (newest / ckpt.MANIFEST).write_text(json.dumps(manifest))
    assert ckpt.verify(newest) is None

    code, events, _ = train_in_process(load_config(config_path, ["train.max_steps=3"]), resume=True)
    assert code == 1
    assert not marker.exists(), "loading a checkpoint ran code"
    failed = [e for e in events if e["type"] == "run_failed"][-1]
    assert "weights_only" in failed["error"] or "Unsupported global" in failed["error"], failed["error"]


@pytest.mark.parametrize("line,reason", [
    ("not json", "not valid JSON"),
    ('{"cmd": "save"', "not valid JSON"),
    ('["save"]', "a command is a JSON object"),
    ('"save"', "a command is a JSON object"),
    ('{"cmd": "explode"}', "unknown cmd 'explode'"),
    ('{"command": "save"}', "unknown cmd None"),
    ('{"cmd": "restart", "precision": "fp8"}', "precision must be one of"),
    ('{"cmd": "restart", "learning_rate": -1}', "learning_rate must be a positive number"),
    ('{"cmd": "restart", "learning_rate": NaN}', "not valid JSON"),
    ('{"cmd": "restart", "lr_factor": true}', "lr_factor must be a positive number"),
    ('{"cmd": "restart", "lr_factor": "0.5"}', "lr_factor must be a positive number"),
    ('{"cmd": "restart", "learning_rate": 1e-4, "lr_factor": 0.5}', "not both"),
    ('{"cmd": "restart", "from_step": -3}', "from_step must be a step number"),
    ('{"cmd": "restart", "from_step": 2.5}', "from_step must be a step number"),
    ('{"cmd": "restart", "from_step": false}', "from_step must be a step number"),
    ('{"cmd": "stop", "reason": 42}', "reason must be a string"),
    ('{"cmd": "save", "path": "/etc/passwd"}', "save takes no path"),
    ('{"cmd": "pause", "exec": "rm -rf /"}', "pause takes no exec"),
])
def test_malformed_or_unknown_commands_are_rejected_with_a_reason(line, reason):
    parsed = parse_command(line)
    assert isinstance(parsed, Rejected) and reason in parsed.reason, parsed


def test_valid_commands_are_accepted():
    parsed = parse_command('{"cmd": "restart", "precision": "bf16", "lr_factor": 0.5, "from_step": 50, "id": 7}')
    assert parsed == Command("restart", {"precision": "bf16", "lr_factor": 0.5, "from_step": 50}, "7")


@pytest.mark.slow
@settings(max_examples=torture_count(200, 3000), deadline=None)
@given(chunks=st.lists(st.binary(max_size=64) | st.text(max_size=64).map(str.encode), max_size=8))
def test_the_control_reader_survives_any_bytes(tmp_path_factory, chunks):
    path = tmp_path_factory.mktemp("control") / "control.jsonl"
    path.touch()
    reader = ControlReader(path)
    for chunk in chunks:
        with open(path, "ab") as file:
            file.write(chunk)
        for parsed in reader.poll():
            assert isinstance(parsed, (Command, Rejected))
