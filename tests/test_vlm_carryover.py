"""Vision-language runs get what text runs have: restarts, rollback, check, advise, trackers, two processes,
the Hugging Face callback, and the data event's image counts on the dashboard.

Everything is real: the built-in tiny VLMs (LLaVA layout with a SigLIP tower, Qwen2-VL layout), the
tiny-shapes pictures, the trainer, accelerate's launcher and transformers' Trainer. MiniCPM-V-2_6's remote
code cannot exist offline: its interface comes from the stand-in in tests/fakes/minicpmv_standin.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from collections import Counter

import pytest
import torch

from helpers import StepHook, command_at, make_config, steps_of, train_in_process

FULL = os.environ.get("LORATUI_TORTURE") == "full"
VLM = ["model.name_or_path=\"builtin:tiny-vlm\"", "data.path=\"builtin:tiny-shapes\"", "train.batch_size=4",
       "train.warmup_steps=0", "train.lr_scheduler=\"constant\"", "monitor.probe_every=1000",
       "monitor.probe_first_steps=0"]


def out(tmp_path, name: str) -> list[str]:
    return [f"run.output_dir=\"{tmp_path / 'runs'}\"", f"run.name={name}"]


def losses(events: list[dict], attempt: int) -> dict[int, float]:
    return {e["step"]: float(e["loss"]) for e in steps_of(events, attempt)}  # "nan" as the log writes it


class PartDtypes(StepHook):
    """Records, right after a restart, the dtypes of each part's frozen weights and of the trained ones."""

    def __init__(self, actions: dict):
        super().__init__(actions)
        self.after_restart = None

    def on_restart(self, trainer):
        frozen: dict[str, set] = {}
        for name, param in trainer.unwrapped_model.named_parameters():
            if not param.requires_grad:
                frozen.setdefault(trainer.family.part_of(name), set()).add(param.dtype)
        self.after_restart = {"frozen": frozen, "trained": {p.dtype for p in trainer.params}}


# ---------------------------------------------------------------- restart, lower_lr, rollback

def test_a_restart_in_bf16_mends_the_overflowing_vision_tower(tmp_path):
    """The switch_precision fix on a VLM: the outlier tower overflows fp16 on every picture; the restart
    reloads every part of the base in bf16, keeps what trains in fp32, and the next steps are finite."""
    config = make_config(tmp_path, VLM + out(tmp_path, "switch") + [
        "model.name_or_path=\"builtin:tiny-vlm-outliers\"", "train.precision=fp16", "train.max_steps=4",
        "checkpoint.every_steps=2"])
    watch = PartDtypes({(0, 2): command_at("restart", precision="bf16", reason="vision tower overflow")})
    code, events, _ = train_in_process(config, monitor=watch)
    assert code == 0, events[-1]
    restart = next(e for e in events if e["type"] == "restart")
    assert (restart["from_step"], restart["precision"], restart["reason"]) == (2, "bf16", "vision tower overflow")
    before, after = steps_of(events, 0), steps_of(events, 1)
    assert [s["step"] for s in before] == [1, 2]
    assert all(not math.isfinite(float(s["loss"])) and s["skipped"] and s["scale"] is not None for s in before)
    assert [s["step"] for s in after] == [3, 4]
    assert all(math.isfinite(s["loss"]) and not s["skipped"] and s["scale"] is None and s["precision"] == "bf16"
               and s["images"] == 4 for s in after)
    assert watch.after_restart == {
        "frozen": {"vision_tower": {torch.bfloat16}, "projector": {torch.bfloat16},
                   "language_model": {torch.bfloat16}},
        "trained": {torch.float32}}


def test_a_lower_learning_rate_restart_goes_back_to_the_checkpoint_and_its_pictures(tmp_path):
    """lower_lr on a VLM: the step after the checkpoint is replayed on the same weights, batch, pictures and
    dropout masks (the same loss), and from then on the halved rate trains a different adapter."""
    config = make_config(tmp_path, VLM + out(tmp_path, "lower-lr") + [
        "train.precision=fp32", "train.learning_rate=0.002", "train.max_steps=4", "checkpoint.every_steps=2"])
    code, events, _ = train_in_process(config, monitor=StepHook({(0, 3): command_at("restart", lr_factor=0.5)}))
    assert code == 0, events[-1]
    restart = next(e for e in events if e["type"] == "restart")
    assert restart["from_step"] == 2 and restart["learning_rate"] == pytest.approx(0.001)
    first, second = losses(events, 0), losses(events, 1)
    assert sorted(first) == [1, 2, 3] and sorted(second) == [3, 4]
    assert all(s["lr"] == pytest.approx(0.002) for s in steps_of(events, 0))
    assert all(s["lr"] == pytest.approx(0.001) and s["images"] == 4 for s in steps_of(events, 1))
    assert second[3] == pytest.approx(first[3], abs=1e-6)


