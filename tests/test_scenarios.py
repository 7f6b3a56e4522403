"""Every fault scenario: the right alert, with the right fix, within 5 steps of the fault's onset; then the fix
applied through control.jsonl (as the dashboard's key does) makes the run healthy. Every scenario as shipped
raises its alert in the default suite too (only max_steps set).

The default suite runs each scenario at batch size 4 (1 for fp16-underflow, which accumulates 4; divergence in
fp32, the fastest on CPU) and watches 20 steps after the fix; `make torture` (LORATUI_TORTURE=full) also runs
them as shipped and watches 100.
"""

import pytest

from helpers import loratui_cli, steps_of
from loratui.scenarios import SCENARIOS, demo_config
from test_monitor_support import FULL, PersonAtTheKeys, finite, of_type, scenario_config, train_monitored

FAULTS = [name for name, scenario in SCENARIOS.items() if scenario.alert]


def onset(name: str, steps: list[dict]) -> int:
    """The step at which the fault shows, by the scenario's own mechanism (not by the detector)."""
    if name in ("fp16-overflow", "nonfinite-data"):
        return next(e["step"] for e in steps if not finite(e["loss"]))  # the first batch fp16 cannot hold
    if name == "divergence":
        # The rate passes what the built-in model tolerates (it trains healthily up to 3e-3 and is damaged above
        # 1e-2; docs/diagnosis.md): the alert must come before the loss shows it.
        return next(e["step"] for e in steps if e["lr"] > 1e-2)
    return 1  # underflow and stale updates come with the config: present from the first step


@pytest.mark.parametrize("name", FAULTS)
def test_scenario_alert_and_fix(tmp_path, name):
    overrides = ["train.batch_size=1" if name == "fp16-underflow" else "train.batch_size=4"]
    if name == "divergence":
        overrides.append("train.precision=fp32")  # the learning rate's fault in any precision; fp32 is fastest on CPU
    # Divergence shows once warmup is over (about step 15), so its run is long enough to see it first.
    # The tiny VLM learns to read colours from the picture: its loss needs more steps to show the fall.
    steps_after_fix = 30 if name == "divergence" else 60 if name.startswith("vlm") else 20
    check_scenario(tmp_path, name, overrides, steps_after_fix=steps_after_fix)


@pytest.mark.slow
@pytest.mark.skipif(not FULL, reason="runs under `make torture` (LORATUI_TORTURE=full)")
@pytest.mark.parametrize("name", FAULTS)
def test_scenario_as_shipped_then_100_healthy_steps(tmp_path, name):
    check_scenario(tmp_path, name, [], steps_after_fix=100)


def check_scenario(tmp_path, name: str, overrides: list[str], *, steps_after_fix: int) -> None:
    scenario = SCENARIOS[name]
    person = PersonAtTheKeys()
    # The faults show in the first few steps, so the fix restarts from the step-0 checkpoint and
    # steps_after_fix steps follow it.
    config = scenario_config(tmp_path, name, ["checkpoint.every_steps=1000", "monitor.log_every=1000",
                                              f"train.max_steps={steps_after_fix}", *overrides])
    code, events, _ = train_monitored(config, on_event=person)
    assert code == 0
    applied = person.applied
    faulty = steps_of(events, attempt=0)
    alerts = of_type(events, "alert", attempt=0)
    assert alerts, f"{name}: no alert"
    first = alerts[0]
    assert (first["kind"], first["suggestion"]) == (scenario.alert, scenario.fix), first
    assert first["step"] <= onset(name, faulty) + 5, (first["step"], onset(name, faulty))
    assert first["message"] and first["explanation"] and first["evidence"] and first["severity"] in ("warning",
                                                                                                       "critical")
    assert (applied["kind"], applied["step"]) == (first["kind"], first["step"])
    check_evidence(name, first)

    restart = of_type(events, "restart")
    assert len(restart) == 1
    for key, value in first["fix"].items():
        assert restart[0][key] == value
    fixed = steps_of(events, attempt=1)
    assert restart[0]["from_step"] == 0 and [e["step"] for e in fixed] == list(range(1, steps_after_fix + 1))
    assert of_type(events, "alert", attempt=1) == [], "a new alert after the fix"
    losses = [e["loss"] for e in fixed]
    assert all(map(finite, losses))
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10, "the loss does not fall after the fix"


