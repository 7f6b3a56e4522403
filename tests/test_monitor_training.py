"""The monitor on the real trainer: healthy runs stay silent, probes report, training is untouched, autopilot."""

import math

import pytest

from helpers import make_config, steps_of, train_in_process
from loratui.monitor.health import CHECK_NAMES
from loratui.errors import UserInputError
from loratui import checkpoint_files as ckpt
from test_monitor_support import (FULL, DamagedWeights, NonFiniteGradients, junk_batch_data, of_type, scenario_config,
                                  train_monitored)

QUICK = ["train.warmup_steps=5", "checkpoint.every_steps=1000"]


def healthy_run(tmp_path, precision, seed, steps, extra=()):
    config = make_config(tmp_path, [f"train.precision={precision}", f"train.seed={seed}",
                                    f"train.max_steps={steps}", f'run.output_dir="{tmp_path}"',
                                    f'run.name="healthy-{precision}-{seed}"', *extra])
    code, events, _ = train_monitored(config)
    assert code == 0
    return events


# The default suite runs half the steps (its time budget); `make torture` the whole 300.
HEALTHY_STEPS = 300 if FULL else 150


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_a_healthy_run_of_300_steps_raises_no_alert(tmp_path, precision):
    """One seed of the full matrix below, at batch size 2 (a noisier loss) and probing every 10 steps: every step
    is a chance for the detectors to cry wolf, and every probe one for the probes. 300 steps give the spike and
    trend detectors some 275 judgements each and fp16's scaler 270 steps after calibration. No probe budget:
    this run is here to be probed, whatever it costs."""
    steps = HEALTHY_STEPS
    events = healthy_run(tmp_path, precision, seed=1, steps=steps,
                         extra=["train.batch_size=2", "monitor.probe_every=10", "monitor.probe_budget=1.0", *QUICK])
    assert of_type(events, "alert") == []
    losses = [e["loss"] for e in steps_of(events)]
    assert all(map(math.isfinite, losses)) and sum(losses[-20:]) < sum(losses[:20])
    health = of_type(events, "health")
    assert [e["step"] for e in health] == [1, 2, 3, *range(10, steps + 1, 10)]
    for event in health:
        assert set(event["checks"]) == set(CHECK_NAMES)
        assert all(check["status"] != "alert" for check in event["checks"].values()), event
    last = health[-1]["checks"]
    assert last["loss_trend"]["value"] is not None and last["skip_rate"]["value"] is not None  # both judging
    if precision == "fp16":
        assert last["fp16_headroom"]["status"] == "ok" and last["fp16_headroom"]["value"] > 100
        assert last["fidelity"]["value"] > 0.999 and last["underflow"]["value"] < 0.01
        assert last["loss_scale"]["value"] >= 1
    if precision == "bf16":
        assert last["fp16_headroom"]["status"] == "n/a" and last["underflow"]["status"] == "n/a"
        assert last["fidelity"]["value"] > 0.99
    if precision == "fp32":
        assert {last[name]["status"] for name in ("fp16_headroom", "underflow", "fidelity", "loss_scale")} == {"n/a"}
    # Mid-run (not at the cosine schedule's end, where the rate nears 0 and fp32 rounding eats a few updates).
    middle = 10 * (steps // 20)
    assert next(e for e in health if e["step"] == middle)["checks"]["stale_update"]["value"] < 0.05


@pytest.mark.slow
@pytest.mark.skipif(not FULL, reason="the full matrix runs under `make torture` (LORATUI_TORTURE=full)")
@pytest.mark.parametrize("seed", [1, 2, 3])  # as shipped: batch size 8, probes every 50 steps
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_healthy_runs_of_300_steps_raise_no_alert(tmp_path, precision, seed):
    events = healthy_run(tmp_path, precision, seed, steps=300)
    assert of_type(events, "alert") == []
    assert all(math.isfinite(e["loss"]) for e in steps_of(events))


def test_probes_dearer_than_their_budget_come_less_often(tmp_path):
    """bf16's probe recomputes a micro-batch in fp32 (most of a step here); at 5% of the training time and
    probe_every 2, the real run measures that cost and spaces its probes out, saying where the next one is."""
    events = healthy_run(tmp_path, "bf16", seed=1, steps=40,
                         extra=["train.batch_size=2", "monitor.probe_every=2", "monitor.probe_first_steps=1",
                                "monitor.probe_budget=0.05", *QUICK])
    health = of_type(events, "health")
    steps = [e["step"] for e in health]
    # Step 1 starts the attempt, step 2 is the first multiple (nothing unprobed to compare with yet),
    # step 4 the first probe with a measured cost: from there on, spacing beyond probe_every.
    assert steps[:3] == [1, 2, 4]
    for event in health[2:]:
        assert event["next_probe_step"] > event["step"] + 2 and event["next_probe_step"] % 2 == 0
    assert [e["next_probe_step"] for e in health[2:-1]] == steps[3:]  # each came where the last one said
    assert health[-1]["next_probe_step"] > 40


def test_fp32_adapter_updates_below_its_resolution_warn_but_never_alert(tmp_path):
    """A rate so small (a cosine schedule's last steps) that fp32 rounds the updates away is what the schedule
    meant; only half-precision adapter weights make lost updates an alert (their fix is fp32 weights)."""
    events = healthy_run(tmp_path, "fp32", seed=1, steps=4,
                         extra=["train.learning_rate=1e-12", "train.warmup_steps=0", "train.batch_size=2", *QUICK])
    stale = [e["checks"]["stale_update"] for e in of_type(events, "health")]
    # LoRA B starts at zero, where any update shows; by step 3 A moves too, and its updates round away.
    assert stale[-1]["status"] == "warn" and stale[-1]["value"] > 0.25
    assert all(check["status"] != "alert" for check in stale)
    assert of_type(events, "alert") == []


def test_the_monitor_does_not_change_training(tmp_path):
    """Probing every step (fp32 recomputation, replayed RNG) leaves the run bit for bit as it was."""
    overrides = ["train.precision=fp16", "train.max_steps=4", "train.batch_size=2", "train.grad_accum=2",
                 "monitor.probe_every=1", "monitor.probe_budget=1.0", *QUICK]
    for name in ("plain", "watched"):
        (tmp_path / name).mkdir()
    plain = make_config(tmp_path / "plain", [*overrides, f'run.output_dir="{tmp_path / "plain"}"'])
    _, plain_events, _ = train_in_process(plain)
    watched = make_config(tmp_path / "watched", [*overrides, f'run.output_dir="{tmp_path / "watched"}"'])
    _, watched_events, _ = train_monitored(watched)
    assert len(of_type(watched_events, "health")) == 4
    figures = [(e["loss"], e["grad_norm"], e["scale"]) for e in steps_of(plain_events)]
    assert figures == [(e["loss"], e["grad_norm"], e["scale"]) for e in steps_of(watched_events)]


def test_checkpoints_record_health_and_autopilot_is_off_by_default(tmp_path):
    config = scenario_config(tmp_path, "fp16-overflow", ["train.max_steps=4", "checkpoint.every_steps=2",
                                                         "train.batch_size=2"])
    code, events, run_dir = train_monitored(config)
    assert code == 0
    states = {info.step: info.state["health"] for info in ckpt.list_complete(run_dir.checkpoints)}
    assert states[0]["open_alerts"] == [] and states[0]["alerts_raised"] == 0
    assert states[4]["open_alerts"] == ["overflow"] and states[4]["checks"]["fp16_headroom"] == "alert"
    # One alert for the whole episode, and nobody acted on it.
    assert [e["kind"] for e in of_type(events, "alert")] == ["overflow"]
    assert of_type(events, "restart") == [] and not run_dir.control.read_text()


def test_autopilot_applies_the_fix_through_control_and_says_why(tmp_path):
    config = scenario_config(tmp_path, "fp16-overflow", ["train.max_steps=6", "train.batch_size=2",
                                                         "monitor.autopilot.enabled=true", *QUICK])
    code, events, run_dir = train_monitored(config)
    assert code == 0
    notices = [e for e in of_type(events, "notice") if e.get("source") == "autopilot"]
    assert len(notices) == 1 and notices[0]["action"] == "switch_precision"
    assert "overflow" in notices[0]["message"] and "65504" in notices[0]["message"]
    restart = of_type(events, "restart")
    assert len(restart) == 1 and restart[0]["precision"] == "bf16" and restart[0]["reason"].startswith("autopilot:")
    assert '"cmd": "restart"' in run_dir.control.read_text()
    assert of_type(events, "alert", attempt=1) == []
    assert all(math.isfinite(e["loss"]) for e in steps_of(events, attempt=1))


def test_autopilot_stops_at_its_limit(tmp_path):
    """A wrong fix (lower the rate for an fp16 overflow) cannot help; the second time it leaves it to a person."""
    config = scenario_config(tmp_path, "fp16-overflow", [
        "train.max_steps=4", "train.batch_size=2", "monitor.autopilot.enabled=true",
        "monitor.autopilot.max_actions=1", 'monitor.autopilot.actions={overflow = "lower_lr"}'])
    code, events, _ = train_monitored(config)
    assert code == 0
    assert [(e["kind"], e["attempt"]) for e in of_type(events, "alert")] == [("overflow", 0), ("overflow", 1)]
    restart = of_type(events, "restart")
    assert len(restart) == 1 and restart[0]["precision"] == "fp16"
    assert restart[0]["learning_rate"] == pytest.approx(config.train.learning_rate * config.train.lr_factor)
    notices = [e["message"] for e in of_type(events, "notice") if e.get("source") == "autopilot"]
    assert len(notices) == 2 and "limit of 1 action(s) reached" in notices[1]


def autopilot_run(tmp_path, actions: str, overrides=(), **kwargs):
    config = make_config(tmp_path, ["train.precision=fp32", "train.batch_size=2", "train.max_steps=10",
                                    "checkpoint.every_steps=2", "monitor.probe_every=1000",
                                    "monitor.autopilot.enabled=true", f"monitor.autopilot.actions={actions}",
                                    "train.warmup_steps=5", f'run.output_dir="{tmp_path}"', *overrides])
    code, events, run_dir = train_monitored(config, **kwargs)
    notices = [e for e in of_type(events, "notice") if e.get("source") == "autopilot"]
    return code, events, notices


def test_autopilot_rolls_back_damaged_weights(tmp_path):
    """A weight turns inf after step 5: every row's loss is NaN in fp32 too, the alert suggests rolling back to
    step 4, and the autopilot mapped to rollback applies exactly that."""
    code, events, notices = autopilot_run(tmp_path, '{nonfinite_loss = "rollback"}', fault=DamagedWeights(after=5))
    assert code == 0
    alert = of_type(events, "alert")[0]
    assert (alert["kind"], alert["step"], alert["suggestion"], alert["fix"]) == ("nonfinite_loss", 6, "rollback",
                                                                                 {"from_step": 4})
    assert len(notices) == 1
    assert "-> action 1 of 3: rollback (from_step=4). Why: the loss is nan" in notices[0]["message"]
    restart = of_type(events, "restart")
    assert len(restart) == 1
    configured_lr = of_type(events, "run_started")[0]["config"]["train"]["learning_rate"]
    assert (restart[0]["from_step"], restart[0]["precision"], restart[0]["learning_rate"]) == (4, "fp32", configured_lr)
    assert restart[0]["reason"].startswith("autopilot: nonfinite_loss at step 6")
    assert [e["step"] for e in steps_of(events, attempt=1)] == list(range(5, 11))
    assert all(math.isfinite(e["loss"]) for e in steps_of(events, attempt=1))
    assert of_type(events, "alert", attempt=1) == []


def test_autopilot_never_switches_precision_against_the_evidence(tmp_path):
    """The default maps nonfinite_loss to switch_precision; an alert that blames the weights (every row fails in
    fp32) gets no precision switch, and the notice says why and what to map instead."""
    code, events, notices = autopilot_run(tmp_path, "{}", ["train.max_steps=8"], fault=DamagedWeights(after=5))
    assert code == 0
    assert [(e["kind"], e["suggestion"]) for e in of_type(events, "alert")] == [("nonfinite_loss", "rollback")]
    assert of_type(events, "restart") == []
    assert len(notices) == 1 and notices[0]["action"] == "switch_precision"
    assert ("-> the evidence points to rollback (from_step=4), not to the precision: switching precision would go "
            "against it, so not acting (map nonfinite_loss to \"rollback\"") in notices[0]["message"]


def test_autopilot_stops_the_run(tmp_path):
    """Non-finite gradients from step 3 on, mapped to stop: the run stops at the next step boundary, saying why."""
    code, events, notices = autopilot_run(tmp_path, '{nonfinite_grads = "stop"}',
                                          fault=NonFiniteGradients(range(3, 11)))
    assert code == 0
    assert [(e["kind"], e["step"]) for e in of_type(events, "alert")] == [("nonfinite_grads", 7)]
    assert [n["action"] for n in notices] == ["stop"] and "-> action 1 of 3: stop. Why:" in notices[0]["message"]
    assert [e["step"] for e in steps_of(events)][-1] == 7
    finished = of_type(events, "run_finished")[0]
    assert finished["reason"].startswith("autopilot: nonfinite_grads at step 7: gradients are not finite")
    assert of_type(events, "checkpoint")[-1]["reason"] == "stop"


def test_autopilot_does_not_act_on_an_alert_that_suggests_nothing(tmp_path):
    """A loss spike suggests no fix (one bad batch; watch it): even mapped to lower_lr, the autopilot leaves the
    run alone and says so."""
    data = junk_batch_data(tmp_path, at_step=26, batch_size=8)
    code, events, notices = autopilot_run(tmp_path, '{loss_spike = "lower_lr"}', [
        "train.max_steps=28", "train.batch_size=8", "data.shuffle=false", f'data.path="{data}"',
        'data.format="text"'])
    assert code == 0
    assert [(e["kind"], e["suggestion"]) for e in of_type(events, "alert")] == [("loss_spike", "none")]
    assert of_type(events, "restart") == []
    assert len(notices) == 1 and notices[0]["action"] == "lower_lr"
    assert "-> the evidence points to no restart that would help: not acting. Why: loss spiked to" in \
        notices[0]["message"]


@pytest.mark.parametrize("action", ["stop", "rollback", "switch_precision", "lower_lr"])
def test_no_autopilot_action_for_checkpoint_failed(tmp_path, action):
    """The trainer raises checkpoint_failed itself, past the monitor: an action for it could never run."""
    with pytest.raises(UserInputError) as raised:
        make_config(tmp_path, [f'monitor.autopilot.actions={{checkpoint_failed = "{action}"}}'])
    assert (f'monitor.autopilot.actions.checkpoint_failed = "{action}" is not allowed: the trainer raises it '
            f'itself') in raised.value.render()
    assert 'checkpoint.on_error = "stop" or "continue"' in raised.value.render()
    # Configs written before the rule list it as "none": still accepted.
    config = make_config(tmp_path, ['monitor.autopilot.actions={checkpoint_failed = "none"}'])
    assert config.monitor.autopilot.actions["checkpoint_failed"] == "none"
