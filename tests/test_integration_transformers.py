"""LoraTuiCallback on a real transformers.Trainer: the tiny model with peft LoRA, on CPU.

The run executes the documented snippet (docs/multi-gpu.md) as written. Its `Trainer` is a subclass
standing in for a fine-tuning script's own (as MiniCPM-V's is): its loss turns
NaN at step 3, as an fp16 overflow does, and its accelerator holds a real
GradScaler, as accelerate gives it for fp16 on a GPU (accelerate refuses fp16 on
CPU). It also plays the person at the dashboard, appending commands to
control.jsonl at chosen steps.
"""

from __future__ import annotations

import json
import math
import stat
import subprocess
import threading
from dataclasses import replace
from importlib.resources import files
from pathlib import Path

import pytest
import torch

from helpers import steps_of
from test_integration_support import docs_snippet
from loratui.control import send_command
from loratui.events.jsonl import read_events
from loratui.run_dir import RunDir

NAN_STEP, SAVE_STEP, RESTART_STEP, PAUSE_STEP, STOP_STEP = 3, 2, 3, 4, 5
PAUSE_S = 1.0
# The fields a `step` event of loratui's own trainer has, and their JSON types.
STEP_FIELDS = {"step": int, "loss": (float, str), "grad_norm": (float, str), "lr": float, "precision": str,
               "scale": (float, type(None)), "skipped": bool, "nonfinite_grads": int, "tokens": int,
               "tokens_per_s": float, "step_time_s": float, "epoch": float, "mem_allocated_mib": type(None),
               "mem_reserved_mib": type(None), "mem_peak_mib": type(None), "attempt": int, "time": float}


