"""Record the real runs that the dashboard's tests and screenshots replay (tests/data/ui_*, advice_cpu.json).

Each recording is a small run directory: events.jsonl, config.toml and each
checkpoint's trainer_state.json and manifest.json (the JSON the rollback
dialog reads; the tensors are left out). Absolute paths in the events are
rewritten to `runs/<name>/...` so the files do not depend on where they were
recorded.

    python scripts/record_event_logs.py            # every recording
    python scripts/record_event_logs.py healthy_fp16

Recordings:
  healthy_fp16   `loratui demo` in fp16: 60 steps, checkpoints every 20
  restart_bf16   the same run; at step 32 a restart command switches to bf16 from step 20
  fp16_overflow  `loratui demo --scenario fp16-overflow`: 60 steps of overflowing fp16, the monitor's alerts
  advice         `loratui advise --json` on config.example.toml (10-step trials): the advice.json that
                 the precision dialog reads, kept as tests/data/advice_cpu.json
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
sys.path.insert(0, str(ROOT))

COMMON = ["train.max_steps=60", "checkpoint.every_steps=20", "monitor.log_every=10"]


def record_healthy_fp16(work: Path) -> Path:
    return run_demo(work, "ui-healthy-fp16", [*COMMON, "train.precision=fp16"])


def record_restart_bf16(work: Path) -> Path:
    from loratui.control import send_command

    def switch_at_step_32(run_dir: Path, events: list[dict]) -> bool:
        if any(e["type"] == "step" and e["step"] >= 32 for e in events):
            send_command(run_dir / "control.jsonl", "restart", precision="bf16", from_step=20,
                         reason="dashboard: precision bf16, from step 20")
            return True
        return False

    return run_demo(work, "ui-restart-bf16", [*COMMON, "train.precision=fp16"], on_event=switch_at_step_32)


def record_fp16_overflow(work: Path) -> Path | None:
    from loratui.scenarios import SCENARIOS

    if "fp16-overflow" not in SCENARIOS:
        print("fp16_overflow: skipped, `loratui demo --scenario fp16-overflow` does not exist yet")
        return None
    return run_demo(work, "ui-fp16-overflow", COMMON, scenario="fp16-overflow")


def record_advice(work: Path) -> None:
    """`loratui advise --json`'s output, as written to advice.json (it holds no paths of this machine's)."""
    command = [sys.executable, "-m", "loratui", "advise", str(ROOT / "config.example.toml"), "--steps", "10",
               "--json", "--set", f"run.output_dir={work}", "--set", "train.batch_size=4"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"advice: loratui advise exited with {result.returncode}:\n{result.stderr[-2000:]}")
    advice = json.loads(result.stdout)
    target = DATA / "advice_cpu.json"
    target.write_text(json.dumps(advice, indent=2) + "\n")
    print(f"{target.relative_to(ROOT)}: recommends {advice['recommendation']}, trials {', '.join(advice['trials'])}")


RECORDINGS = {"healthy_fp16": record_healthy_fp16, "restart_bf16": record_restart_bf16,
              "fp16_overflow": record_fp16_overflow, "advice": record_advice}


def run_demo(work: Path, name: str, overrides: list[str], *, scenario: str = "healthy", on_event=None) -> Path:
    """Run `loratui demo --headless` to the end; `on_event` may act once on the events so far."""
    from loratui.events.jsonl import read_events

    command = [sys.executable, "-m", "loratui", "demo", "--headless", "--scenario", scenario,
               "--set", f"run.name={name}", "--set", f"run.output_dir={work}"]
    for override in overrides:
        command += ["--set", override]
    run_dir = work / name
    with open(work / f"{name}.out", "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        acted = on_event is None
        while process.poll() is None:
            time.sleep(0.2)
            if not acted and (run_dir / "events.jsonl").exists():
                acted = on_event(run_dir, read_events(run_dir / "events.jsonl"))
    if process.returncode != 0:
        sys.exit(f"{name}: loratui exited with {process.returncode}; see {work / (name + '.out')}")
    return run_dir


def keep(run_dir: Path, work: Path, target: Path) -> None:
    """Copy the JSON of a run directory into tests/data, with paths made relative."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    prefix = str(work) + "/"
    events = (run_dir / "events.jsonl").read_text().replace(json.dumps(prefix)[1:-1], "runs/")
    (target / "events.jsonl").write_text(events)
    shutil.copy(run_dir / "config.toml", target / "config.toml")
    for checkpoint in sorted((run_dir / "checkpoints").glob("step-*")):
        (target / "checkpoints" / checkpoint.name).mkdir(parents=True)
        for name in ("trainer_state.json", "manifest.json"):
            shutil.copy(checkpoint / name, target / "checkpoints" / checkpoint.name / name)
    print(f"{target.relative_to(ROOT)}: {events.count(chr(10))} events")


def main(names: list[str]) -> int:
    for name in names or list(RECORDINGS):
        with tempfile.TemporaryDirectory(prefix="loratui-record-") as tmp:
            work = Path(tmp)
            run_dir = RECORDINGS[name](work)
            if run_dir is not None:  # a run to keep (the advice writes its own file)
                keep(run_dir, work, DATA / f"ui_{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
