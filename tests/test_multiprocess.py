"""Two CPU ranks under `accelerate launch` (gloo): one event log, commands and signals on every rank.

Each test starts real processes the way a user or the dashboard does: the
dashboard's `trainer_command` with `[launch] num_processes = 2`, and
`accelerate launch ... -m loratui run CONFIG --headless`. Rank 0 alone writes
events.jsonl; the other rank's part shows in the checkpoints (one RNG file per
rank, written in the same save) and, for the signal test, in its exit code.
The logged loss is global: step 1's loss is checked against both ranks'
first-batch losses, recomputed in the test process from the same model and
data shards.

Not tested here: the refusal of FSDP and DeepSpeed (Trainer.setup). accelerate
picks FSDP only on GPU process groups and DeepSpeed only off CPU with the
deepspeed package installed, so neither engine can be selected on this machine.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from helpers import steps_of
from test_integration_support import docs_snippet
from loratui.config import load_config, render_toml
from loratui.control import send_command
from loratui.events.jsonl import read_events
from loratui.launcher import trainer_command
from loratui.run_dir import RunDir, prepare_run_dir


def documented_launch_options() -> list[str]:
    """The accelerate launch options of the documented command line (docs/multi-gpu.md)."""
    words = shlex.split(docs_snippet("launch"))
    assert words[:2] == ["accelerate", "launch"]
    assert words[-5:] == ["-m", "loratui", "run", "config.toml", "--headless"]
    return words[2:-5]


LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", *documented_launch_options()]
# One thread per rank: two ranks share this machine's cores.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
STOP_WITHIN_S = 60

# Records each rank's exit code, which `accelerate launch` itself does not pass on.
EXIT_CODE_PROBE = """
import os, sys
from pathlib import Path
from loratui.cli import main
code = main(sys.argv[1:])
Path(os.environ["EXIT_CODES_DIR"], "rank" + os.environ["RANK"]).write_text(str(code))
sys.exit(code)
"""


def launch_config(tmp_path: Path, launch: str, name: str = "unit"):
    path = tmp_path / f"{name}.toml"
    path.write_text(f"[run]\nname = \"{name}\"\n[launch]\n{launch}\n")
    config = load_config(path)
    return config, RunDir(Path(config.run.output_dir) / name)


def test_one_process_runs_the_trainer_directly(tmp_path):
    config, run_dir = launch_config(tmp_path, "num_processes = 1")
    assert trainer_command(config, run_dir, resume=True) == [
        sys.executable, "-m", "loratui.entry", str(run_dir.root), "--resume"]


def test_several_processes_go_through_accelerate_launch_with_everything_said(tmp_path):
    config, run_dir = launch_config(tmp_path, "num_processes = 4")
    assert trainer_command(config, run_dir, resume=False) == [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "4", "--multi_gpu",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        "-m", "loratui.entry", str(run_dir.root)]


def test_an_accelerate_config_file_decides_the_rest(tmp_path):
    config, run_dir = launch_config(tmp_path, 'num_processes = 2\naccelerate_args = ["--config_file", "ddp.yaml"]')
    command = trainer_command(config, run_dir, resume=False)
    assert command[3:7] == ["--config_file", "ddp.yaml", "--num_processes", "2"]
    assert command[7:] == ["-m", "loratui.entry", str(run_dir.root)]


def test_the_users_options_win(tmp_path):
    config, run_dir = launch_config(
        tmp_path, 'num_processes = 2\naccelerate_args = ["--num_machines=2", "--mixed_precision", "no", "--use_fsdp"]')
    command = trainer_command(config, run_dir, resume=False)
    options = command[3:command.index("-m", 3)]
    assert options == ["--num_machines=2", "--mixed_precision", "no", "--use_fsdp", "--num_processes", "2",
                       "--dynamo_backend", "no"]


def write_config(directory: Path, name: str, *, max_steps: int = 100000, every_steps: int = 100000,
                 lora_dropout: float = 0.05) -> Path:
    rows = "".join(f'{{"text": "Question: What is {i} plus {i}? Answer: {2 * i}."}}\n' for i in range(64))
    (directory / "rows.jsonl").write_text(rows)
    path = directory / f"{name}.toml"
    path.write_text(f"""
[run]
name = "{name}"
[data]
path = "rows.jsonl"
format = "text"
[lora]
dropout = {lora_dropout}
[train]
precision = "fp32"
max_steps = {max_steps}
warmup_steps = 0
batch_size = 4
[checkpoint]
every_steps = {every_steps}
[monitor]
log_every = 1000
[launch]
num_processes = 2
""")
    return path


def wait_for_step(events_path: Path, step: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if events_path.exists() and any(e["step"] >= step for e in steps_of(read_events(events_path))):
            return
        if process.poll() is not None:
            pytest.fail(f"the launcher exited with {process.returncode} before step {step}")
        time.sleep(0.2)
    kill_launch(process)
    pytest.fail(f"no step {step} within {timeout} s")


def wait_for_exit(process: subprocess.Popen) -> tuple[int, float]:
    """The launcher's exit code and how long it took; none of its ranks may outlive it."""
    ranks = psutil.Process(process.pid).children(recursive=True)
    started = time.monotonic()
    try:
        code = process.wait(timeout=STOP_WITHIN_S)
    except subprocess.TimeoutExpired:
        kill_launch(process, ranks)
        pytest.fail(f"still running {STOP_WITHIN_S} s after being told to stop")
    elapsed = time.monotonic() - started
    _, alive = psutil.wait_procs(ranks, timeout=STOP_WITHIN_S - elapsed)
    assert not alive, f"ranks left running: {alive}"
    return code, elapsed