def tiny_lora_model_and_data(rows: int = 64, length: int = 32):
    """The built-in tiny Llama with peft LoRA adapters, and tokenized rows of the bundled text data."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loratui.model.builtin import builtin_model_dir

    model_path = builtin_model_dir("builtin:tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_path),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    texts = [json.loads(line)["text"] for line in
             files("loratui.data").joinpath("builtin/tiny-text.jsonl").read_text().splitlines()[:rows]]
    examples = []
    for text in texts:
        encoded = tokenizer(text, truncation=True, max_length=length, padding="max_length")
        labels = [t if m else -100 for t, m in zip(encoded["input_ids"], encoded["attention_mask"])]
        examples.append({"input_ids": torch.tensor(encoded["input_ids"]),
                         "attention_mask": torch.tensor(encoded["attention_mask"]), "labels": torch.tensor(labels)})
    return model, examples


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory):
    from transformers import Trainer, TrainerCallback, TrainingArguments

    import loratui.integrations.transformers as integration
    from loratui.config.schema import MonitorSection

    directory = tmp_path_factory.mktemp("hf")
    run_dir = RunDir(directory / "runs" / "my-finetune")

    class Commands(TrainerCallback):
        """Appends a command to control.jsonl before the step it is meant for."""

        schedule = {SAVE_STEP: ["save"], RESTART_STEP: ["restart"], PAUSE_STEP: ["pause"], STOP_STEP: ["stop"]}

        def on_step_begin(self, args, state, control, **kwargs):
            for cmd in self.schedule.get(state.global_step + 1, []):
                send_command(run_dir.control, cmd)
                if cmd == "pause":
                    threading.Timer(PAUSE_S, send_command, (run_dir.control, "resume")).start()

    class ScriptTrainer(Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=1.0, growth_interval=1000)
            self.add_callback(Commands())

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            return loss * float("nan") if self.state.global_step + 1 == NAN_STEP else loss

    model, dataset = tiny_lora_model_and_data()
    args = TrainingArguments(output_dir=str(directory / "out"), max_steps=8, per_device_train_batch_size=4,
                             learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to="none",
                             use_cpu=True, disable_tqdm=True, seed=0)
    namespace = {"Trainer": ScriptTrainer, "model": model, "args": args, "train_dataset": dataset}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(directory)
        # Probes every 2 steps instead of 50, so that a short run has some.
        patch.setattr(integration, "MonitorSection", lambda: replace(MonitorSection(), probe_every=2))
        exec(docs_snippet("hf-callback"), namespace)
    trainer = namespace["trainer"]
    return {"trainer": trainer, "run_dir": run_dir, "events": read_events(run_dir.events)}


def test_the_raw_loss_shows_the_nan_step_the_trainer_log_hides(hf_run):
    steps = {e["step"]: e for e in steps_of(hf_run["events"])}
    assert sorted(steps) == list(range(1, STOP_STEP + 1))
    logged = {h["step"]: h for h in hf_run["trainer"].state.log_history if "loss" in h}
    assert math.isfinite(logged[NAN_STEP]["loss"])  # the Trainer's NaN filter at work
    assert steps[NAN_STEP]["loss"] == "nan" and steps[NAN_STEP]["nonfinite_grads"] > 0
    for step, event in steps.items():
        if step != NAN_STEP:
            assert event["loss"] == pytest.approx(logged[step]["loss"], rel=1e-6)
            assert event["grad_norm"] == pytest.approx(logged[step]["grad_norm"], rel=1e-6)
        assert event["lr"] == pytest.approx(logged[step]["learning_rate"])


def test_loss_scale_and_the_skipped_step_come_from_the_scaler(hf_run):
    steps = {e["step"]: e for e in steps_of(hf_run["events"])}
    assert [steps[s]["skipped"] for s in sorted(steps)] == [s == NAN_STEP for s in sorted(steps)]
    assert [steps[s]["scale"] for s in sorted(steps)] == [1.0 if s <= NAN_STEP else 0.5 for s in sorted(steps)]
    assert all(e["precision"] == "fp32" for e in steps.values())


def test_events_have_the_fields_and_types_of_loratuis_trainer(hf_run):
    events = hf_run["events"]
    started = events[0]
    assert started["type"] == "run_started" and started["world_size"] == 1 and started["precision"] == "fp32"
    model = hf_run["trainer"].model
    assert started["trainable_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad) > 0
    assert started["config"]["train"]["learning_rate"] == 1e-3
    for event in steps_of(events):
        assert set(event) >= set(STEP_FIELDS) - {"type"}
        for name, kind in STEP_FIELDS.items():
            assert isinstance(event[name], kind), (name, event[name])


def test_save_stop_pause_and_restart_commands(hf_run):
    events, trainer = hf_run["events"], hf_run["trainer"]
    acks = {(e["cmd"], e["step"]): e for e in events if e["type"] == "control"}
    assert acks[("save", SAVE_STEP)]["accepted"]
    assert not acks[("restart", RESTART_STEP)]["accepted"]
    assert "not supported" in acks[("restart", RESTART_STEP)]["message"]
    assert acks[("pause", PAUSE_STEP)]["accepted"] and acks[("resume", PAUSE_STEP)]["accepted"]
    assert acks[("stop", STOP_STEP)]["accepted"]
    times = {e["step"]: e["time"] for e in steps_of(events)}
    assert times[PAUSE_STEP + 1] - times[PAUSE_STEP] >= PAUSE_S * 0.9
    saved = [(e["step"], e["reason"]) for e in events if e["type"] == "checkpoint"]
    assert saved == [(SAVE_STEP, "command"), (STOP_STEP, "stop")]
    for event in events:
        if event["type"] == "checkpoint":
            assert (Path(event["path"]) / "adapter_model.safetensors").is_file()
    assert trainer.state.global_step == STOP_STEP
    assert events[-1]["type"] == "run_finished" and events[-1]["reason"] == "stopped by command"
    assert events[-1]["step"] == STOP_STEP


def test_health_probes(hf_run):
    health = {e["step"]: e["checks"] for e in hf_run["events"] if e["type"] == "health"}
    assert sorted(health) == [2, 4]
    assert health[2]["stale_update"]["value"] == 0.0 and health[2]["nonfinite_grads"]["status"] == "ok"
    assert health[4]["loss_scale"] == {"status": "alert", "value": 0.5,
                                       "summary": "below 1: values overflow even unscaled"}
    assert health[4]["skip_rate"]["value"] == pytest.approx(1 / 4)


def test_the_trainer_is_left_as_it_was_and_the_run_dir_private(hf_run):
    trainer, run_dir = hf_run["trainer"], hf_run["run_dir"]
    assert "training_step" not in vars(trainer) and "clip_grad_norm_" not in vars(trainer.accelerator)
    assert stat.S_IMODE(run_dir.root.stat().st_mode) == 0o700
    assert stat.S_IMODE(run_dir.events.stat().st_mode) == 0o600


def test_loratui_watch_shows_the_run(hf_run):
    from test_ui_support import caught_up, run_async

    from loratui.ui.app import DashboardApp

    @run_async
    async def watch():
        app = DashboardApp(hf_run["run_dir"].root)
        async with app.run_test(size=(160, 48)) as pilot:
            await caught_up(app, pilot)
            return app.view.header

    header = watch()
    assert (header.state, header.step, header.precision) == ("finished", STOP_STEP, "fp32")


# A plain Trainer script under `accelerate launch`: no GradScaler, two ranks, a stop at step 3.
TWO_RANK_SCRIPT = """
import json, os, sys
sys.path.insert(0, {tests!r})
from transformers import Trainer, TrainerCallback, TrainingArguments
from loratui.control import send_command
from loratui.integrations.transformers import LoraTuiCallback
from test_integration_transformers import tiny_lora_model_and_data

