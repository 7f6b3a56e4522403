"""Resuming a real run directory: damaged checkpoints are skipped with a reason, refusals are clear.

One short fp32 run (checkpoints at steps 0, 3 and 6) is made once and copied
for each test, which then damages it, changes the config or runs into it, and
resumes through the real trainer or the real command line.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from helpers import StepHook, command_at, steps_of, train_in_process
from loratui import cli
from loratui.config import load_config
from loratui import checkpoint_files as ckpt
from test_reliability_support import complete_steps, single_cpu_thread, write_run_config  # noqa: F401

RUN = "runs/loratui-run"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A directory holding config.toml, its data and a run with complete checkpoints 0, 3 and 6."""
    base = tmp_path_factory.mktemp("finished")
    write_run_config(base, max_steps=6, every_steps=3, keep=5)
    code, _, run_dir = train_in_process(load_config(base / "config.toml"))
    assert code == 0
    assert complete_steps(run_dir.checkpoints) == [6, 3, 0]
    return base


@pytest.fixture
def workdir(finished_run, tmp_path) -> Path:
    """A private copy of the finished run to damage."""
    target = tmp_path / "work"
    shutil.copytree(finished_run, target)
    return target


def checkpoint(workdir: Path, step: int) -> Path:
    return workdir / RUN / "checkpoints" / ckpt.checkpoint_name(step)


def resume(workdir: Path, *overrides: str):
    return train_in_process(load_config(workdir / "config.toml", ["train.max_steps=7", *overrides]), resume=True)


def truncate_adapter(path: Path) -> None:
    file = path / "adapter_model.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def remove_manifest(path: Path) -> None:
    (path / ckpt.MANIFEST).unlink()


def garble_manifest(path: Path) -> None:
    (path / ckpt.MANIFEST).write_text('{"format": 1, "files": ')


def flip_a_byte_in_the_optimizer(path: Path) -> None:
    """Same size, different content: only the checksum can tell."""
    file = path / "optimizer.pt"
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))


