"""Exact resume on CPU in fp32: a run stopped at step k and resumed reproduces the uninterrupted run."""

import json

import pytest
import torch
from safetensors.torch import load_file

from helpers import StepHook, command_at, make_config, steps_of, train_in_process
from loratui.model.loading import identity_mismatches
from loratui import checkpoint_files as ckpt

BASE = ["train.precision=fp32", "train.max_steps=12", "train.batch_size=4", "train.warmup_steps=2",
        "checkpoint.every_steps=4", "lora.dropout=0.1"]


def losses_by_step(events, attempt=None):
    return {e["step"]: e["loss"] for e in steps_of(events, attempt)}


def adapter(run_dir):
    return load_file(str(run_dir.adapter / "adapter_model.safetensors"))


# 12 rows, 4 a batch: 3 batches an epoch, each epoch in its own shuffled order.
SMALL = ["data.path=\"{small}\"", "data.format=\"text\"", "data.shuffle=true"]


@pytest.mark.parametrize("stop_at,extra", [
    (5, []),                                     # between checkpoints: resumes from the stop's checkpoint
    (7, ["train.grad_accum=2"]),                 # with gradient accumulation
    (7, SMALL),                                  # the first batch of epoch 2: the resumed part crosses into epoch 3
    (9, SMALL),                                  # the last batch of epoch 2: the resumed part starts epoch 3
], ids=["mid_run", "grad_accum", "resume_crosses_epoch", "stop_at_epoch_end"])
def test_stop_and_resume_matches_uninterrupted(tmp_path, stop_at, extra):
    small = tmp_path / "small.jsonl"
    small.write_text("".join(f'{{"text": "Question: What is {i} plus {i}? Answer: {2 * i}."}}\n' for i in range(12)))
    small_data = extra == SMALL
    extra = [e.replace("{small}", str(small)) for e in extra]
    out = f"run.output_dir=\"{tmp_path / 'runs'}\""
    full_cfg = make_config(tmp_path, BASE + extra + [out, "run.name=full"])
    code, full_events, full_dir = train_in_process(full_cfg)
    assert code == 0
    if small_data:  # the epochs fall where the cases above say
        epochs = {e["step"]: e["epoch"] for e in steps_of(full_events)}
        assert [epochs[step] for step in (1, 3, 4, 7, 9, 10, 12)] == [0, 0, 1, 2, 2, 3, 3]

    part_cfg = make_config(tmp_path, BASE + extra + [out, "run.name=part"])
    code, first, part_dir = train_in_process(part_cfg, monitor=StepHook({stop_at: command_at("stop")}))
    assert code == 0
    assert max(losses_by_step(first)) == stop_at
    assert any(e["type"] == "checkpoint" and e["step"] == stop_at for e in first)

    code, events, _ = train_in_process(part_cfg, resume=True)
    assert code == 0
    resumed = [e for e in events if e["type"] == "run_started"][-1]
    assert resumed["resumed_from"].endswith(f"step-{stop_at:06d}")
    assert resumed["attempt"] == 1
    full = losses_by_step(full_events)
    after = losses_by_step(events, attempt=1)
    assert sorted(after) == list(range(stop_at + 1, 13))
    for step, loss in after.items():
        assert abs(loss - full[step]) <= 1e-6, (step, loss, full[step])
    final_full, final_part = adapter(full_dir), adapter(part_dir)
    assert final_full.keys() == final_part.keys()
    for name in final_full:
        assert torch.equal(final_full[name], final_part[name]), name


def test_a_refused_resume_leaves_the_runs_config_as_it_was(tmp_path):
    out = f"run.output_dir=\"{tmp_path / 'runs'}\""
    code, _, run_dir = train_in_process(make_config(tmp_path, ["train.precision=fp32", "train.max_steps=2", out]))
    assert code == 0
    before = run_dir.config.read_text()
    # The adapter's shape and its scale (alpha / r) are what it means: neither may change.
    for change, named in (("lora.r=4", "lora_r: 8 -> 4"), ("lora.alpha=32.0", "lora_alpha: 16.0 -> 32.0")):
        code, events, _ = train_in_process(make_config(tmp_path, ["train.precision=fp32", "train.max_steps=4", out,
                                                                  change]), resume=True)
        assert code == 2
        assert "cannot resume" in events[-1]["error"] and named in events[-1]["error"], events[-1]["error"]
        assert run_dir.config.read_text() == before
        assert not run_dir.pending_config.exists()
    # An accepted resume (the learning rate and dropout may change) makes its config the run's.
    code, _, _ = train_in_process(make_config(tmp_path, ["train.precision=fp32", "train.max_steps=4", out,
                                                         "train.learning_rate=1e-4", "lora.dropout=0.2"]),
                                  resume=True)
    assert code == 0
    assert "learning_rate = 0.0001" in run_dir.config.read_text()


def test_identity_changes_name_each_changed_key_and_ignore_keys_a_checkpoint_never_recorded():
    current = {"model": "builtin:tiny-llama", "lora_r": 8, "lora_alpha": 32.0, "tokenizer": "abc"}
    recorded = {"model": "builtin:tiny-llama", "lora_r": 4, "lora_alpha": 16.0, "tokenizer": "abc"}
    assert identity_mismatches(recorded, current) == ["lora_r: 4 -> 8", "lora_alpha: 16.0 -> 32.0"]
    written_before_alpha_was_recorded = {k: v for k, v in recorded.items() if k != "lora_alpha"}
    assert identity_mismatches(written_before_alpha_was_recorded, current) == ["lora_r: 4 -> 8"]
    assert identity_mismatches(current, current) == []


def forget_in_checkpoint_state(checkpoint, key: str) -> None:
    """Make a checkpoint look written by a loratui whose identity did not record `key` yet."""
    state_path = checkpoint / ckpt.STATE
    state = json.loads(state_path.read_text())
    del state["identity"][key]
    state_path.write_text(json.dumps(state))
    manifest = json.loads((checkpoint / ckpt.MANIFEST).read_text())
    manifest["files"][ckpt.STATE] = {"size": state_path.stat().st_size, "sha256": ckpt._sha256(state_path)}
    (checkpoint / ckpt.MANIFEST).write_text(json.dumps(manifest))


def test_a_checkpoint_from_before_lora_alpha_was_recorded_still_resumes(tmp_path):
    out = f"run.output_dir=\"{tmp_path / 'runs'}\""
    code, _, run_dir = train_in_process(make_config(tmp_path, ["train.precision=fp32", "train.max_steps=2", out]))
    assert code == 0
    newest = ckpt.list_complete(run_dir.checkpoints)[0]
    forget_in_checkpoint_state(newest.path, "lora_alpha")
    assert ckpt.list_complete(run_dir.checkpoints)[0].path == newest.path  # still a complete checkpoint
    code, events, _ = train_in_process(make_config(tmp_path, ["train.precision=fp32", "train.max_steps=4", out]),
                                       resume=True)
    assert code == 0, events[-1]
    assert [e["step"] for e in steps_of(events, attempt=1)] == [3, 4]
