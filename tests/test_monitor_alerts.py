"""Alerts end to end: the real trainer and monitor raise each alert with its evidence and fix, once per episode,
keep quiet about what an open alert already explains, and resolve it; skipped steps are watched in every precision.

Gradients that are not finite while the loss is come from NonFiniteGradients (test_monitor_support), a test-only
hook in the real backward pass; a loss spike comes from a batch of junk rows in the data.
"""

import math
import random
from contextlib import contextmanager

import pytest

from helpers import make_config, steps_of
from loratui.control import send_command
from loratui.events.bus import CallbackSink, EventBus
from loratui.hardware import Capabilities
from loratui.monitor import build_monitor, explain
from loratui.monitor.activations import ModulePeak
from loratui.monitor.diagnosis import Diagnosis, RowReport
from loratui.monitor.detectors import LossSpikes
from loratui.run_dir import prepare_run_dir
from loratui.train.trainer import StepFigures, Trainer
from test_monitor_support import (NonFiniteGradients, PersonAtTheKeys, finite, junk_batch_data, of_type,
                                  train_monitored)

QUICK = ["train.batch_size=2", "train.warmup_steps=5", "checkpoint.every_steps=1000", "monitor.probe_every=1000",
         "monitor.probe_budget=1.0"]  # probes where a test puts them, whatever they cost


def run(tmp_path, overrides, **kwargs):
    config = make_config(tmp_path, [*QUICK, f'run.output_dir="{tmp_path}"', *overrides])
    code, events, _ = train_monitored(config, **kwargs)
    assert code == 0
    return config, events


def kinds(events, event_type="alert"):
    return [(e["kind"], e["step"]) for e in of_type(events, event_type)]


def step_event(events, step, attempt=0):
    return next(e for e in steps_of(events, attempt=attempt) if e["step"] == step)


# ------------------------------------------------------------------ skipped steps, in every precision

@pytest.mark.parametrize("precision, extra, kind", [
    ("fp32", [], "nonfinite_grads"),
    ("bf16", [], "nonfinite_grads"),
    ("fp16", ["amp.loss_scaling=false"], "overflow"),
])
def test_skipped_steps_raise_an_alert_without_a_loss_scaler(tmp_path, precision, extra, kind):
    """Every step from 5 on has a non-finite gradient and a finite loss; nothing calibrates, so 5 skips in a row
    (steps 5-9) are the alert, and what it blames depends on the precision."""
    config, events = run(tmp_path, [f"train.precision={precision}", "train.max_steps=12", "checkpoint.every_steps=2",
                                    "monitor.probe_every=6", *extra],
                         fault=NonFiniteGradients(range(5, 13)))
    steps = steps_of(events)
    assert [e["step"] for e in steps if e["skipped"]] == list(range(5, 13))
    assert all(finite(e["loss"]) for e in steps)  # the loss alone shows nothing wrong
    alerts = [e for e in of_type(events, "alert") if e["kind"] == kind]
    assert [a["step"] for a in alerts] == [9]  # the fifth skip in a row; then one alert for the whole episode
    alert = alerts[0]
    evidence = alert["evidence"]
    assert alert["severity"] == "critical"
    assert (evidence["consecutive_skips"], evidence["first_skipped_step"], evidence["scale"]) == (5, 5, None)
    assert evidence["nonfinite_grads"] >= 1
    skip_rate = next(e for e in of_type(events, "health") if e["step"] == 12)["checks"]["skip_rate"]
    assert skip_rate["status"] == "alert" and skip_rate["value"] == pytest.approx(8 / 12, abs=1e-3)
    if precision == "fp16":
        assert alert["message"] == "fp16 gradients overflow: 5 steps in a row were skipped (loss scaling is off)"
        assert (alert["suggestion"], alert["fix"]) == ("switch_precision", {"precision": "bf16"})
        assert "loss scaling off (amp.loss_scaling = false)" in alert["explanation"]
        assert "Turning loss scaling on (amp.loss_scaling = true)" in alert["explanation"]
        assert "gradient overflow" in skip_rate["summary"]
        return
    # bf16 and fp32 have fp32's range: no precision is blamed, and no other alert either.
    assert kinds(events) == [(kind, 9)]
    assert alert["message"] == (f"gradients are not finite: 5 steps in a row were skipped in {precision}, "
                                f"with finite losses")
    assert f"This is not a range problem of {precision}" in alert["explanation"]
    assert "fp16" not in alert["explanation"] and "precision" not in alert["fix"]
    # A lower rate from the newest checkpoint before the first skip (checkpoints every 2 steps: step 4).
    assert alert["suggestion"] == "lower_lr"
    assert alert["fix"] == {"learning_rate": pytest.approx(config.train.learning_rate * config.train.lr_factor),
                            "from_step": 4}
    assert "non-finite gradients" in skip_rate["summary"]


