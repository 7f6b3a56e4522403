"""Learning-rate schedules with warmup, gradient accumulation, and seeded determinism on CPU."""

import math

import pytest

from helpers import make_config, steps_of, train_in_process

FAST = ["train.precision=fp32", "train.batch_size=2", "checkpoint.every_steps=100", "train.learning_rate=1e-3"]


def lrs(tmp_path, *overrides):
    cfg = make_config(tmp_path, FAST + list(overrides) + [f"run.output_dir=\"{tmp_path}\"",
                                                          f"run.name=r{abs(hash(overrides))}"])
    code, events, _ = train_in_process(cfg)
    assert code == 0
    return [e["lr"] for e in steps_of(events)]


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_schedules_warm_up_then_follow_their_shape(tmp_path, schedule):
    got = lrs(tmp_path, "train.max_steps=10", "train.warmup_steps=4", f"train.lr_scheduler=\"{schedule}\"")
    assert got[:5] == pytest.approx([0.0, 2.5e-4, 5e-4, 7.5e-4, 1e-3])  # lr of each step, warmup linear
    after = got[4:]
    if schedule == "constant":
        assert after == pytest.approx([1e-3] * 6)
    elif schedule == "linear":
        assert after == pytest.approx([1e-3 * (10 - s) / 6 for s in range(4, 10)])
    else:
        assert after == pytest.approx([1e-3 * 0.5 * (1 + math.cos(math.pi * (s - 4) / 6)) for s in range(4, 10)])


def test_same_seed_same_losses_and_another_seed_differs(tmp_path):
    def losses(seed, name):
        cfg = make_config(tmp_path, FAST + ["train.max_steps=5", f"train.seed={seed}", f"run.name={name}",
                                            f"run.output_dir=\"{tmp_path}\""])
        code, events, _ = train_in_process(cfg)
        assert code == 0
        return [e["loss"] for e in steps_of(events)]

    assert losses(7, "a") == losses(7, "b")
    assert losses(7, "c") != losses(8, "d")


def test_grad_accumulation_consumes_micro_batches_and_counts_tokens(tmp_path):
    one = make_config(tmp_path, FAST + ["train.max_steps=3", "train.grad_accum=1", "run.name=one",
                                        "data.shuffle=false", f"run.output_dir=\"{tmp_path}\""])
    two = make_config(tmp_path, FAST + ["train.max_steps=3", "train.grad_accum=2", "run.name=two",
                                        "data.shuffle=false", f"run.output_dir=\"{tmp_path}\""])
    _, events_one, _ = train_in_process(one)
    _, events_two, _ = train_in_process(two)
    tokens_one = [e["tokens"] for e in steps_of(events_one)]
    tokens_two = [e["tokens"] for e in steps_of(events_two)]
    # Without shuffling, accumulation step k covers micro-batches 2k and 2k+1 of the plain run's order.
    assert tokens_two[0] == tokens_one[0] + tokens_one[1]
    assert steps_of(events_two)[0]["loss"] == pytest.approx(
        (steps_of(events_one)[0]["loss"] + _first_loss_of_second_batch(tmp_path)) / 2, rel=1e-5)


def _first_loss_of_second_batch(tmp_path):
    """The loss of the unshuffled second micro-batch under the initial adapter (LoRA B = 0)."""
    cfg = make_config(tmp_path, FAST + ["train.max_steps=1", "data.shuffle=false", "run.name=second",
                                        f"run.output_dir=\"{tmp_path}\"", "lora.dropout=0.0"])
    from helpers import ready_trainer

    trainer = ready_trainer(cfg)
    trainer.stream.next_batch()
    import torch

    with torch.no_grad():
        loss = trainer.model(**trainer.stream.next_batch()).loss.item()
    trainer.cleanup()
    return loss