DAMAGE = {
    "truncated safetensors": (truncate_adapter, "adapter_model.safetensors has"),
    "missing manifest": (remove_manifest, "no manifest"),
    "damaged manifest": (garble_manifest, "unreadable manifest"),
    "checksum mismatch": (flip_a_byte_in_the_optimizer, "optimizer.pt does not match its checksum"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_newest_checkpoint_is_skipped_with_its_reason(workdir, damage):
    spoil, reason = DAMAGE[damage]
    spoil(checkpoint(workdir, 6))
    code, events, _ = resume(workdir)
    assert code == 0
    notices = [e["message"] for e in events if e["type"] == "notice" and "skipping checkpoint" in e["message"]]
    assert len(notices) == 1 and "step-000006" in notices[0] and reason in notices[0], notices
    started = [e for e in events if e["type"] == "run_started"][-1]
    assert started["resumed_from"].endswith("step-000003")
    assert [e["step"] for e in steps_of(events, started["attempt"])] == [4, 5, 6, 7]


def test_with_every_checkpoint_damaged_the_run_stops_with_one_line_and_exit_2(workdir, capsys):
    for (spoil, _), step in zip(DAMAGE.values(), (0, 3, 6)):
        spoil(checkpoint(workdir, step))
    code = cli.main(["run", str(workdir / "config.toml"), "--headless", "--resume"])
    out, err = capsys.readouterr()
    assert code == 2
    errors = [line for line in (out + err).splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "no complete checkpoint to resume from" in errors[0], out + err
    assert "Traceback" not in out + err
    # The reasons for each checkpoint are logged, and nothing was deleted or rewritten.
    assert out.count("skipping checkpoint") == 3
    assert sorted(p.name for p in (workdir / RUN / "checkpoints").iterdir()) == [
        "step-000000", "step-000003", "step-000006"]


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_an_existing_run_directory_without_resume_is_refused_and_left_untouched(workdir, capsys):
    before = tree_digest(workdir / RUN)
    code = cli.main(["run", str(workdir / "config.toml"), "--headless", "--set", "train.learning_rate=1e-4"])
    out, err = capsys.readouterr()
    assert code == 2
    assert "already exists" in err and "--resume" in err and "run.name" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in out + err
    assert tree_digest(workdir / RUN) == before


def copy_of_builtin_model(directory: Path) -> Path:
    from loratui.model.builtin import builtin_model_dir

    target = directory / "model"
    shutil.copytree(builtin_model_dir("builtin:tiny-llama"), target)
    return target


def add_a_token_to_the_tokenizer(model_dir: Path) -> None:
    tokenizer_file = model_dir / "tokenizer.json"
    tokenizer = json.loads(tokenizer_file.read_text())
    vocab = tokenizer["model"]["vocab"]
    vocab["zzqq-new-token"] = max(vocab.values()) + 1
    tokenizer_file.write_text(json.dumps(tokenizer))


@pytest.mark.parametrize("change,what", [
    ('model.name_or_path="builtin:tiny-llama-outliers"', "model:"),
    ("lora.r=4", "lora_r: 8 -> 4"),
    ('lora.target_modules=["q_proj", "v_proj"]', "lora_target_modules:"),
])
def test_resuming_with_a_different_model_or_lora_shape_is_refused(workdir, change, what):
    before = tree_digest(workdir / RUN / "checkpoints")
    code, events, _ = resume(workdir, change)
    assert code == 2
    failed = [e for e in events if e["type"] == "run_failed"][-1]
    assert "cannot resume" in failed["error"] and what in failed["error"], failed["error"]
    assert "Learning rate and precision may change" in failed["error"]
    assert failed["traceback"] is None
    assert tree_digest(workdir / RUN / "checkpoints") == before


def test_resuming_with_a_changed_tokenizer_is_refused(tmp_path):
    model_dir = copy_of_builtin_model(tmp_path)
    write_run_config(tmp_path, max_steps=2, every_steps=1, extra=f'[model]\nname_or_path = "{model_dir}"\n')
    config = load_config(tmp_path / "config.toml")
    code, _, _ = train_in_process(config)
    assert code == 0
    add_a_token_to_the_tokenizer(model_dir)
    code, events, _ = train_in_process(load_config(tmp_path / "config.toml", ["train.max_steps=3"]), resume=True)
    assert code == 2
    failed = [e for e in events if e["type"] == "run_failed"][-1]
    assert "cannot resume" in failed["error"] and "tokenizer:" in failed["error"], failed["error"]


def test_learning_rate_and_precision_may_change_on_resume(workdir):
    code, events, _ = resume(workdir, "train.learning_rate=5e-4", 'train.precision="bf16"')
    assert code == 0
    started = [e for e in events if e["type"] == "run_started"][-1]
    assert started["resumed_from"].endswith("step-000006") and started["precision"] == "bf16"
    resumed_steps = steps_of(events, started["attempt"])
    assert [e["step"] for e in resumed_steps] == [7]
    assert resumed_steps[0]["precision"] == "bf16" and resumed_steps[0]["lr"] == pytest.approx(5e-4)


def test_verify_names_what_is_wrong(workdir):
    newest = checkpoint(workdir, 6)
    assert ckpt.verify(newest) is None
    (newest / "scheduler.pt").unlink()
    assert ckpt.verify(newest) == "scheduler.pt is missing"
    manifest = json.loads((checkpoint(workdir, 3) / ckpt.MANIFEST).read_text())
    manifest["format"] = 99
    (checkpoint(workdir, 3) / ckpt.MANIFEST).write_text(json.dumps(manifest))
    assert "format 99" in ckpt.verify(checkpoint(workdir, 3))
    skipped = []
    assert [info.step for info in ckpt.list_complete(workdir / RUN / "checkpoints",
                                                    on_skip=lambda p, r: skipped.append(p.name))] == [0]
    assert sorted(skipped) == ["step-000003", "step-000006"]


def test_a_precision_switched_by_a_restart_carries_over_a_resume_and_attempts_stay_distinct(tmp_path):
    """fp16 -> bf16 by a restart command, then a stop: resuming the same config must not bring fp16 back."""
    write_run_config(tmp_path, max_steps=8, every_steps=2)
    config = load_config(tmp_path / "config.toml", ['train.precision="fp16"'])
    hook = StepHook({(0, 3): command_at("restart", precision="bf16"), (1, 5): command_at("stop")})
    code, events, _ = train_in_process(config, monitor=hook)
    assert code == 0 and [e["precision"] for e in steps_of(events, 1)] == ["bf16"] * 3

    code, events, _ = train_in_process(config, resume=True)
    assert code == 0
    started = [e for e in events if e["type"] == "run_started"][-1]
    assert started["attempt"] == 2 and started["precision"] == "bf16"
    assert any("continuing in bf16" in e["message"] for e in events if e["type"] == "notice" and e["attempt"] == 2)
    assert [(e["step"], e["precision"]) for e in steps_of(events, 2)] == [(6, "bf16"), (7, "bf16"), (8, "bf16")]
    # Every event of the resumed process, its start-up included, carries its own attempt.
    first_of_resume = next(i for i, e in enumerate(events) if e["type"] == "run_finished") + 1
    assert {e["attempt"] for e in events[first_of_resume:]} == {2}


class StopOnAttach(StepHook):
    """Sends `stop` the moment the trainer is set up: the first step boundary after a resume obeys it."""

    def __init__(self):
        super().__init__({})

    def attach(self, trainer):
        command_at("stop")(trainer)


def test_a_stop_right_after_resume_keeps_the_loaded_checkpoint_as_it_is(workdir):
    """The loaded step counts as saved: saving it again would replace the only copy for nothing."""
    newest = checkpoint(workdir, 6)
    before = (newest.stat().st_ino, tree_digest(newest))
    code, events, _ = train_in_process(load_config(workdir / "config.toml", ["train.max_steps=9"]), resume=True,
                                       monitor=StopOnAttach())
    assert code == 0
    started = [e for e in events if e["type"] == "run_started"][-1]
    assert started["resumed_from"].endswith("step-000006")
    ack = [e for e in events if e["type"] == "control" and e["attempt"] == started["attempt"]]
    assert [(e["cmd"], e["step"]) for e in ack] == [("stop", 6)]
    assert not [e for e in events if e["type"] == "checkpoint" and e["attempt"] == started["attempt"]]
    assert (newest.stat().st_ino, tree_digest(newest)) == before
    assert events[-1]["type"] == "run_finished" and events[-1]["step"] == 6


def retire(path: Path) -> Path:
    """What commit does first when it replaces a checkpoint of the same step."""
    retired = ckpt.retired_dir(path)
    path.rename(retired)
    return retired


def test_a_kill_between_the_renames_of_a_replacing_save_loses_nothing(workdir):
    """Killed after the old step-6 stepped aside and before the new one took its name: it comes back."""
    checkpoints = workdir / RUN / "checkpoints"
    shutil.rmtree(checkpoint(workdir, 3))
    shutil.rmtree(checkpoint(workdir, 0))  # keep = 1: the retired copy is the only complete checkpoint
    retired = retire(checkpoint(workdir, 6))
    shutil.copytree(retired, ckpt.partial_dir(checkpoints, 6))  # the new copy, still hidden
    code, events, _ = resume(workdir)
    assert code == 0
    started = [e for e in events if e["type"] == "run_started"][-1]
    assert started["resumed_from"].endswith("step-000006")
    assert [e["step"] for e in steps_of(events, started["attempt"])] == [7]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-000006", "step-000007"]


def test_a_retired_copy_goes_once_its_replacement_is_in_place(workdir):
    """Killed after the second rename, before the old copy was deleted: the new one stays, the old goes."""
    checkpoints = workdir / RUN / "checkpoints"
    retired = retire(checkpoint(workdir, 6))
    shutil.copytree(retired, checkpoint(workdir, 6))
    replacement = checkpoint(workdir, 6).stat().st_ino
    ckpt.clean_partials(checkpoints)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-000000", "step-000003", "step-000006"]
    assert checkpoint(workdir, 6).stat().st_ino == replacement


def test_a_save_over_a_damaged_copy_of_its_step_replaces_it(workdir):
    """The one way a step is saved twice: a resume skipped its damaged checkpoint and trains past it."""
    flip_a_byte_in_the_optimizer(checkpoint(workdir, 6))
    code, events, _ = resume(workdir)
    assert code == 0
    assert [e["step"] for e in events if e["type"] == "checkpoint" and e["attempt"] == 1] == [6, 7]
    assert ckpt.verify(checkpoint(workdir, 6)) is None
    assert not [p for p in (workdir / RUN / "checkpoints").iterdir() if p.name.startswith(".")]


def test_resuming_with_precision_advise_continues_in_the_checkpoints_precision_without_measuring(workdir):
    """Extending a run (a larger max_steps) must not re-run the advisor: the checkpoint's precision stays."""
    code, events, run_dir = resume(workdir, 'train.precision="advise"')
    assert code == 0
    started = [e for e in events if e["type"] == "run_started"][-1]
    resumed = [e for e in events if e["attempt"] == started["attempt"]]
    assert not [e for e in resumed if e["type"] == "advice"]
    assert not (run_dir.root / "advise").exists(), "no trials were run"
    notices = [e["message"] for e in resumed if e["type"] == "notice" and "advise" in e["message"]]
    assert len(notices) == 1 and "continuing in fp32, the precision of step-000006" in notices[0], notices
    assert (started["requested_precision"], started["precision"]) == ("advise", "fp32")
    assert [(e["step"], e["precision"]) for e in steps_of(events, started["attempt"])] == [(7, "fp32")]
