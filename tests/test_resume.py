"""Exact resume on CPU in fp32: a run stopped at step k and resumed reproduces the uninterrupted run."""

import pytest
import torch
from safetensors.torch import load_file

from helpers import StepHook, command_at, make_config, steps_of, train_in_process

BASE = ["train.precision=fp32", "train.max_steps=12", "train.batch_size=4", "train.warmup_steps=2",
        "checkpoint.every_steps=4", "lora.dropout=0.1"]


def losses_by_step(events, attempt=None):
    return {e["step"]: e["loss"] for e in steps_of(events, attempt)}


def adapter(run_dir):
    return load_file(str(run_dir.adapter / "adapter_model.safetensors"))


@pytest.mark.parametrize("stop_at,extra", [
    (5, []),                                     # between checkpoints: resumes from the stop's checkpoint
    (7, ["train.grad_accum=2"]),                 # with gradient accumulation
    (9, ["data.path=\"{small}\"", "data.format=\"text\""]),  # across an epoch boundary (16 rows, 4 per batch)
])
def test_stop_and_resume_matches_uninterrupted(tmp_path, stop_at, extra):
    small = tmp_path / "small.jsonl"
    small.write_text("".join(f'{{"text": "Question: What is {i} plus {i}? Answer: {2 * i}."}}\n' for i in range(16)))
    extra = [e.replace("{small}", str(small)) for e in extra]
    out = f"run.output_dir=\"{tmp_path / 'runs'}\""
    full_cfg = make_config(tmp_path, BASE + extra + [out, "run.name=full"])
    code, full_events, full_dir = train_in_process(full_cfg)
    assert code == 0

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
    code, events, _ = train_in_process(make_config(tmp_path, ["train.precision=fp32", "train.max_steps=4", out,
                                                              "lora.r=4"]), resume=True)
    assert code == 2
    assert "cannot resume" in events[-1]["error"] and "lora_r: 8 -> 4" in events[-1]["error"]
    assert run_dir.config.read_text() == before
    assert not run_dir.pending_config.exists()
    # An accepted resume (a new learning rate may change) makes its config the run's.
    code, _, _ = train_in_process(make_config(tmp_path, ["train.precision=fp32", "train.max_steps=4", out,
                                                         "train.learning_rate=1e-4"]), resume=True)
    assert code == 0
    assert "learning_rate = 0.0001" in run_dir.config.read_text()