def test_the_nonfinite_gradients_fix_resolves_the_alert_at_the_restart(tmp_path):
    """The person applies the suggested lower_lr fix: the episode closes at the restart and the run trains on."""
    person = PersonAtTheKeys()
    config, events = run(tmp_path, ["train.precision=fp32", "train.max_steps=12"], on_event=person,
                         fault=NonFiniteGradients(range(3, 13), attempts={0}))
    assert kinds(events) == [("nonfinite_grads", 7)]
    restart = of_type(events, "restart")
    assert len(restart) == 1 and restart[0]["from_step"] == 0
    assert restart[0]["learning_rate"] == pytest.approx(config.train.learning_rate * config.train.lr_factor)
    resolved = of_type(events, "alert_resolved")
    assert [(e["kind"], e["opened_at"], e["attempt"]) for e in resolved] == [("nonfinite_grads", 7, 1)]
    assert resolved[0]["reason"].startswith("restart from step 0 (fp32, lr 0.001)")
    fixed = steps_of(events, attempt=1)
    assert len(fixed) == 12 and not any(e["skipped"] for e in fixed) and all(finite(e["loss"]) for e in fixed)


def test_skipped_steps_alert_resolves_once_the_skips_leave_the_window(tmp_path):
    """Skips at steps 3-8, then clean steps: the 10-step window is clear of them from step 17 (1 skip in 10 is
    not over skip_rate_max = 0.1), and 10 healthy steps later the episode is resolved."""
    _, events = run(tmp_path, ["train.precision=fp32", "train.max_steps=28", "monitor.skip_window=10"],
                    fault=NonFiniteGradients(range(3, 9)))
    assert kinds(events) == [("nonfinite_grads", 7)]
    resolved = of_type(events, "alert_resolved")
    assert [(e["kind"], e["step"], e["opened_at"]) for e in resolved] == [("nonfinite_grads", 26, 7)]
    assert resolved[0]["reason"] == "skips healthy for 10 step(s)"


# ------------------------------------------------------------------ fp16 with a loss scaler

