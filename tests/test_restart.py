"""In-process restart through control.jsonl: new precision, lower learning rate, rollback."""

import pytest

from helpers import StepHook, command_at, make_config, steps_of, train_in_process

BASE = ["train.max_steps=8", "train.batch_size=4", "train.warmup_steps=0", "checkpoint.every_steps=3",
        "train.lr_scheduler=\"constant\""]


def test_restart_from_fp16_to_bf16(tmp_path):
    cfg = make_config(tmp_path, BASE + ["train.precision=fp16", f"run.output_dir=\"{tmp_path}\""])
    code, events, run_dir = train_in_process(
        cfg, monitor=StepHook({(0, 4): command_at("restart", precision="bf16", reason="test")}))
    assert code == 0
    restarts = [e for e in events if e["type"] == "restart"]
    assert len(restarts) == 1
    restart = restarts[0]
    assert restart["from_step"] == 3 and restart["precision"] == "bf16" and restart["attempt"] == 1
    assert all(e["precision"] == "fp16" and e["scale"] is not None for e in steps_of(events, 0))
    later = steps_of(events, 1)
    assert [e["step"] for e in later] == [4, 5, 6, 7, 8]
    assert all(e["precision"] == "bf16" and e["scale"] is None for e in later)
    # The superseded step 4 of attempt 0 is still in the log, marked by its attempt.
    assert [e["step"] for e in steps_of(events, 0)] == [1, 2, 3, 4]
    acks = [e for e in events if e["type"] == "control"]
    assert acks and acks[0]["accepted"] and acks[0]["cmd"] == "restart"


def test_restart_with_lr_factor(tmp_path):
    cfg = make_config(tmp_path, BASE + ["train.precision=fp32", "train.learning_rate=1e-3",
                                        f"run.output_dir=\"{tmp_path}\""])
    code, events, _ = train_in_process(cfg, monitor=StepHook({(0, 5): command_at("restart", lr_factor=0.5)}))
    assert code == 0
    restart = next(e for e in events if e["type"] == "restart")
    assert restart["learning_rate"] == pytest.approx(5e-4)
    assert all(e["lr"] == pytest.approx(1e-3) for e in steps_of(events, 0))
    assert all(e["lr"] == pytest.approx(5e-4) for e in steps_of(events, 1))


def test_rollback_to_an_earlier_checkpoint_sets_newer_ones_aside(tmp_path):
    cfg = make_config(tmp_path, BASE + ["train.precision=fp32", f"run.output_dir=\"{tmp_path}\""])
    code, events, run_dir = train_in_process(cfg, monitor=StepHook({(0, 7): command_at("restart", from_step=3)}))
    assert code == 0
    restart = next(e for e in events if e["type"] == "restart")
    assert restart["from_step"] == 3
    assert [e["step"] for e in steps_of(events, 1)] == [4, 5, 6, 7, 8]
    assert (run_dir.checkpoints / "superseded" / "attempt-0" / "step-000006").is_dir()


def test_bad_commands_are_reported_and_ignored(tmp_path):
    cfg = make_config(tmp_path, BASE + ["train.precision=fp32", "train.max_steps=4", f"run.output_dir=\"{tmp_path}\""])

    def write_garbage(trainer):
        with open(trainer.run_dir.control, "a") as f:
            f.write("not json\n")
            f.write('{"cmd": "explode"}\n')
            f.write('{"cmd": "restart", "precision": "fp8"}\n')
            f.write('{"cmd": "restart", "from_step": 99}\n')

    code, events, _ = train_in_process(cfg, monitor=StepHook({2: write_garbage}))
    assert code == 0
    acks = [e for e in events if e["type"] == "control"]
    assert len(acks) == 4 and not any(a["accepted"] for a in acks)
    assert "no complete checkpoint at step 99" in acks[3]["message"]
    assert not [e for e in events if e["type"] == "restart"]
    assert steps_of(events)[-1]["step"] == 4
