"""fp32, bf16 and fp16 are what they say, on CPU too: autocast, half activations, a real GradScaler."""

import math

import pytest
import torch

from helpers import make_config, ready_trainer, steps_of, train_in_process

FAST = ["train.max_steps=6", "train.batch_size=2", "train.warmup_steps=0", "checkpoint.every_steps=100"]


def activation_dtypes(trainer):
    """dtype of every Linear output in one forward pass under the trainer's autocast."""
    seen = set()
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
             for m in trainer.unwrapped_model.modules() if isinstance(m, torch.nn.Linear)]
    batch = trainer.stream.next_batch()
    with torch.no_grad(), trainer.precision.autocast():
        trainer.model(**batch)
    for hook in hooks:
        hook.remove()
    return seen


@pytest.mark.parametrize("precision,dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16),
                                             ("fp16", torch.float16)])
def test_activations_and_weights_follow_the_precision(tmp_path, precision, dtype):
    trainer = ready_trainer(make_config(tmp_path, FAST + [f"train.precision={precision}",
                                                          f"run.output_dir=\"{tmp_path}\""]))
    assert activation_dtypes(trainer) == {dtype}
    # Trainable LoRA weights stay fp32 (GradScaler refuses to unscale fp16 gradients).
    assert trainer.params and all(p.dtype == torch.float32 for p in trainer.params)
    base = [p for p in trainer.unwrapped_model.parameters() if not p.requires_grad]
    assert all(p.dtype == dtype for p in base)
    assert (trainer.precision.scaler is not None) == (precision == "fp16")
    trainer.cleanup()


def test_fp16_on_cpu_uses_a_real_scaler_whose_scale_changes(tmp_path):
    # An initial scale of 2**40 overflows the fp16 gradients: the scaler must skip and back off,
    # and the learning-rate schedule must not advance on those skipped steps.
    cfg = make_config(tmp_path, FAST + ["train.precision=fp16", "amp.init_scale=1099511627776.0",
                                        "train.lr_scheduler=\"linear\"", "train.max_steps=20",
                                        f"run.output_dir=\"{tmp_path}\""])
    code, events, _ = train_in_process(cfg)
    assert code == 0
    steps = steps_of(events)
    scales = [e["scale"] for e in steps]
    assert scales[0] == 2.0 ** 40
    skipped = [e for e in steps if e["skipped"]]
    assert skipped, "an initial scale of 2**40 must overflow fp16 gradients"
    assert min(scales) < scales[0]
    for before, after in zip(steps, steps[1:]):
        if before["skipped"]:
            assert after["scale"] == before["scale"] / 2  # backoff 0.5 per overflow
            assert after["lr"] == before["lr"]  # the schedule did not advance
    assert all(math.isfinite(e["loss"]) for e in steps)
    assert all(e["precision"] == "fp16" for e in steps)


def test_grad_norm_is_unscaled(tmp_path):
    """The reported grad norm in fp16 is the unscaled one: close to fp32's on the same first batch."""
    norms = {}
    for precision in ("fp32", "fp16"):
        cfg = make_config(tmp_path, FAST + [f"train.precision={precision}", "train.max_steps=1",
                                            "lora.dropout=0.0", f"run.name={precision}",
                                            f"run.output_dir=\"{tmp_path}\""])
        code, events, _ = train_in_process(cfg)
        assert code == 0
        norms[precision] = steps_of(events)[0]["grad_norm"]
    assert norms["fp16"] == pytest.approx(norms["fp32"], rel=0.05)


def test_auto_resolves_to_bf16_on_cpu(tmp_path):
    code, events, _ = train_in_process(make_config(tmp_path, FAST + ["train.max_steps=1",
                                                                      f"run.output_dir=\"{tmp_path}\""]))
    assert code == 0
    started = next(e for e in events if e["type"] == "run_started")
    assert started["requested_precision"] == "auto" and started["precision"] == "bf16"
    assert steps_of(events)[0]["precision"] == "bf16"


def gradient_norm(params) -> float:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.float()) for p in params])).item()


def unscaled_gradient_norm(trainer, batch) -> float:
    """The norm of the step's gradients, recomputed outside the trainer: same weights, same batch,
    the loss scaled by the scaler's current scale and the gradients divided by it again."""
    scale = trainer.precision.scaler.get_scale() if trainer.precision.scaler else 1.0
    with trainer.precision.autocast():
        loss = trainer.model(**batch).loss
    (loss * scale).backward()
    for param in trainer.params:
        param.grad /= scale
    norm = gradient_norm(trainer.params)
    trainer.optimizer.zero_grad(set_to_none=True)
    return norm


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_grad_norm_is_taken_after_unscaling_and_before_clipping(tmp_path, precision):
    max_norm = 1e-3
    trainer = ready_trainer(make_config(tmp_path, FAST + [
        f"train.precision={precision}", f"train.max_grad_norm={max_norm}", "lora.dropout=0.0",
        "amp.init_scale=1024.0", f"run.output_dir=\"{tmp_path}\""]))
    position = trainer.stream.position
    expected = unscaled_gradient_norm(trainer, trainer.stream.next_batch())
    trainer.stream.position = position  # the step trains on the same batch
    norms_at_update = []
    trainer.optimizer.optimizer.register_step_pre_hook(
        lambda *_: norms_at_update.append(gradient_norm(trainer.params)))
    figures = trainer.train_step()
    trainer.cleanup()
    assert not figures.skipped
    assert figures.grad_norm > 10 * max_norm  # so clipping had work to do
    assert figures.grad_norm == pytest.approx(expected, rel=1e-5)
    # ...and it did: the optimizer stepped with gradients clipped to max_grad_norm.
    assert norms_at_update == [pytest.approx(max_norm, rel=1e-3)]