def test_rollback_on_the_qwen2_vl_layout_replays_the_same_steps(tmp_path):
    """Rollback to an earlier checkpoint with nothing else changed: concatenated patches, image_grid_thw and
    its rope come back exactly, so the replayed steps lose what they lost the first time."""
    config = make_config(tmp_path, VLM + out(tmp_path, "rollback") + [
        "model.name_or_path=\"builtin:tiny-qwen2-vl\"", "train.precision=fp32", "train.max_steps=5",
        "checkpoint.every_steps=2"])
    code, events, run_dir = train_in_process(config, monitor=StepHook({(0, 4): command_at("restart", from_step=2)}))
    assert code == 0, events[-1]
    restart = next(e for e in events if e["type"] == "restart")
    assert restart["from_step"] == 2
    first, second = losses(events, 0), losses(events, 1)
    assert sorted(first) == [1, 2, 3, 4] and sorted(second) == [3, 4, 5]
    for step in (3, 4):
        assert second[step] == pytest.approx(first[step], abs=1e-6), step
    assert (run_dir.checkpoints / "superseded" / "attempt-0" / "step-000004").is_dir()


def test_a_resume_may_turn_on_the_fp32_vision_tower(tmp_path):
    """The fix for an overflowing tower where bf16 is not native (a V100, a T4): stop, set vision.tower_fp32,
    resume. Like train.precision it changes the arithmetic, not what the adapter is, so the checkpoint resumes
    and the next fp16 steps are finite."""
    base = VLM + out(tmp_path, "tower-fp32") + [
        "model.name_or_path=\"builtin:tiny-vlm-outliers\"", "train.precision=fp16", "train.max_steps=4",
        "checkpoint.every_steps=100"]
    code, first, _ = train_in_process(make_config(tmp_path, base), monitor=StepHook({2: command_at("stop")}))
    assert code == 0 and [s["step"] for s in steps_of(first)] == [1, 2]
    assert not any(math.isfinite(float(s["loss"])) for s in steps_of(first))
    code, events, _ = train_in_process(make_config(tmp_path, base + ["vision.tower_fp32=true"]), resume=True)
    assert code == 0, events[-1]
    started = [e for e in events if e["type"] == "run_started"][-1]
    assert started["resumed_from"].endswith("step-000002") and started["precision"] == "fp16"
    after = steps_of(events, attempt=1)
    assert [s["step"] for s in after] == [3, 4]
    # Finite losses from the first step on. The scaler may still skip a step while it finds its level (at 16384
    # an AMD EPYC's gradients overflowed once, an Intel Xeon's did not): not the tower's doing, and it recovers.
    assert all(math.isfinite(s["loss"]) and s["scale"] is not None for s in after)
    assert not after[-1]["skipped"]


# ---------------------------------------------------------------- loratui check: the memory plan by part

def part_sizes(model_name: str) -> tuple[Counter, int]:
    """Parameters per part of the built-in VLM as loaded (the family's own map of its parts), and the LoRA
    parameters peft adds for [vision] tower = "lora"."""
    from loratui.config.schema import LoraSection, VisionSection
    from loratui.model.builtin_vlm import builtin_vlm_dir
    from loratui.model.families import family_for
    from loratui.model.loading import add_lora

    path = str(builtin_vlm_dir(model_name))
    family = family_for(path)
    base = family.load_model(path, torch.float32, trust_remote_code=False)
    sizes = Counter()
    for name, param in base.named_parameters():
        sizes[family.part_of(name)] += param.numel()
    vision = VisionSection(tower="lora", projector="frozen")
    adapted = add_lora(base, LoraSection(), adapter_dtype=torch.float32, task_type=family.lora_task_type,
                       **family.lora_targets(LoraSection(), vision))
    return sizes, sum(p.numel() for name, p in adapted.named_parameters() if "lora_" in name)


