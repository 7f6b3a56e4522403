"""The monitor on the real trainer: healthy runs stay silent, probes report, training is untouched, autopilot."""

import math

import pytest

from helpers import make_config, steps_of, train_in_process
from loratui.monitor.health import CHECK_NAMES
from loratui.train import checkpoint as ckpt
from test_monitor_support import FULL, of_type, scenario_config, train_monitored

QUICK = ["train.warmup_steps=5", "checkpoint.every_steps=1000"]


def healthy_run(tmp_path, precision, seed, steps, extra=()):
    config = make_config(tmp_path, [f"train.precision={precision}", f"train.seed={seed}",
                                    f"train.max_steps={steps}", f'run.output_dir="{tmp_path}"',
                                    f'run.name="healthy-{precision}-{seed}"', *extra])
    code, events, _ = train_monitored(config)
    assert code == 0
    return events


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_a_healthy_run_raises_no_alert(tmp_path, precision):
    # Short and small, but probing often: every probe is a chance for a false alarm.
    events = healthy_run(tmp_path, precision, seed=1, steps=30,
                         extra=["train.batch_size=2", "monitor.probe_every=6", *QUICK])
    assert of_type(events, "alert") == []
    health = of_type(events, "health")
    assert [e["step"] for e in health] == [1, 2, 3, 6, 12, 18, 24, 30]
    for event in health:
        assert set(event["checks"]) == set(CHECK_NAMES)
        assert all(check["status"] != "alert" for check in event["checks"].values()), event
    last = health[-1]["checks"]
    if precision == "fp16":
        assert last["fp16_headroom"]["status"] == "ok" and last["fp16_headroom"]["value"] > 100
        assert last["fidelity"]["value"] > 0.999 and last["underflow"]["value"] < 0.01
        assert last["loss_scale"]["value"] >= 1
    if precision == "bf16":
        assert last["fp16_headroom"]["status"] == "n/a" and last["underflow"]["status"] == "n/a"
        assert last["fidelity"]["value"] > 0.99
    if precision == "fp32":
        assert {last[name]["status"] for name in ("fp16_headroom", "underflow", "fidelity", "loss_scale")} == {"n/a"}
    assert last["stale_update"]["value"] < 0.05


@pytest.mark.slow
@pytest.mark.skipif(not FULL, reason="the full matrix runs under `make torture` (LORATUI_TORTURE=full)")
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_healthy_runs_of_300_steps_raise_no_alert(tmp_path, precision, seed):
    events = healthy_run(tmp_path, precision, seed, steps=300)
    assert of_type(events, "alert") == []
    assert all(math.isfinite(e["loss"]) for e in steps_of(events))


def test_the_monitor_does_not_change_training(tmp_path):
    """Probing every step (fp32 recomputation, replayed RNG) leaves the run bit for bit as it was."""
    overrides = ["train.precision=fp16", "train.max_steps=4", "train.batch_size=2", "train.grad_accum=2",
                 "monitor.probe_every=1", *QUICK]
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