def kill_launch(process: subprocess.Popen, ranks: list[psutil.Process] = ()) -> None:
    for rank in ranks or psutil.Process(process.pid).children(recursive=True):
        rank.kill()
    process.kill()


def launch(command: list[str], log: Path, env: dict = ENV) -> subprocess.Popen:
    # Its own session, as the dashboard starts trainers: a signal meant for the test runner stays there.
    with open(log, "ab") as output:
        return subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def assert_one_consistent_log(events: list[dict], world_size: int = 2) -> None:
    starts = [e for e in events if e["type"] == "run_started"]
    assert [e["world_size"] for e in starts] == [world_size] * len(starts)
    keys = [(e["attempt"], e["step"]) for e in steps_of(events)]
    assert len(keys) == len(set(keys)), "a step was published twice"
    for attempt in {a for a, _ in keys}:
        steps = sorted(s for a, s in keys if a == attempt)
        assert steps == list(range(steps[0], steps[0] + len(steps)))


def assert_every_rank_saved(checkpoint: Path) -> None:
    assert (checkpoint / "manifest.json").is_file()
    assert sorted(p.name for p in checkpoint.glob("rng-rank*.pt")) == ["rng-rank0.pt", "rng-rank1.pt"]


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A run started as the dashboard starts one, stopped through control.jsonl at step 3 or later."""
    directory = tmp_path_factory.mktemp("multiprocess")
    config_path = write_config(directory, "stopped")
    config = load_config(config_path)
    run_dir = prepare_run_dir(config, resume=False, config_text=render_toml(config))
    command = trainer_command(config, run_dir, resume=False)
    process = launch(command, run_dir.trainer_log)
    wait_for_step(run_dir.events, 3, process)
    send_command(run_dir.control, "stop")
    code, elapsed = wait_for_exit(process)
    return {"config_path": config_path, "run_dir": run_dir, "command": command, "code": code,
            "elapsed": elapsed, "events": read_events(run_dir.events)}


def test_dashboard_command_goes_through_accelerate_launch(stopped_run):
    command = stopped_run["command"]
    assert command[1:3] == ["-m", "accelerate.commands.launch"]
    assert command[command.index("--num_processes") + 1] == "2"
    assert command[-3:] == ["-m", "loratui.entry", str(stopped_run["run_dir"].root)]


def test_stop_command_ends_both_ranks_at_the_same_step(stopped_run):
    events, run_dir = stopped_run["events"], stopped_run["run_dir"]
    assert stopped_run["code"] == 0, run_dir.trainer_log.read_text()[-3000:]
    assert stopped_run["elapsed"] < STOP_WITHIN_S
    assert_one_consistent_log(events)
    last_step = steps_of(events)[-1]["step"]
    ack = next(e for e in events if e["type"] == "control")
    assert ack["cmd"] == "stop" and ack["accepted"] and ack["step"] == last_step
    saved = [e for e in events if e["type"] == "checkpoint"]
    assert saved[-1]["step"] == last_step and saved[-1]["reason"] == "stop"
    assert_every_rank_saved(Path(saved[-1]["path"]))
    finished = events[-1]
    assert finished["type"] == "run_finished" and finished["step"] == last_step
    assert (run_dir.adapter / "adapter_model.safetensors").is_file()


def test_rank_zero_refuses_an_existing_run_dir_and_no_rank_waits(stopped_run):
    command = LAUNCH + ["-m", "loratui", "run", str(stopped_run["config_path"]), "--headless"]
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=STOP_WITHIN_S)
    assert result.returncode != 0
    assert result.stderr.count("run directory already exists") == 1, result.stderr[-3000:]


def test_a_resumed_run_continues_and_a_signal_stops_every_rank(stopped_run):
    """Resume through `accelerate launch -m loratui run --resume`, then SIGTERM the launcher, as a batch
    scheduler does: torchrun passes it to each rank, and every rank stops at the same step."""
    run_dir = stopped_run["run_dir"]
    stopped_at = steps_of(stopped_run["events"])[-1]["step"]
    directory = stopped_run["config_path"].parent
    probe = directory / "exit_code_probe.py"
    probe.write_text(EXIT_CODE_PROBE)
    exit_codes = directory / "exit-codes"
    exit_codes.mkdir()
    process = launch(LAUNCH + [str(probe), "run", str(stopped_run["config_path"]), "--headless", "--resume"],
                     directory / "resumed.log", env={**ENV, "EXIT_CODES_DIR": str(exit_codes)})
    wait_for_step(run_dir.events, stopped_at + 2, process)
    process.send_signal(signal.SIGTERM)
    wait_for_exit(process)
    codes = {p.name: p.read_text() for p in exit_codes.iterdir()}
    assert codes == {"rank0": "143", "rank1": "143"}, (directory / "resumed.log").read_text()[-3000:]
    events = read_events(run_dir.events)
    assert_one_consistent_log(events)
    resumed = [e for e in events if e["type"] == "run_started"][-1]
    assert resumed["attempt"] == 1 and resumed["step"] == stopped_at and resumed["world_size"] == 2
    assert resumed["resumed_from"].endswith(f"step-{stopped_at:06d}")
    continued = [e["step"] for e in steps_of(events, attempt=1)]
    assert continued[0] == stopped_at + 1 and len(continued) >= 2
    saved = [e for e in events if e["type"] == "checkpoint"][-1]
    assert saved["step"] == continued[-1] and saved["reason"] == "signal" and saved["attempt"] == 1
    assert_every_rank_saved(Path(saved["path"]))
    assert events[-1]["type"] == "run_finished" and events[-1]["reason"] == "stopped by SIGTERM"


FINISHED_STEPS = 4


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """`accelerate launch -m loratui run` left alone to reach max_steps; no dropout, so a step's loss
    depends only on the weights and the batch (see test_the_logged_loss_is_the_mean_over_ranks)."""
    directory = tmp_path_factory.mktemp("multiprocess-finished")
    config_path = write_config(directory, "finished", max_steps=FINISHED_STEPS, every_steps=2, lora_dropout=0.0)
    process = launch(LAUNCH + ["-m", "loratui", "run", str(config_path), "--headless"], directory / "run.log")
    code, _ = wait_for_exit(process)
    run_dir = RunDir(directory / "runs" / "finished")
    return {"config_path": config_path, "run_dir": run_dir, "code": code, "log": directory / "run.log",
            "events": read_events(run_dir.events)}


def test_a_two_process_run_finishes_by_itself_and_saves_its_adapter_once(finished_run):
    events, run_dir = finished_run["events"], finished_run["run_dir"]
    assert finished_run["code"] == 0, finished_run["log"].read_text()[-3000:]
    assert_one_consistent_log(events)
    assert [e["step"] for e in steps_of(events)] == list(range(1, FINISHED_STEPS + 1))
    saved = [(e["step"], e["reason"]) for e in events if e["type"] == "checkpoint"]
    assert saved == [(0, "start"), (2, "interval"), (FINISHED_STEPS, "end")]
    assert_every_rank_saved(run_dir.checkpoints / f"step-{FINISHED_STEPS:06d}")
    ends = [e for e in events if e["type"] in ("run_finished", "run_failed")]
    assert len(ends) == 1 and ends[0] == events[-1]
    assert ends[0]["type"] == "run_finished" and ends[0]["reason"] == "completed"
    assert ends[0]["step"] == FINISHED_STEPS
    # The adapter is the one state every rank trained to: the same tensors as the end checkpoint.
    import torch
    from safetensors.torch import load_file

    adapter = load_file(str(run_dir.adapter / "adapter_model.safetensors"))
    checkpointed = load_file(str(run_dir.checkpoints / f"step-{FINISHED_STEPS:06d}" / "adapter_model.safetensors"))
    assert adapter.keys() == checkpointed.keys() and adapter
    assert all(torch.equal(adapter[k], checkpointed[k]) for k in adapter)


def first_batch_losses_per_rank(config_path: Path, tmp_path: Path) -> list[tuple[float, int]]:
    """Each rank's step-1 loss and token count, recomputed in this process without the launcher.

    Before the first update every rank holds the same weights (seeded LoRA init), so a
    rank's step-1 loss is that model's loss on the rank's first batch (its share of the data).
    """
    import torch

    from helpers import ready_trainer
    from loratui.data.dataset import BatchStream

    config = load_config(config_path, [f'run.output_dir="{tmp_path}"', 'run.name="per-rank"',
                                       "launch.num_processes=1"])
    trainer = ready_trainer(config)
    per_rank = []
    for rank in range(2):
        stream = BatchStream(trainer.stream.examples, config.train.batch_size, seed=config.train.seed,
                             shuffle=config.data.shuffle, pad_id=trainer.tokenizer.pad_token_id, rank=rank,
                             world_size=2)
        batch = stream.next_batch()
        with torch.no_grad():
            per_rank.append((float(trainer.model(**batch).loss), int(batch["attention_mask"].sum())))
    return per_rank


def test_the_logged_loss_is_the_mean_over_ranks(finished_run, tmp_path):
    (loss0, tokens0), (loss1, tokens1) = first_batch_losses_per_rank(finished_run["config_path"], tmp_path)
    assert abs(loss0 - loss1) > 1e-2, "the ranks' batches must differ for the check to mean anything"
    first = steps_of(finished_run["events"])[0]
    assert first["loss"] == pytest.approx((loss0 + loss1) / 2, rel=1e-5, abs=1e-6), (first["loss"], loss0, loss1)
    assert first["tokens"] == tokens0 + tokens1
