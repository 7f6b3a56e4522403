"""The pattern MiniCPM-V users report, `loss 0.0` with `grad_norm nan` from the first steps: its own alert, naming the
cause the evidence supports.

MiniCPM-V-2_6's remote code and weights cannot exist here; ZeroedLoss (a test-only fake) stands in for the part of
such model code that matters: a loss that is not finite is replaced by 0.0 (as masked or guarded losses do), while
the NaN behind it still reaches the gradients. Everything else is real: the trainer, the fp16 autocast, the built-in
model whose activations overflow fp16, and the monitor's fp32 probe.
"""

import math

from helpers import make_config, steps_of
from loratui.monitor.detectors import LossCollapse
from test_monitor_support import of_type, train_monitored


class ZeroedLoss:
    """Test-only fake of remote model code: the model's loss, where it is not finite, becomes 0.0."""

    def on_event(self, trainer, event: dict) -> None:
        if event["type"] == "run_started":
            trainer.unwrapped_model.register_forward_hook(self.zero_nonfinite_loss)

    @staticmethod
    def zero_nonfinite_loss(module, args, output):
        import torch

        loss = output.loss
        # torch.where's backward multiplies the unchosen branch's gradient by 0: 0 * inf = NaN reaches the weights.
        output.loss = torch.where(torch.isfinite(loss), loss, torch.zeros_like(loss))
        return output


def test_loss_collapse_needs_steps_in_a_row():
    watch = LossCollapse(consecutive=2)
    assert watch.observe(1, 5.0, 3.0) is None
    assert not watch.observe(2, 0.0, math.nan).bad
    reading = watch.observe(3, 0.0, math.inf)
    assert reading.bad and reading.details["first_step"] == 2 and reading.details["steps_in_a_row"] == 2
    assert not watch.observe(4, 4.0, 2.0).bad  # the healthy step that follows closes it


def test_zero_loss_with_nan_gradients_in_fp16_is_blamed_on_fp16_with_the_fp32_evidence(tmp_path):
    config = make_config(tmp_path, ["train.precision=fp16", 'model.name_or_path="builtin:tiny-llama-outliers"',
                                    "train.max_steps=3", "train.batch_size=2", "checkpoint.every_steps=1000",
                                    f'run.output_dir="{tmp_path}"'])
    code, events, _ = train_monitored(config, fault=ZeroedLoss())
    assert code == 0
    steps = steps_of(events)
    assert all(e["loss"] == 0.0 and e["skipped"] for e in steps)  # what such a run shows: 0.0, and nothing learns
    collapse = [e for e in of_type(events, "alert") if e["kind"] == "loss_collapse"]
    assert [e["step"] for e in collapse] == [2]
    alert = collapse[0]
    assert (alert["suggestion"], alert["fix"]) == ("switch_precision", {"precision": "bf16"})
    probe = alert["evidence"]["probe"]
    assert probe["step"] == 2 and probe["target_tokens"] > 0 and 0 < probe["fp32_loss"] < 20
    assert "the NaN comes from fp16 arithmetic" in alert["explanation"]
    assert alert["message"].startswith("the loss is 0.0 with a non-finite gradient norm on 2 steps in a row")


def test_where_no_narrower_arithmetic_explains_it_the_model_code_is_named():
    """In fp32 (here its wording alone: a run that collapses in fp32 needs model code that cannot exist here) the
    alert suggests no restart and points at the model's code."""
    from types import SimpleNamespace

    from loratui.monitor import explain

    details = {"loss": 0.0, "grad_norm": math.nan, "steps_in_a_row": 2, "first_step": 1}
    alert = explain.loss_collapse(SimpleNamespace(precision_name="fp32"), 2, details,
                                  {"step": 1, "fp32_loss": math.nan, "target_tokens": 12.0})
    assert (alert.kind, alert.suggestion, alert.fix) == ("loss_collapse", "none", {})
    assert "neither the data's labels nor the precision explains it" in alert.explanation
    assert "In fp32 there is no narrower arithmetic to blame" not in alert.explanation  # the probe's figure is named
    assert "gave nan" in alert.explanation