@pytest.mark.parametrize("model", ["builtin:tiny-vlm", "builtin:tiny-qwen2-vl"])
def test_check_plans_the_vision_tower_and_the_projector_as_parts(tmp_path, capsys, model):
    from loratui.cli import main
    from loratui.config import load_config
    from loratui.model.memory_plan import plan_for_config

    path = tmp_path / "vlm.toml"
    path.write_text(f'[model]\nname_or_path = "{model}"\n[data]\npath = "builtin:tiny-shapes"\n'
                    f'[train]\nprecision = "fp16"\n')
    assert main(["check", str(path)]) == 0
    printed = capsys.readouterr().out
    for part in ("vision tower", "projector", "projector trained in full (copy, gradients, AdamW state)"):
        assert f"\n  {part}: " in printed, printed
    if model == "builtin:tiny-vlm":  # a fixed-size tower; Qwen2-VL's token count follows each image's size
        assert "each image is 16 language-model tokens, within data.max_length" in printed

    sizes, lora_with_tower = part_sizes(model)
    assert sizes["vision_tower"] and sizes["projector"]
    parts = plan_for_config(load_config(path), "fp16", None, "").estimate.parts
    assert parts["vision tower"] == 2 * sizes["vision_tower"]  # fp16 weights
    assert parts["projector"] == 2 * sizes["projector"]
    # The projector trains in full by default: an fp32 copy, its gradients and AdamW's two moments.
    assert parts["projector trained in full (copy, gradients, AdamW state)"] == 4 * 4 * sizes["projector"]
    plain_lora = parts["LoRA parameters"]

    parts = plan_for_config(load_config(path, ["vision.tower=\"lora\"", "vision.projector=\"frozen\""]), "fp16",
                            None, "").estimate.parts
    assert not any("trained in full" in name for name in parts)
    assert parts["LoRA parameters"] > plain_lora
    if model == "builtin:tiny-vlm":
        # The language model's and the tower's, as peft adds them. (On Qwen2-VL peft also adapts the patch
        # embedding, a Conv3d named "proj": the plan counts linear layers only.)
        assert parts["LoRA parameters"] == 4 * lora_with_tower

    parts = plan_for_config(load_config(path, ["vision.tower=\"full\"", "vision.tower_fp32=true"]), "fp16",
                            None, "").estimate.parts
    assert parts["vision tower (fp32)"] == 4 * sizes["vision_tower"]
    assert parts["vision tower trained in full (copy, gradients, AdamW state)"] == 4 * 4 * sizes["vision_tower"]


def test_check_counts_minicpmvs_resampler_from_its_config(tmp_path):
    """MiniCPM-V 2.6 is remote code that transformers cannot build here: its resampler is counted from the
    config, and the count is checked against the stand-in's resampler, which has MiniCPM-V's layout."""
    from fakes.minicpmv_standin import build_standin
    from loratui.config.schema import LoraSection
    from loratui.model.memory_plan import model_shape, read_model_config
    from transformers import AutoModel

    model_dir = build_standin(tmp_path / "standin")
    shape = model_shape(read_model_config(str(model_dir)), LoraSection())
    model = AutoModel.from_pretrained(str(model_dir), trust_remote_code=True)
    assert shape.projector_params == sum(p.numel() for p in model.resampler.parameters())


# ---------------------------------------------------------------- loratui advise

def test_advise_on_a_vlm_rejects_fp16_and_names_the_vision_tower_module(tmp_path, monkeypatch, capsys):
    from loratui.advise.cli import advise_command

    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.toml").write_text('[run]\nname = "advised"\noutput_dir = "runs"\n')
    overrides = [o for o in VLM if not o.startswith("monitor.")] + [
        "model.name_or_path=\"builtin:tiny-vlm-outliers\"", "train.max_steps=2"]
    assert advise_command("config.toml", overrides, steps=2, as_json=True) == 0
    advice = json.loads(capsys.readouterr().out)
    fp16 = advice["trials"]["fp16"]
    assert fp16["verdict"] == "rejected" and fp16["headroom_module"].startswith("model.vision_tower."), fp16
    assert advice["recommendation"] != "fp16"
    assert {advice["trials"][name]["verdict"] for name in ("bf16", "fp32")} == {"healthy"}


# ---------------------------------------------------------------- trackers