def test_overflow_after_calibration_is_one_alert_and_silences_scale_collapse(tmp_path):
    """fp16 with a GradScaler starting at 1024; every step from 5 on overflows. Steps 1-4 are calibration, 5
    skips in a row after it are overflow, and the scale halving below 1 (step 16) adds no scale_collapse alert:
    it follows from the overflow already reported. Nor does its forecast: the weights moved at a healthy rate, so
    nothing says the learning rate grew the values (docs/diagnosis.md)."""
    _, events = run(tmp_path, ["train.precision=fp16", "train.max_steps=17", "amp.init_scale=1024",
                               "monitor.calibration_steps=4"],
                    fault=NonFiniteGradients(range(5, 18)))
    steps = steps_of(events)
    assert [e["step"] for e in steps if e["skipped"]] == list(range(5, 18))
    assert [e["step"] for e in steps if e["scale"] < 1] == [16, 17]
    assert kinds(events) == [("overflow", 9)]
    alert = of_type(events, "alert")[0]
    assert alert["severity"] == "critical"
    assert alert["message"] == "fp16 gradients overflow: 5 steps in a row were skipped after the loss scale settled"
    evidence = alert["evidence"]
    assert evidence["scale"] == step_event(events, 9)["scale"] == 1024 / 2 ** 4
    assert (evidence["consecutive_skips"], evidence["skipped_steps"], evidence["window_steps"]) == (5, 5, 5)
    assert evidence["skip_rate"] == 1.0 and evidence["first_skipped_step"] == 5
    assert (alert["suggestion"], alert["fix"]) == ("switch_precision", {"precision": "bf16"})
    assert "in the first 4 steps that is calibration" in alert["explanation"]
    assert "at scale 64" in alert["explanation"] and "Restarting in bf16 fixes it" in alert["explanation"]


def test_scale_collapse_alert_even_while_calibrating(tmp_path):
    """Steps 1-6 overflow at a scale that starts at 8: skips inside calibration are no alert, but the scale below 1
    (0.5 at step 5) is a real overflow, reported once for the whole episode."""
    _, events = run(tmp_path, ["train.precision=fp16", "train.max_steps=8", "amp.init_scale=8"],
                    fault=NonFiniteGradients(range(1, 7)))
    assert [e["scale"] for e in steps_of(events)] == [8, 4, 2, 1, 0.5, 0.25, 0.125, 0.125]
    assert kinds(events) == [("scale_collapse", 5)]
    alert = of_type(events, "alert")[0]
    assert alert["severity"] == "critical"
    assert alert["message"] == "fp16 loss scale collapsed to 0.5: the values overflow even unscaled"
    assert alert["evidence"] == {"scale": 0.5, "highest_scale": 8}
    assert (alert["suggestion"], alert["fix"]) == ("switch_precision", {"precision": "bf16"})
    assert "started at 8 and is now 0.5" in alert["explanation"]


class RestartAt:
    """A person who restarts the run from step 0 after `step` (through control.jsonl, as the dashboard does)."""

    def __init__(self, step: int):
        self.step = step
        self.control = None

    def __call__(self, event: dict) -> None:
        if event["type"] == "run_started":
            self.control = f"{event['run_dir']}/control.jsonl"
        if event["type"] == "step" and event["attempt"] == 0 and event["step"] == self.step:
            send_command(self.control, "restart", from_step=0, reason="test: start over")


def test_calibration_starts_over_after_a_restart(tmp_path):
    """Steps 1-5 overflow in every attempt, inside the 5 calibration steps. After the restart they are steps 9-13
    of the monitor's life: counted from the run's start they would be overflow, counted from the restart they
    are the new scaler's calibration."""
    _, events = run(tmp_path, ["train.precision=fp16", "train.max_steps=8", "monitor.calibration_steps=5"],
                    on_event=RestartAt(7), fault=NonFiniteGradients(range(1, 6)))
    assert len(of_type(events, "restart")) == 1
    for attempt in (0, 1):
        assert [e["step"] for e in steps_of(events, attempt) if e["skipped"]] == [1, 2, 3, 4, 5]
    assert of_type(events, "alert") == []
    probe = next(e for e in of_type(events, "health", attempt=1) if e["step"] == 3)
    assert probe["checks"]["skip_rate"]["summary"].startswith("calibrating the loss scale (step 3 of 5)")


# ------------------------------------------------------------------ loss spikes

