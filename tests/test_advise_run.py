"""`loratui run` with train.precision = "advise": the advisor measures first, then the run trains with its choice."""

import json

from helpers import steps_of
from loratui.advise.run import choose_precision_for_run
from loratui.cli import main
from loratui.config.load import config_from_dict, tomllib
from loratui.events.bus import CallbackSink, EventBus
from loratui.events.jsonl import read_events
from loratui.run_dir import RunDir

CONFIG = ('[run]\nname = "{name}"\noutput_dir = "runs"\n[train]\nprecision = "{precision}"\nmax_steps = 2\n'
          'batch_size = 2\nwarmup_steps = 0\n[checkpoint]\nevery_steps = 100\n')


def run_headless(tmp_path, name: str, precision: str, capsys) -> tuple[RunDir, list[dict], str]:
    config = tmp_path / f"{name}.toml"
    config.write_text(CONFIG.format(name=name, precision=precision))
    assert main(["run", str(config), "--headless"]) == 0
    run_dir = RunDir(tmp_path / "runs" / name)
    return run_dir, read_events(run_dir.events), capsys.readouterr().out


def test_run_advises_first_then_trains_with_the_choice(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir, events, printed = run_headless(tmp_path, "advised", "advise", capsys)
    advice = json.loads(run_dir.advice.read_text())
    choice = advice["recommendation"]
    assert set(advice["trials"]) == {"fp32", "bf16", "fp16"}
    assert all(t["steps_done"] == 2 for t in advice["trials"].values())  # min(30, train.max_steps)

    kinds = [e["type"] for e in events]
    assert kinds.index("advice") < kinds.index("run_started")
    told = next(e for e in events if e["type"] == "advice")
    assert (told["recommendation"], told["reused"], told["reasons"]) == (choice, False, advice["reasons"])
    started = next(e for e in events if e["type"] == "run_started")
    assert (started["requested_precision"], started["precision"]) == ("advise", choice)
    steps = steps_of(events)
    assert [s["step"] for s in steps] == [1, 2] and {s["precision"] for s in steps} == {choice}
    # Progress while it measured: one phase per trial, then per timing repeat in reverse order, in the run's own log
    # (the dashboard shows it).
    phases = [e["name"] for e in events if e["type"] == "phase" and e["name"].startswith("advise")
              and e["done"] == e["total"] == 2]
    assert phases == ["advise: bf16 trial (1 of 3)", "advise: fp16 trial (2 of 3)", "advise: fp32 trial (3 of 3)",
                      "advise: fp32 trial (4 of 6)", "advise: fp16 trial (5 of 6)", "advise: bf16 trial (6 of 6)"]
    assert f"note: advise: training in {choice}: {advice['reasons'][0]}" in printed
    # The trials' steps are in their own log, not the run's.
    trial_steps = [e for e in read_events(run_dir.root / "advise" / "events.jsonl") if e["type"] == "step"]
    assert len(trial_steps) == 12  # 3 trials of 2 steps, twice (the timing repeat)

    # Trained as a run given that precision outright would have: the trials leave no trace.
    _, plain_events, _ = run_headless(tmp_path, "direct", choice, capsys)
    assert [s["loss"] for s in steps_of(plain_events)] == [s["loss"] for s in steps]

    # A resume (or any later start) with this config on this machine reuses the measured advice.
    with open(run_dir.config, "rb") as file:
        config = config_from_dict(tomllib.load(file))
    told_again = []
    bus = EventBus()
    bus.add_sink(CallbackSink(told_again.append))
    trial_log = (run_dir.root / "advise" / "events.jsonl").read_bytes()
    assert choose_precision_for_run(config, run_dir, bus) == choice
    assert (run_dir.root / "advise" / "events.jsonl").read_bytes() == trial_log
    assert next(e for e in told_again if e["type"] == "advice")["reused"] is True


def test_the_advisor_in_the_trainer_imports_no_ui():
    import subprocess
    import sys

    code = ("import loratui.advise.run, loratui.advise.advisor, loratui.train.trainer\n"
            "import sys; print(' '.join(sorted(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert not {m for m in loaded if m.split(".")[0] in ("textual", "rich", "textual_plotext")}
