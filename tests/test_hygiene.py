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
from loratui import checkpoint_files as ckpt
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


# ------------------------------------------------------------------ import direction
# cli -> (ui | entry | advise) -> train -> (monitor, model, data, events, config).
# Each unit of the code is placed in one layer; an import may only go down, or sideways within the
# lowest layer (the parts use each other: the monitor reads data, the model builds on data) or the
# top one. The entry points of layer 2 stay independent of each other except for SIDEWAYS.
# The top-level modules without a package sit with what they serve.
LAYERS = {
    "loratui.cli": 3, "loratui.__main__": 3,
    # Entry points and the tools beside the trainer: the dashboard, the process that runs a trainer,
    # the advisor, the launcher's command line, the Hugging Face callback.
    "loratui.ui": 2, "loratui.entry": 2, "loratui.advise": 2, "loratui.launcher": 2,
    "loratui.integrations": 2,
    "loratui.train": 1,
    "loratui.monitor": 0, "loratui.model": 0, "loratui.data": 0, "loratui.events": 0, "loratui.config": 0,
    "loratui": 0, "loratui.errors": 0, "loratui.run_dir": 0, "loratui.control": 0, "loratui.hardware": 0,
    "loratui.gpu": 0, "loratui.trackers": 0, "loratui.scenarios": 0, "loratui.checkpoint_files": 0,
    "loratui.faults": 0, "loratui.precision_facts": 0,
}
ENTRIES = 2
# The only imports between two different entry points, each with its reason.
SIDEWAYS = {
    ("loratui.ui", "loratui.launcher"),  # the command the dashboard runs to start a trainer
    ("loratui.entry", "loratui.advise"),  # train.precision = "advise" is measured before the trainer exists
}


def unit_of(module: str) -> str:
    """The most specific unit in LAYERS that holds `module` (loratui.model.families before loratui.model)."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in LAYERS:
            return candidate
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_hygiene.py")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every loratui module `path` imports, at module level and inside functions, with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "loratui"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "loratui":
            for alias in node.names:
                # `from loratui import faults` imports a module; `from loratui.x import name` a name in x.
                as_module = ROOT.joinpath(*node.module.split("."), alias.name)
                submodule = as_module.with_suffix(".py").is_file() or as_module.is_dir()
                found.append((node.lineno, f"{node.module}.{alias.name}" if submodule else node.module))
    return sorted(set(found))


def import_edges() -> list[tuple[str, int, str, str]]:
    """(file, line, importing module, imported module) for every loratui import inside loratui/."""
    edges = []
    for path in sorted((ROOT / "loratui").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        edges += [(str(path.relative_to(ROOT)), line, module, target) for line, target in imported_modules(path)]
    return edges


def test_the_import_walk_sees_imports_inside_functions():
    """The walk must see lazy imports (how torch-free modules reach the heavy ones), or it proves nothing."""
    edges = {(source, target) for _, _, source, target in import_edges()}
    assert ("loratui.entry", "loratui.advise.run") in edges  # inside advise_first
    assert ("loratui.cli", "loratui.ui.launch") in edges  # inside start_run
    assert ("loratui.monitor.fixes", "loratui.checkpoint_files") in edges  # `from loratui import checkpoint_files`


def test_imports_run_one_way_cli_entries_train_then_the_parts():
    wrong = []
    for file, line, source, target in import_edges():
        here, there = unit_of(source), unit_of(target)
        if here == there or LAYERS[here] > LAYERS[there]:
            continue
        if LAYERS[here] == LAYERS[there] and (LAYERS[here] != ENTRIES or (here, there) in SIDEWAYS):
            continue
        wrong.append(f"{file}:{line}: {source} imports {target} ({here} is layer {LAYERS[here]}, "
                     f"{there} layer {LAYERS[there]})")
    assert not wrong, "imports against the direction:\n" + "\n".join(wrong)


def test_no_cycle_between_packages():
    """No two units import each other, directly or through others (within one unit anything goes)."""
    graph: dict[str, set[str]] = {}
    for _, _, source, target in import_edges():
        here, there = unit_of(source), unit_of(target)
        if here != there:
            graph.setdefault(here, set()).add(there)

    def cycle_from(start: str, path: list[str]) -> list[str] | None:
        for nxt in sorted(graph.get(path[-1], ())):
            if nxt == start:
                return path + [nxt]
            if nxt not in path:
                found = cycle_from(start, path + [nxt])
                if found:
                    return found
        return None

    for unit in sorted(graph):
        cycle = cycle_from(unit, [unit])
        assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_training_package_never_imports_the_advisor_or_the_ui():
    for file, line, source, target in import_edges():
        if unit_of(source) == "loratui.train":
            assert unit_of(target) not in ("loratui.advise", "loratui.ui", "loratui.cli"), f"{file}:{line}: {target}"


def test_the_training_package_never_imports_the_advisor_or_the_ui():
    """Issue 13's rule in its plainest form: nothing under loratui/train/ reaches up."""
    wrong = [f"{file}:{line}: {source} imports {target}" for file, line, source, target in import_edges()
             if source.startswith("loratui.train") and target.split(".")[1:2] in (["advise"], ["ui"], ["cli"], ["entry"])]
    assert not wrong, "\n".join(wrong)
