"""`loratui advise` on real trials: the built-in model, the fp16-overflow model, pure-bf16 adapters that go stale.

Every trial trains for real on CPU through the trainer with the health monitor
attached; the checks read the trials' own event log (advise/events.jsonl) to
prove that each figure in the table is what the trial reported.
"""

import json
import math
import re
import statistics
from types import SimpleNamespace

import pytest

from helpers import ROOT, loratui_cli
from loratui.advise.cli import advise_command
from loratui.advise.render import plain_text, print_rich
from loratui.events.encode import as_float
from loratui.events.jsonl import read_events
from loratui.scenarios import SCENARIOS

FAST = "[run]\nname = \"advised\"\noutput_dir = \"runs\"\n[train]\nbatch_size = 2\n"


def trial_events(events: list[dict], attempt: int, kind: str) -> list[dict]:
    return [e for e in events if e["type"] == kind and e["attempt"] == attempt]


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    """`loratui advise --json` on the built-in model, as a user runs it (a subprocess, stdout not a terminal)."""
    work = tmp_path_factory.mktemp("advise-healthy")
    (work / "config.toml").write_text(FAST)
    result = loratui_cli("advise", "config.toml", "--steps", "5", "--json", cwd=work)
    assert result.returncode == 0, result.stderr
    root = work / "runs" / "advised"
    return SimpleNamespace(advice=json.loads(result.stdout), stderr=result.stderr, root=root,
                           events=read_events(root / "advise" / "events.jsonl"))


def test_all_three_precisions_are_measured_from_the_same_start(healthy):
    trials = healthy.advice["trials"]
    assert set(trials) == {"fp32", "bf16", "fp16"}
    assert sorted(t["attempt"] for t in trials.values()) == [0, 1, 2]
    batches = []
    for name, trial in trials.items():
        assert trial["verdict"] == "healthy", trial["reasons"]
        steps = trial_events(healthy.events, trial["attempt"], "step")
        assert [s["step"] for s in steps] == [1, 2, 3, 4, 5]
        assert {s["precision"] for s in steps} == {name}
        batches.append([s["tokens"] for s in steps])
    assert batches[0] == batches[1] == batches[2]  # the same batches, in the same order
    restarts = [e for e in healthy.events if e["type"] == "restart"]
    # Then the timing repeat, in reverse order, from the same start.
    assert [(r["from_step"], r["precision"]) for r in restarts] == [(0, "fp16"), (0, "fp32"),
                                                                     (0, "fp32"), (0, "fp16"), (0, "bf16")]


def test_table_figures_are_the_trials_health_and_step_events(healthy):
    for name, trial in healthy.advice["trials"].items():
        steps = trial_events(healthy.events, trial["attempt"], "step")
        health = trial_events(healthy.events, trial["attempt"], "health")
        probed = {h["step"] for h in health}
        assert trial["probes"] == len(health) == len(probed) > 0

        def readings(check):
            return [h["checks"][check] for h in health if h["checks"][check]["value"] is not None]

        rates = [s["tokens"] / s["step_time_s"] for s in steps[1:] if s["step"] not in probed]
        # The timing repeat is the attempt that ran this trial's precision again after the first pass.
        repeat = max(e["attempt"] for e in healthy.events if e["type"] == "step" and e["precision"] == name)
        assert repeat > 2
        repeat_steps = trial_events(healthy.events, repeat, "step")
        repeat_probed = {h["step"] for h in trial_events(healthy.events, repeat, "health")}
        repeat_rates = [s["tokens"] / s["step_time_s"] for s in repeat_steps[1:] if s["step"] not in repeat_probed]
        passes = [round(statistics.median(rates), 1), round(statistics.median(repeat_rates), 1)]
        assert trial["tokens_per_s_passes"] == passes
        assert trial["tokens_per_s"] == pytest.approx(sum(passes) / 2, abs=0.06)
        assert trial["speed_spread"] == pytest.approx(abs(passes[0] - passes[1]) / trial["tokens_per_s"], abs=1e-3)
        assert trial["final_loss"] == as_float(steps[-1]["loss"])
        assert trial["skipped_steps"] == sum(s["skipped"] for s in steps)
        assert trial["final_scale"] == steps[-1]["scale"]
        stale = max(readings("stale_update"), key=lambda c: c["value"])
        assert trial["stale_share"] == stale["value"]
        if name == "fp32":
            assert trial["fidelity_cosine"] is None and trial["fp16_headroom"] is None
            continue
        fidelity = readings("fidelity")
        assert trial["fidelity_cosine"] == min(c["value"] for c in fidelity)
        assert trial["relative_error"] == max(c["relative_error"] for c in fidelity)
        tightest = min(readings("fp16_headroom"), key=lambda c: c["value"])
        assert (trial["fp16_headroom"], trial["headroom_module"], trial["headroom_where"]) == (
            tightest["value"], tightest["module"], tightest["where"])
        if name == "fp16":
            assert trial["final_scale"] is not None
            assert trial["underflow_share"] == max(c["value"] for c in readings("underflow"))