def test_tensorboard_gets_the_vlm_runs_image_figures(tmp_path):
    from test_trackers import accumulator

    from loratui.config import render_toml
    from loratui.entry import train_in_run_dir
    from loratui.events.jsonl import read_events
    from loratui.run_dir import prepare_run_dir

    from loratui.trackers import flatten

    config = make_config(tmp_path, VLM + out(tmp_path, "tracked") + [
        "train.precision=bf16", "train.max_steps=3", "run.report_to=[\"tensorboard\"]",
        "monitor.probe_first_steps=1"])
    run_dir = prepare_run_dir(config, resume=False, config_text=render_toml(config))
    assert train_in_run_dir(run_dir, console=False) == 0
    events = read_events(run_dir.events)
    steps = steps_of(events)
    loaded = accumulator(run_dir.root / "tensorboard")
    assert [(s.step, s.value) for s in loaded.Scalars("train/images")] == [(e["step"], 4) for e in steps]
    assert [(s.step, s.value) for s in loaded.Scalars("train/images_per_s")] == \
        [(e["step"], pytest.approx(e["images_per_s"], rel=1e-6)) for e in steps]
    assert [s.value for s in loaded.Scalars("train/loss")] == [pytest.approx(e["loss"], rel=1e-6) for e in steps]
    # The health probe's readings per part of the model (step 1's probe), each under its part's name.
    health = next(e for e in events if e["type"] == "health")
    per_part = {f"health/parts/{name}": value for name, value in flatten(health["parts"], "/").items()
                if isinstance(value, (int, float)) and not isinstance(value, bool)}
    assert {name.split("/")[2] for name in per_part} == {"vision_tower", "projector", "language_model"}
    for name, value in per_part.items():
        assert [(s.step, s.value) for s in loaded.Scalars(name)] == [(1, pytest.approx(value, rel=1e-6))], name


# ---------------------------------------------------------------- the data event's image counts

def test_the_data_events_image_counts_reach_the_dashboard_and_the_console(tmp_path):
    import io

    from PIL import Image
    from test_ui_history import model_of

    from loratui.events.console import ConsoleSink

    Image.new("RGB", (56, 56), (0, 0, 200)).save(tmp_path / "blue.png")
    rows = [{"messages": [{"role": "user", "content": "<image>What colour?"},
                          {"role": "assistant", "content": "blue"}], "images": [image]}
            for image in ("blue.png", "gone.png", "blue.png", "blue.png")]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = make_config(tmp_path, VLM + out(tmp_path, "counts") + [
        f"data.path=\"{data}\"", "data.on_bad_row=\"skip\"", "train.precision=fp32", "train.max_steps=1",
        "train.batch_size=3"])
    code, events, run_dir = train_in_process(config)
    assert code == 0, events[-1]
    data_event = next(e for e in events if e["type"] == "data")
    assert (data_event["rows_read"], data_event["examples"], data_event["images"]) == (4, 3, 3)
    assert data_event["skipped"] == {"image not found": 1}
    expected = "3 examples from 4 rows; 1 bad rows skipped (1 image not found); 3 images"
    assert data_event["summary"] == expected
    assert f"data: {expected}" in [entry.text for entry in model_of(run_dir.events).entries]
    printed = io.StringIO()
    ConsoleSink(log_every=1, max_steps=1, stream=printed).write(data_event)
    assert expected in printed.getvalue()


# ---------------------------------------------------------------- two processes