def check_evidence(name: str, alert: dict) -> None:
    """What each alert must show a person: the numbers and names behind it."""
    evidence = alert["evidence"]
    if name == "fp16-overflow":
        assert (evidence["module"], evidence["where"]) == ("model.layers.1.mlp.down_proj", "input")
        assert evidence["value"] > 1e6 and evidence["rows_over"] == evidence["rows"]
        assert "fp16 tops out at 65504 and model.layers.1.mlp.down_proj received" in alert["explanation"]
        assert alert["fix"] == {"precision": "bf16"}
    if name == "vlm-fp16-overflow":  # the vision tower's module is named, with its part
        assert evidence["module"].startswith("model.vision_tower.") and evidence["value"] > 65504
    if name == "nonfinite-data":
        assert 0 < evidence["failing_rows"] < evidence["rows"]  # some rows, not the model: the data
        assert evidence["module"] == "model.layers.1.mlp.down_proj"
        for row in evidence["rows_detail"]:
            assert "â€™" in row["text"] and row["run_loss"] == "nan" and finite(row["fp32_loss"])
        assert alert["fix"] == {"precision": "bf16"}
    if name == "fp16-underflow":
        assert evidence["underflow_share"] > 0.05 and evidence["loss_scale"] is None
        assert alert["fix"] == {"precision": "bf16"}
    if name == "bf16-stale":
        assert evidence["stale_share"] > 0.25 and evidence["adapter_dtype"] == "bfloat16"
        assert evidence["mean_abs_update"] < evidence["resolution"]
        assert alert["fix"] == {"precision": "fp32"}
        assert "native" not in alert["explanation"]  # from bf16 the fix is fp32 on every device
    if name == "divergence":
        assert evidence["signal"] == "update_ratio" and evidence["update_ratio"] > evidence["update_ratio_max"]
        assert evidence["first_step_over"] < alert["step"]
        # Computed from the run: the rate at which a step moves the weights 1% of their norm.
        assert 1e-4 <= alert["fix"]["learning_rate"] <= 3e-3 and alert["fix"]["from_step"] == 0


# Steps enough for each alert as shipped (onset + 5 at most): fp16's overflows show at step 1's probe; underflow and
# stale updates come with the config (onset 1) and show once the first updates have moved LoRA's B off zero; the
# learning rate passes 1e-2 at step 5 of warmup; a mojibake row (one in twenty) is in a batch of 8 within a few steps.
AS_SHIPPED_STEPS = {"fp16-overflow": 2, "fp16-underflow": 4, "divergence": 10, "bf16-stale": 4, "nonfinite-data": 8,
                    "vlm-fp16-overflow": 2}


@pytest.mark.parametrize("name", FAULTS)
def test_every_scenario_as_shipped_raises_its_alert(tmp_path, name):
    """`loratui demo --scenario NAME` as a user types it: the precision auto picks here, the shipped batch size and
    learning rate; only max_steps is set, to keep the suite short."""
    scenario = SCENARIOS[name]
    config = scenario_config(tmp_path, name, ["checkpoint.every_steps=1000", "monitor.log_every=1000",
                                              f"train.max_steps={AS_SHIPPED_STEPS[name]}"])
    code, events, _ = train_monitored(config)
    assert code == 0
    alerts = of_type(events, "alert")
    assert alerts, f"{name}: no alert"
    assert (alerts[0]["kind"], alerts[0]["suggestion"]) == (scenario.alert, scenario.fix), alerts[0]
    assert alerts[0]["step"] <= onset(name, steps_of(events)) + 5
    check_evidence(name, alerts[0])


def test_the_demo_command_reports_the_scenarios_alert(tmp_path):
    """`loratui demo --scenario ... --headless`: the real command line, its monitor and its console lines."""
    result = loratui_cli("demo", "--scenario", "fp16-overflow", "--headless", "--set", "train.max_steps=2",
                         "--set", "train.batch_size=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ALERT [critical] overflow at step 1: fp16 overflows: model.layers.1.mlp.down_proj received" in result.stdout
    assert "(suggested fix: switch precision)" in result.stdout


def test_demo_scenarios_are_complete():
    for name, scenario in SCENARIOS.items():
        config = demo_config(name, [])
        assert scenario.description
        assert (scenario.alert is None) == (name in ("healthy", "vlm-healthy"))  # the two healthy demos
        assert config.run.name.startswith(f"demo-{name}")