def test_a_loss_spike_is_one_alert_then_resolved_and_no_divergence(tmp_path):
    """One batch of junk at step 26: one loss far above the last 25, a warning with no fix, resolved after
    10 normal steps; a single bad batch is not a divergence."""
    data = junk_batch_data(tmp_path, at_step=26, batch_size=8)
    _, events = run(tmp_path, ["train.precision=fp32", "train.max_steps=36", "train.batch_size=8",
                               "data.shuffle=false", f'data.path="{data}"', 'data.format="text"'])
    losses = [e["loss"] for e in steps_of(events)]
    assert kinds(events) == [("loss_spike", 26)]
    alert = of_type(events, "alert")[0]
    evidence = alert["evidence"]
    assert alert["severity"] == "warning" and (alert["suggestion"], alert["fix"]) == ("none", {})
    assert evidence["loss"] == losses[25] > evidence["limit"]
    assert evidence["window_steps"] == 25 and evidence["sigma"] == 6.0
    assert evidence["window_mean"] == pytest.approx(sum(losses[:25]) / 25, abs=1e-4)
    assert evidence["limit"] == pytest.approx(evidence["window_mean"] + 6 * evidence["window_std"], abs=1e-3)
    assert alert["message"] == (f"loss spiked to {losses[25]:.4g} at step 26 (mean {evidence['window_mean']:.4g} "
                                f"± {evidence['window_std']:.2g} over the last 25 steps)")
    resolved = of_type(events, "alert_resolved")
    assert [(e["kind"], e["step"], e["opened_at"]) for e in resolved] == [("loss_spike", 36, 26)]


@contextmanager
def set_up_trainer(tmp_path, overrides=()):
    """A real trainer, set up (model, data, the monitor attached, the step-0 checkpoint) but not training; yields
    (trainer, monitor, the events published so far and from now on)."""
    tmp_path.mkdir(exist_ok=True)
    config = make_config(tmp_path, [*QUICK, f'run.output_dir="{tmp_path}"', *overrides])
    run_dir = prepare_run_dir(config, resume=False, config_text="")
    bus = EventBus()
    events = []
    bus.add_sink(CallbackSink(events.append))
    monitor = build_monitor(config, bus)
    trainer = Trainer(config, run_dir, bus, monitor=monitor)
    trainer.setup()
    try:
        yield trainer, monitor, events
    finally:
        trainer.cleanup()
        bus.close()


def feed(tmp_path, losses):
    """The real monitor, fed one StepFigures per loss through after_step; returns the events."""
    with set_up_trainer(tmp_path, ["train.precision=fp32"]) as (trainer, monitor, events):
        for step, loss in enumerate(losses, start=1):
            trainer.step = step
            monitor.after_step(trainer, StepFigures(loss=loss, grad_norm=1.0, scale=None, skipped=False,
                                                    nonfinite_grads=0, tokens=64, lr=1e-3, seconds=0.01))
    return events


def test_loss_spikes_are_silent_while_the_loss_diverges(tmp_path):
    """The same two spikes after a flat loss are one loss_spike alert; after the loss has turned around they are
    part of the divergence already reported, and say nothing more."""
    rng = random.Random(1)
    flat = [3.0 + rng.gauss(0, 0.3) for _ in range(30)]
    spikes = [100.0, 3.0, 150.0]
    calm = feed(tmp_path / "calm", flat + spikes)
    assert kinds(calm) == [("loss_spike", 31)]  # the second spike (step 33) is the same episode
    rising = [4.0 + 0.2 * k for k in range(6)]  # each within 6 sigma of the losses before it: not a spike
    diverging = feed(tmp_path / "diverging", flat + rising + spikes)
    # A median of 8 steps at batch size 2 (16 examples), and a rise past the flat loss's step-to-step
    # noise (0.3 a step, 10% of the loss: its 25% rise alone was cleared a step earlier, at 35), 4 times over.
    assert kinds(diverging) == [("divergence", 36)]
    # The spikes are still spikes by the detector's own reading: only the rule silences them.
    detector = LossSpikes(sigma=6.0, window=50)
    readings = [detector.observe(loss) for loss in flat + rising + spikes]
    assert readings[-3].bad and readings[-1].bad