run_dir, output_dir = sys.argv[1:3]

class StopAtStep3(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and state.global_step + 1 == 3:
            send_command(os.path.join(run_dir, "control.jsonl"), "stop")

model, dataset = tiny_lora_model_and_data()
args = TrainingArguments(output_dir=output_dir, max_steps=20, per_device_train_batch_size=4, learning_rate=1e-3,
                         logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True)
trainer = Trainer(model=model, args=args, train_dataset=dataset,
                  callbacks=[LoraTuiCallback(run_dir), StopAtStep3()])
trainer.train()
logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
with open(os.path.join(output_dir, "rank" + os.environ["RANK"] + ".json"), "w") as file:
    json.dump({{"stopped_at": trainer.state.global_step, "logged": logged}}, file)
# As in any multi-process script: without it a rank can abort at exit when rank 0, which holds
# the process group's store, exits first.
trainer.accelerator.wait_for_everyone()
trainer.accelerator.end_training()
"""


def test_two_ranks_one_log_and_the_stop_reaches_both(tmp_path):
    from test_multiprocess import ENV, LAUNCH

    script = tmp_path / "train.py"
    script.write_text(TWO_RANK_SCRIPT.format(tests=str(Path(__file__).resolve().parent)))
    run_dir = RunDir(tmp_path / "runs" / "two-ranks")
    result = subprocess.run(LAUNCH + [str(script), str(run_dir.root), str(tmp_path / "out")], capture_output=True,
                            text=True, env=ENV, timeout=180)
    clues = [line for line in result.stderr.splitlines()
             if any(word in line for word in ("terminate", "gloo", "Error", "error", "abort"))]
    assert result.returncode == 0, "\n".join(clues[-40:]) + result.stderr[-3000:]
    ranks = [json.loads((tmp_path / "out" / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["stopped_at"] for r in ranks] == [3, 3]
    logged = ranks[0]["logged"]
    events = read_events(run_dir.events)
    assert [e["type"] for e in events if e["type"] == "run_started"] == ["run_started"]
    assert events[0]["world_size"] == 2
    steps = steps_of(events)
    assert [e["step"] for e in steps] == [1, 2, 3]
    assert [e["loss"] for e in steps] == pytest.approx(logged, rel=1e-6)  # the mean over both ranks
    assert all(e["scale"] is None and e["skipped"] is False for e in steps)
    saved = [(e["step"], e["reason"]) for e in events if e["type"] == "checkpoint"]
    assert saved == [(3, "stop")] and events[-1]["type"] == "run_finished"
