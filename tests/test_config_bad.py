"""Broken configs: exit 2, one clear message naming the file and line or the dotted key, no traceback.

Each file under tests/configs/bad/ says in its first comment lines what is wrong
with it: `# key:` the dotted key the message must name (or -), `# says:` a phrase
the message must contain, `# line:` the line it must point at (or -), and
`# needs: no-cuda` for settings only a machine without CUDA rejects. Most go
through `loratui.cli.main` in this process; a few through a real subprocess.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loratui import cli
from test_reliability_support import single_cpu_thread  # noqa: F401 (an autouse fixture)

BAD = Path(__file__).parent / "configs" / "bad"
BAD_CONFIGS = sorted(BAD.glob("*.toml"))


def expectations(path: Path) -> dict[str, str]:
    header = path.read_bytes().decode("utf-8", errors="replace")
    return dict(re.findall(r"^# (key|says|line|needs): (.*)$", header, flags=re.MULTILINE))


def copy_into(tmp_path: Path, path: Path) -> Path:
    """The config beside nothing else, so relative paths in it resolve to nothing by accident."""
    target = tmp_path / path.name
    shutil.copy(path, target)
    return target


def assert_one_clear_message(output: str, path: Path, expected: dict[str, str]) -> None:
    assert "Traceback" not in output, output
    assert "error" in output, output
    assert expected["says"] in output, output
    if expected["key"] != "-":
        assert expected["key"] in output, output
    if expected["line"] != "-":
        assert re.search(re.escape(str(path)) + f":{expected['line']}\\b", output), output
    elif expected["key"] == "-":
        assert str(path) in output, output


def test_there_are_at_least_40_broken_configs():
    assert len(BAD_CONFIGS) >= 40
    for path in BAD_CONFIGS:
        assert {"key", "says", "line"} <= set(expectations(path)), path.name


@pytest.mark.parametrize("source", BAD_CONFIGS, ids=lambda p: p.stem)
def test_a_broken_config_exits_2_with_a_clear_message(source, tmp_path, capsys):
    expected = expectations(source)
    if expected.get("needs") == "no-cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    path = copy_into(tmp_path, source)
    code = cli.main(["run", str(path), "--headless"])
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert_one_clear_message(out + err, path, expected)


@pytest.mark.parametrize("name", ["syntax_unclosed_string", "type_max_steps_string", "unknown_key_typo",
                                  "missing_data_file"])
def test_a_broken_config_as_a_real_process(name, tmp_path):
    path = copy_into(tmp_path, BAD / f"{name}.toml")
    result = subprocess.run([sys.executable, "-m", "loratui", "run", str(path), "--headless"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert_one_clear_message(result.stdout + result.stderr, path, expectations(path))
    assert not (tmp_path / "runs").exists(), "a refused config creates no run directory"


@pytest.mark.parametrize("override,says", [
    ("train.max_steps=abc", 'train.max_steps = "abc" is not allowed: expected a whole number'),
    ("train.learnig_rate=1e-3", "did you mean train.learning_rate"),
    ("nonsense", "expected KEY=VALUE"),
    ("=5", "KEY must be a dotted key"),
    ("train=5", "KEY must be a dotted key"),
    ("train.precision.deeper=1", "train.precision = a table is not allowed"),
    ("lora.r=-3", "lora.r = -3 is not allowed: must be at least 1"),
    ('train.precision="fp8"', "use one of auto"),
    ("run.output_dir=~nosuchuser0/runs", "~nosuchuser0 names no user on this machine"),  # found by the torture run
])
def test_a_bad_override_exits_2_naming_the_set(override, says, tmp_path, capsys):
    path = tmp_path / "empty.toml"
    path.write_text("")
    code = cli.main(["run", str(path), "--headless", f"--set={override}"])
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert "--set" in err and says in err and "Traceback" not in out + err, err


def test_a_missing_config_file_exits_2(tmp_path, capsys):
    code = cli.main(["run", str(tmp_path / "nope.toml"), "--headless"])
    out, err = capsys.readouterr()
    assert code == 2 and "no such config file" in err and str(tmp_path / "nope.toml") in err


def test_every_problem_is_reported_at_once(tmp_path, capsys):
    path = copy_into(tmp_path, BAD / "many_problems_at_once.toml")
    assert cli.main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    for line, key in ((5, "train.max_steps"), (6, "train.precision"), (7, "train.batch")):
        assert f"{path}:{line}: {key}" in err, err



def test_a_tilde_with_no_home_to_expand_exits_2(tmp_path, capsys, monkeypatch):
    """HOME unset and a uid the password database does not know (a container's arbitrary uid): pathlib cannot
    expand ~ at all. The database lookup is the one fake here: making such a user needs root and a readable venv."""
    import pwd

    def unknown_uid(uid):
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.setattr(pwd, "getpwuid", unknown_uid)
    path = tmp_path / "c.toml"
    path.write_text('[run]\noutput_dir = "~/runs"\n')
    assert cli.main(["check", str(path)]) == 2
    out, err = capsys.readouterr()
    assert f"{path}:2" in err and "no home directory to expand ~ to" in err and "Traceback" not in out + err, err