def test_recommends_the_fastest_healthy_precision(healthy):
    advice = healthy.advice
    trials = advice["trials"]
    speed = {name: t["tokens_per_s"] for name, t in trials.items() if t["verdict"] == "healthy"}
    fastest = max(speed, key=speed.get)
    prior = advice["hardware_rule"]["precision"]
    chosen = advice["recommended_trial"]
    assert advice["recommendation"] == trials[chosen]["precision"]
    if chosen == fastest:
        assert advice["reasons"][0].startswith(f"{fastest} is the fastest healthy precision here")
        if prior != fastest:  # e.g. fp32 on a CPU: say so
            assert any(r.startswith(f"the hardware rule alone would pick {prior}") for r in advice["reasons"])
    else:  # only the hardware rule's choice may stand in for the fastest, and only within the measurement's spread
        margin = max(0.10, trials[prior]["speed_spread"], trials[fastest]["speed_spread"])
        assert chosen == prior and speed[prior] >= (1 - margin) * speed[fastest]
        assert advice["reasons"][0].startswith(f"too close to call: {prior}, the hardware rule's choice")


def test_advice_json_is_the_printed_json_written_privately(healthy):
    path = healthy.root / "advice.json"
    assert json.loads(path.read_text()) == healthy.advice
    assert path.stat().st_mode & 0o777 == 0o600
    assert healthy.root.stat().st_mode & 0o777 == 0o700
    # A later `loratui run` of this config must find no run here, and the trials' checkpoints are gone.
    assert not (healthy.root / "events.jsonl").exists() and not (healthy.root / "checkpoints").exists()
    assert sorted(p.name for p in (healthy.root / "advise").iterdir()) == ["events.jsonl"]


def test_progress_names_each_trial_and_step(healthy):
    for index, name in enumerate(["bf16", "fp16", "fp32"], start=1):
        for step in (0, 5):
            assert f"advise: trial {index} of 3 ({name}): step {step}/5" in healthy.stderr


# ------------------------------------------------------------------ the documented JSON


def documented_fields() -> dict[str, dict[str, str]]:
    """The advisor's page (docs/advisor.md): {table: {field: type}} from its field tables."""
    section = (ROOT / "docs" / "advisor.md").read_text()
    tables, current = {}, None
    for line in section.splitlines():
        heading = re.match(r"### `([\w.]+)`", line)
        if heading:
            current = tables.setdefault(heading.group(1), {})
        row = re.match(r"\| `(\w+)` \| ([\w ]+?) \|", line)
        if row and current is not None:
            current[row.group(1)] = row.group(2)
    return tables


