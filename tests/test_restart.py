"""In-process restart through control.jsonl: new precision, lower learning rate, rollback."""

import pytest
import torch

from helpers import StepHook, command_at, make_config, steps_of, train_in_process

BASE = ["train.max_steps=8", "train.batch_size=4", "train.warmup_steps=0", "checkpoint.every_steps=3",
        "train.lr_scheduler=\"constant\""]


def optimizer_moments(optimizer) -> dict:
    """Each parameter's Adam state (exp_avg, exp_avg_sq, step), copied."""
    return {index: {name: value.clone() for name, value in state.items()}
            for index, state in optimizer.state_dict()["state"].items()}


def optimizer_moments_of(state_dict: dict) -> dict:
    """The same, from a saved optimizer.pt."""
    return {index: dict(state) for index, state in state_dict["state"].items()}


def same_moments(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[i].keys() == b[i].keys() and all(torch.equal(a[i][name], b[i][name]) for name in a[i]) for i in a)


class RestartWatch(StepHook):
    """Records the trainer's state right after a restart from step 3, and that checkpoint's optimizer state."""

    def __init__(self, actions: dict):
        super().__init__(actions)
        self.after_restart = None

    def on_restart(self, trainer):
        checkpoint = trainer.run_dir.checkpoints / "step-000003"
        frozen = [p for p in trainer.unwrapped_model.parameters() if not p.requires_grad]
        self.after_restart = {
            "base_dtypes": {p.dtype for p in frozen},
            "adapter_dtypes": {p.dtype for p in trainer.params},
            "moments": optimizer_moments(trainer.optimizer.optimizer),
            "checkpoint_moments": optimizer_moments_of(torch.load(checkpoint / "optimizer.pt", weights_only=True)),
        }


def test_restart_from_fp16_to_bf16(tmp_path):
    cfg = make_config(tmp_path, BASE + ["train.precision=fp16", f"run.output_dir=\"{tmp_path}\""])
    before_restart = {}

    def record_then_restart(trainer):
        before_restart["moments"] = optimizer_moments(trainer.optimizer.optimizer)
        command_at("restart", precision="bf16", reason="test")(trainer)

    watch = RestartWatch({(0, 4): record_then_restart})
    code, events, run_dir = train_in_process(cfg, monitor=watch)
    assert code == 0
    restarts = [e for e in events if e["type"] == "restart"]
    assert len(restarts) == 1
    restart = restarts[0]
    assert restart["from_step"] == 3 and restart["step"] == 3
    assert restart["precision"] == "bf16" and restart["attempt"] == 1 and restart["reason"] == "test"
    assert restart["learning_rate"] == pytest.approx(cfg.train.learning_rate)  # unchanged: not asked for
    # The base model was reloaded in bf16; the trainable adapter stays fp32.
    state = watch.after_restart
    assert state["base_dtypes"] == {torch.bfloat16}
    assert state["adapter_dtypes"] == {torch.float32}
    # Adam's moments came over from step 3's checkpoint, not from step 4 and not from scratch.
    assert state["moments"] and same_moments(state["moments"], state["checkpoint_moments"])
    assert not same_moments(before_restart["moments"], state["checkpoint_moments"])
    assert all(e["precision"] == "fp16" and e["scale"] is not None for e in steps_of(events, 0))
    later = steps_of(events, 1)
    assert [e["step"] for e in later] == [4, 5, 6, 7, 8]
    assert all(e["precision"] == "bf16" and e["scale"] is None for e in later)
    assert all(e["lr"] == pytest.approx(cfg.train.learning_rate) for e in later)
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