# ------------------------------------------------------------------ fp16 headroom

def test_headroom_names_a_module_with_its_own_peak_and_the_largest_apart(tmp_path):
    """A 20000x margin puts layer 0's norm output (about 3.4) past it first, while lm_head's output (about 11) is
    the largest activation: the named module comes with its own value, the largest with its own names."""
    _, events = run(tmp_path, ["train.precision=fp16", "train.max_steps=1", "monitor.fp16_headroom_min=20000"])
    check = of_type(events, "health")[0]["checks"]["fp16_headroom"]
    assert check["module"] == "model.layers.0.input_layernorm" and check["largest_module"] == "lm_head"
    assert 65504 / 20000 <= check["peak"] < check["largest_peak"]
    assert check["value"] == pytest.approx(65504 / check["largest_peak"], rel=1e-4)  # the headroom: to the largest
    assert check["summary"].startswith(f"{check['module']} {check['where']} peaks at {check['peak']:.3g}: ")
    assert f"(largest: lm_head output, {check['largest_peak']:.3g})" in check["summary"]
    alert = of_type(events, "alert")[0]
    evidence = alert["evidence"]
    assert (evidence["module"], evidence["where"], evidence["value"]) == (check["module"], check["where"],
                                                                          check["peak"])


# ------------------------------------------------------------------ explanations true to the precision

COLLAPSE = {"scale": 0.5, "highest_scale": 65536.0}


def test_fp16_fixes_name_bf16_where_it_is_usable(tmp_path):
    with set_up_trainer(tmp_path, ["train.precision=fp16"]) as (trainer, _, _events):
        alert = explain.scale_collapse(trainer, 3, COLLAPSE)  # on CPU, bf16 computes exactly (emulated)
    assert alert.fix == {"precision": "bf16"}
    assert alert.explanation.endswith("Restarting in bf16 fixes it: bf16 has fp32's range (up to 3.4e38), so it "
                                      "needs no loss scaling.")


def test_fp16_fixes_name_fp32_where_bf16_is_not_native(tmp_path):
    with set_up_trainer(tmp_path, ["train.precision=fp16"]) as (trainer, _, _events):
        trainer.capabilities = Capabilities("cuda", "Tesla T4", (7, 5), support={"fp32": "native", "fp16": "native",
                                                                                  "bf16": "emulated"})
        alert = explain.scale_collapse(trainer, 3, COLLAPSE)
    assert alert.fix == {"precision": "fp32"}
    assert alert.explanation.endswith("Restarting in fp32 fixes it (bf16 would too, but it is not native on this "
                                      "device).")


def test_bf16_fixes_never_blame_the_device_or_bf16s_range(tmp_path):
    """From bf16 the fix is fp32 on any device, and rows failing only in bf16 are its rounding, not its range."""
    with set_up_trainer(tmp_path, ["train.precision=bf16"]) as (trainer, _, _events):
        diagnosis = Diagnosis(rows=4, failing=[RowReport(0, "epoch 0, batch 0, row 0", math.nan, 2.5, 9.0e4, "Hi")],
                              peak_module=ModulePeak("model.layers.1.mlp.down_proj", "input", 9.0e4, 7),
                              largest=9.0e4)
        alert = explain.nonfinite_loss(trainer, 2, math.nan, diagnosis)
    assert (alert.suggestion, alert.fix) == ("switch_precision", {"precision": "fp32"})
    assert alert.message == ("the loss is nan at step 2: 1 of 4 rows fail only in bf16 "
                             "(model.layers.1.mlp.down_proj receives 9e+04)")
    assert "so it is bf16's rounding (it keeps 8 significant bits; its range is fp32's)" in alert.explanation
    assert alert.explanation.endswith("Restarting in fp32 fixes it: fp32 has bf16's range with 24 significant bits "
                                      "instead of 8.")
    assert "native" not in alert.explanation and "range, triggered" not in alert.explanation