def conforms(value, documented: str) -> bool:
    kinds = {"string": lambda v: isinstance(v, str),
             "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
             "number": lambda v: (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
             or v in ("nan", "inf", "-inf"),
             "boolean": lambda v: isinstance(v, bool), "array": lambda v: isinstance(v, list),
             "object": lambda v: isinstance(v, dict), "null": lambda v: v is None}
    return any(kinds[kind](value) for kind in documented.split(" or "))


def test_json_output_is_what_the_docs_document(healthy):
    tables = documented_fields()
    assert set(tables) == {"advice", "trials.NAME", "machine", "hardware_rule", "thresholds"}
    advice = healthy.advice
    objects = [("advice", advice), ("machine", advice["machine"]), ("hardware_rule", advice["hardware_rule"]),
               ("thresholds", advice["thresholds"])] + [("trials.NAME", t) for t in advice["trials"].values()]
    for table, obj in objects:
        fields = tables[table]
        assert set(obj) == set(fields), f"{table}: undocumented {set(obj) - set(fields)}, " \
                                        f"missing {set(fields) - set(obj)}"
        for key, documented in fields.items():
            assert conforms(obj[key], documented), f"{table}.{key} = {obj[key]!r} is not {documented}"
    assert advice["recommendation"] in ("fp32", "bf16", "fp16") and advice["format"] == 1
    for trial in advice["trials"].values():
        assert trial["verdict"] in ("healthy", "rejected", "unsupported", "failed")
        assert trial["support"] in ("native", "emulated", "unsupported")
        # The dashboard's dialog shows the first ten scalar figures: the ones a person compares first.
        assert [k for k, v in trial.items() if not isinstance(v, (dict, list))][:10] == [
            "verdict", "tokens_per_s", "final_loss", "fp16_headroom", "fidelity_cosine", "skipped_after_calibration",
            "final_scale", "peak_memory_mib", "underflow_share", "stale_share"]


def test_tables_show_the_trials_figures(healthy):
    from rich.console import Console

    advice = healthy.advice
    console = Console(record=True, width=140, force_terminal=True)
    print_rich(advice, healthy.root, console)
    for text in (plain_text(advice, healthy.root), console.export_text()):
        for trial in advice["trials"].values():
            assert f"{trial['tokens_per_s']:.0f}" in text and f"{trial['final_loss']:.4f}" in text
            if trial["fidelity_cosine"] is not None:
                assert f"{trial['fidelity_cosine']:.6f}" in text
        assert f"recommendation: {advice['recommendation']}" in text
        assert advice["reasons"][0][:60] in text


# ------------------------------------------------------------------ faults the advice must catch


def scenario_overrides(name: str) -> list[str]:
    """`loratui demo --scenario NAME`'s settings as --set overrides."""
    return [f"{key}={json.dumps(value)}" for key, value in SCENARIOS[name].overrides.items()]


def test_fp16_overflow_model_rejects_fp16_and_names_the_module(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.toml").write_text(FAST)
    assert advise_command("config.toml", scenario_overrides("fp16-overflow"), steps=2, as_json=False) == 0
    printed = capsys.readouterr().out
    advice = json.loads((tmp_path / "runs" / "advised" / "advice.json").read_text())
    fp16 = advice["trials"]["fp16"]
    assert fp16["verdict"] == "rejected"
    assert (fp16["headroom_module"], fp16["headroom_where"]) == ("model.layers.1.mlp.down_proj", "input")
    assert fp16["fp16_headroom"] < 4 and fp16["peak_activation"] > 65504
    headroom = next(r for r in fp16["reasons"] if r.startswith("fp16 headroom"))
    assert "model.layers.1.mlp.down_proj input peaks at" in headroom
    assert advice["recommendation"] != "fp16"
    assert advice["trials"]["bf16"]["verdict"] == advice["trials"]["fp32"]["verdict"] == "healthy"
    # stdout is not a terminal here: the plain table, with the reason spelled out.
    assert "not fp16: fp16 headroom" in printed and re.search(r"^verdict +healthy +rejected +healthy$", printed, re.M)


def test_stale_pure_bf16_adapters_are_rejected_and_the_base_model_is_reused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.toml").write_text(FAST)
    assert advise_command("config.toml", scenario_overrides("bf16-stale"), steps=3, as_json=True) == 0
    root = tmp_path / "runs" / "advised"
    advice = json.loads((root / "advice.json").read_text())
    pure = advice["trials"]["bf16-pure"]
    assert (pure["precision"], pure["adapter_dtype"], pure["verdict"]) == ("bf16", "bf16", "rejected")
    assert pure["stale_share"] > 0.25 and "stale_update" in pure["alerts"]
    assert any(r.startswith("pure-bf16 adapters go stale") for r in pure["reasons"])
    assert advice["trials"]["bf16"]["adapter_dtype"] == "fp32"
    assert advice["adapter_dtype"] == "fp32" and advice["recommended_trial"] != "bf16-pure"
    # The bf16 base stayed loaded for the pure-bf16 trial; fp16 and fp32 each loaded theirs.
    switches, loaded = [], False
    for event in read_events(root / "advise" / "events.jsonl"):
        if event["type"] == "step":
            loaded = False  # what counts is a load between a trial's last step and the next restart
        if event["type"] == "phase" and event["name"] == "loading_model" and event["done"] == 2:
            loaded = True
        if event["type"] == "restart":
            switches.append((event["reason"], loaded))
            loaded = False
    assert switches == [("advise: bf16-pure trial", False), ("advise: fp16 trial", True),
                        ("advise: fp32 trial", True),
                        # the timing repeat, in reverse order
                        ("advise: fp32 trial", False), ("advise: fp16 trial", True),
                        ("advise: bf16-pure trial", True), ("advise: bf16 trial", False)]


def test_a_precision_this_machine_cannot_run_is_reported_and_not_run(tmp_path, capsys):
    import dataclasses
    import sys

    from helpers import make_config
    from loratui.advise.advisor import advise
    from loratui.advise.cli import ConsoleProgress
    from loratui.hardware import detect

    config = make_config(tmp_path, ["train.batch_size=2"])
    here = detect()
    # This machine as a device without half precision would be: only fp32 can run.
    no_half = dataclasses.replace(here, support={**here.support, "bf16": "unsupported", "fp16": "unsupported"},
                                  notes={"bf16": "no bf16 on this device", "fp16": "no fp16 on this device"})
    advice = advise(config, tmp_path / "run", no_half, 2, ConsoleProgress(sys.stderr))
    progress = capsys.readouterr().err
    assert "advise: bf16: not supported on this machine (no bf16 on this device); not measured" in progress
    assert "trial 1 of 1 (fp32): step 2/2" in progress
    assert advice["recommendation"] == "fp32" and advice["trials"]["fp32"]["verdict"] == "healthy"
    assert "not fp16: not supported on this machine: no fp16 on this device" in advice["reasons"]
    fields = documented_fields()["trials.NAME"]
    for name in ("bf16", "fp16"):
        trial = advice["trials"][name]
        assert (trial["verdict"], trial["attempt"], trial["steps_done"], trial["tokens_per_s"]) == (
            "unsupported", None, 0, None)
        assert all(conforms(trial[key], documented) for key, documented in fields.items())


def test_a_trial_that_fails_is_recorded_and_the_next_one_still_runs(tmp_path):
    # A step that raises (here injected at step 2; out of memory in real life) ends that trial only.
    (tmp_path / "config.toml").write_text(FAST)
    result = loratui_cli("advise", "config.toml", "--steps", "2", "--json", cwd=tmp_path,
                         env={"LORATUI_TEST_FAIL_AT_STEP": "2"})
    assert result.returncode == 0, result.stderr
    advice = json.loads(result.stdout)
    for name, trial in advice["trials"].items():
        assert (trial["verdict"], trial["steps_done"]) == ("failed", 1)
        assert trial["error"] == "InjectedFault: injected failure in training step 2 (LORATUI_TEST_FAIL_AT_STEP)"
        assert f"advise: {name}: stopped at step 1: InjectedFault" in result.stderr
        assert f"not {name}: stopped at step 1 of 2: InjectedFault" in " ".join(advice["reasons"])
    assert advice["recommendation"] == "fp32"
    assert advice["reasons"][0] == "no precision trained cleanly here; fp32 is the safest to start from"


def test_a_trial_whose_switch_fails_is_recorded_and_the_next_one_still_runs(tmp_path):
    # Reloading the base model for the fp16 trial fails (injected; out of memory in real life) after
    # the restart has already freed the bf16 model: the fp32 trial must still load its own and run.
    (tmp_path / "config.toml").write_text(FAST)
    result = loratui_cli("advise", "config.toml", "--steps", "2", "--json", cwd=tmp_path,
                         env={"LORATUI_TEST_FAIL_LOADING": "float16"})
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    advice = json.loads(result.stdout)
    assert json.loads((tmp_path / "runs" / "advised" / "advice.json").read_text()) == advice
    trials = advice["trials"]
    fp16 = trials["fp16"]
    error = "InjectedFault: injected failure loading the model in float16 (LORATUI_TEST_FAIL_LOADING)"
    assert (fp16["verdict"], fp16["attempt"], fp16["steps_done"], fp16["error"]) == ("failed", None, 0, error)
    assert fp16["reasons"] == [f"could not switch to it (reloading the base model): {error}"]
    assert f"advise: fp16: could not switch to fp16: {error}" in result.stderr
    assert f"not fp16: could not switch to it (reloading the base model): {error}" in advice["reasons"]
    for name in ("bf16", "fp32"):
        assert (trials[name]["verdict"], trials[name]["steps_done"]) == ("healthy", 2), trials[name]["reasons"]
    assert "trial 3 of 3 (fp32): step 2/2" in result.stderr
    # The trials' log: fp16 published no step; fp32 is the next attempt, restarted from step 0 in fp32.
    events = read_events(tmp_path / "runs" / "advised" / "advise" / "events.jsonl")
    assert {s["precision"] for s in events if s["type"] == "step"} == {"bf16", "fp32"}
    restarts = [e for e in events if e["type"] == "restart"]
    # Then the timing repeat of the two that ran, in reverse order.
    assert [(r["from_step"], r["precision"]) for r in restarts] == [(0, "fp32"), (0, "fp32"), (0, "bf16")]
    assert trials["fp32"]["attempt"] == restarts[0]["attempt"] == trials["bf16"]["attempt"] + 1
    assert advice["recommendation"] in ("bf16", "fp32")