@pytest.mark.slow
@pytest.mark.skipif(not FULL, reason="runs under `make torture` (LORATUI_TORTURE=full): two ranks take about 40 s")
def test_two_processes_train_the_tiny_vlm_into_one_log(tmp_path):
    """`accelerate launch` (two CPU ranks, gloo) on the tiny VLM: each rank decodes its own share of the
    pictures; the step's tokens and images are both ranks' together."""
    from test_multiprocess import ENV, LAUNCH, assert_every_rank_saved, assert_one_consistent_log

    from loratui.config import load_config
    from loratui.events.jsonl import read_events
    from loratui.model.builtin_vlm import builtin_vlm_dir
    from loratui.model.families import family_for
    from loratui.run_dir import RunDir

    path = tmp_path / "vlm.toml"
    path.write_text('[run]\nname = "two"\noutput_dir = "runs"\n[model]\nname_or_path = "builtin:tiny-vlm"\n'
                    '[data]\npath = "builtin:tiny-shapes"\n[train]\nprecision = "fp32"\nmax_steps = 3\n'
                    'batch_size = 4\nwarmup_steps = 0\n[checkpoint]\nevery_steps = 2\n[monitor]\nprobe_every = 1000\n'
                    'probe_first_steps = 0\n')
    result = subprocess.run(LAUNCH + ["-m", "loratui", "run", str(path), "--headless"], capture_output=True,
                            text=True, env=ENV, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = RunDir(tmp_path / "runs" / "two")
    events = read_events(run_dir.events)
    assert_one_consistent_log(events)
    steps = steps_of(events)
    assert [s["step"] for s in steps] == [1, 2, 3] and all(math.isfinite(s["loss"]) for s in steps)

    # Each rank's first batch, rebuilt here from the same data shards: the step counts both.
    config = load_config(path)
    model_path = str(builtin_vlm_dir(config.model.name_or_path))
    family = family_for(model_path)
    processor = family.load_processor(model_path, trust_remote_code=False)
    examples, _ = family.build_examples(config.data, processor)
    tokens = images = 0
    for rank in (0, 1):
        stream = family.batches(examples, processor, batch_size=4, seed=config.train.seed,
                                shuffle=config.data.shuffle, rank=rank, world_size=2)
        batch = stream.next_batch()
        tokens += family.count_tokens(batch)
        images += stream.take_images_served()
        stream.close()
    assert images == 8 and steps[0]["tokens"] == tokens
    assert [s["images"] for s in steps] == [8, 8, 8]
    assert_every_rank_saved(run_dir.checkpoints / "step-000003")
    from safetensors.torch import load_file

    saved = load_file(str(run_dir.adapter / "adapter_model.safetensors"))
    assert any("multi_modal_projector" in name for name in saved) and any("lora_A" in name for name in saved)


# ---------------------------------------------------------------- the Hugging Face callback

CPM_STEPS, CPM_STOP = 6, 4


def minicpmv_standin_script(tmp_path):
    """The stand-in with MiniCPM-V's own batch (per row, lists of pictures, patch grids and image bounds) and its
    script's LoRA (the language model's attention projections, the resampler trained in full); the loss's
    forward is CPMTrainer's, model.base_model(data=inputs)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    from fakes.minicpmv_standin import build_standin
    from loratui.config.schema import DataSection
    from loratui.data.images import load_rgb
    from loratui.model.families.minicpmv import MiniCPMVFamily

    model_dir = build_standin(tmp_path / "MiniCPM-V-standin")
    family = MiniCPMVFamily()
    processor = family.load_processor(str(model_dir), trust_remote_code=True)
    examples, _ = family.build_examples(DataSection(path="builtin:tiny-shapes", format="minicpmv"), processor)

    def collate(rows) -> dict:
        batch = family.collate(processor, rows, [load_rgb(p) for row in rows for p in row.images])
        grouped = {name: [[] for _ in rows] for name in ("pixel_values", "tgt_sizes", "image_bound")}
        patch = batch["pixel_values"].shape[2]
        for index, row in enumerate(batch.pop("image_rows").tolist()):
            height, width = batch["tgt_sizes"][index].tolist()
            # Each picture (an image or one of its slices) as MiniCPM-V's processor gives it: without padding.
            grouped["pixel_values"][row].append(batch["pixel_values"][index, :, :, :height * width * patch])
            grouped["tgt_sizes"][row].append(batch["tgt_sizes"][index])
            grouped["image_bound"][row].append(batch["image_bound"][index])
        for name in ("tgt_sizes", "image_bound"):
            grouped[name] = [torch.stack(values) for values in grouped[name]]
        position_ids = torch.arange(batch["input_ids"].shape[1]).expand(len(rows), -1)
        return {**batch, **grouped, "position_ids": position_ids}

    torch.manual_seed(0)
    model = get_peft_model(AutoModel.from_pretrained(str(model_dir), trust_remote_code=True),
                           LoraConfig(r=8, lora_alpha=16, target_modules=r"llm\..*\.(q_proj|k_proj|v_proj|o_proj)",
                                      modules_to_save=["resampler"]))
    return model, examples, collate, lambda peft_model, inputs: peft_model.base_model(data=inputs, use_cache=False)


def tiny_vlm_script(tmp_path):
    """The built-in LLaVA-layout VLM with transformers' own batch (pixel_values stacked); the loss's forward is
    model(**inputs) without labels."""
    from peft import LoraConfig, get_peft_model

    from loratui.config.schema import DataSection
    from loratui.data.images import load_rgb
    from loratui.model.builtin_vlm import builtin_vlm_dir
    from loratui.model.families.llava import LlavaFamily

    path = str(builtin_vlm_dir("builtin:tiny-vlm"))
    family = LlavaFamily()
    processor = family.load_processor(path, trust_remote_code=False)
    examples, _ = family.build_examples(DataSection(path="builtin:tiny-shapes"), processor)
    torch.manual_seed(0)
    model = get_peft_model(family.load_model(path, torch.float32, trust_remote_code=False),
                           LoraConfig(r=8, lora_alpha=16,
                                      target_modules=r"model\.language_model\..*\.(q_proj|k_proj|v_proj|o_proj)",
                                      modules_to_save=["multi_modal_projector"]))
    return (model, examples,
            lambda rows: family.collate(processor, rows, [load_rgb(p) for row in rows for p in row.images]),
            lambda peft_model, inputs: peft_model(**inputs, use_cache=False))


@pytest.mark.parametrize("script", [minicpmv_standin_script, tiny_vlm_script], ids=["data-forward", "kwargs-forward"])
def test_the_callback_watches_a_cpmtrainer_style_subclass(tmp_path, script):
    """MiniCPM-V's own fine-tuning script runs a Trainer subclass (finetune/trainer.py's CPMTrainer) whose
    training_step and compute_loss are its own: it calls the model itself (its data= forward, or model(**inputs))
    and computes the loss from the logits. The callback, added as the docs say, sees that raw loss, the tokens,
    the health probes and the stop."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from loratui.control import send_command
    from loratui.events.jsonl import read_events
    from loratui.integrations.transformers import LoraTuiCallback
    from loratui.run_dir import RunDir

    model, examples, collate, forward = script(tmp_path)
    run_dir = RunDir(tmp_path / "runs" / "cpm")

    class StopAt(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step + 1 == CPM_STOP:
                send_command(run_dir.control, "stop")

    seen = []  # (loss, tokens) of each step, as the subclass computed them

    class CPMStyleTrainer(Trainer):
        """As CPMTrainer: labels popped, the model called here, the loss computed from its logits."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            outputs = forward(self.model, inputs)
            logits = outputs.logits[:, :-1].float()
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
            seen.append((float(loss.detach()), int(inputs["attention_mask"].sum())))
            return (loss, outputs) if return_outputs else loss

        def training_step(self, model, inputs, num_items_in_batch=None):
            model.train()
            inputs = self._prepare_inputs(inputs)
            with self.compute_loss_context_manager():
                loss = self.compute_loss(model, inputs)
            self.accelerator.backward(loss)
            return loss.detach() / self.args.gradient_accumulation_steps

    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=CPM_STEPS, per_device_train_batch_size=4,
                             learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
                             disable_tqdm=True, remove_unused_columns=False, seed=0)
    trainer = CPMStyleTrainer(model=model, args=args, train_dataset=examples, data_collator=collate,
                              callbacks=[LoraTuiCallback(run_dir.root, probe_every=2), StopAt()])
    trainer.train()

    events = read_events(run_dir.events)
    started = events[0]
    assert started["type"] == "run_started" and started["trainer"] == "CPMStyleTrainer"
    assert started["trainable_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    steps = steps_of(events)
    assert [s["step"] for s in steps] == list(range(1, CPM_STOP + 1))
    assert [(s["loss"], s["tokens"]) for s in steps] == [(pytest.approx(loss, rel=1e-6), tokens)
                                                          for loss, tokens in seen]
    logged = {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}
    assert [s["loss"] for s in steps] == [pytest.approx(logged[s["step"]], rel=1e-5) for s in steps]
    health = [e for e in events if e["type"] == "health"]
    assert [h["step"] for h in health] == [2, 4] and all(h["checks"]["nonfinite_grads"]["value"] == 0 for h in health)
    saved = [(e["step"], e["reason"]) for e in events if e["type"] == "checkpoint"]
    assert saved == [(CPM_STOP, "stop")] and events[-1]["type"] == "run_finished"
    assert trainer.state.global_step == CPM_STOP
