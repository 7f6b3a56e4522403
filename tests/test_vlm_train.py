"""The real trainer on the built-in tiny VLMs: every precision, learning to look, exact resume, bad images.

Everything is real: the LLaVA-layout (SigLIP + Llama) and Qwen2-VL-layout models
built offline, the tiny-shapes pictures, the GradScaler under fp16.
"""

from __future__ import annotations

import json
import math

import os

import pytest
import torch
from safetensors.torch import load_file

from helpers import StepHook, assert_exact_resume, command_at, make_config, steps_of, train_in_process

VLM = ["model.name_or_path=\"builtin:tiny-vlm\"", "data.path=\"builtin:tiny-shapes\"", "train.batch_size=8",
       "train.warmup_steps=2", "monitor.probe_every=1000", "monitor.probe_first_steps=0"]


def out(tmp_path, name: str) -> list[str]:
    return [f"run.output_dir=\"{tmp_path / 'runs'}\"", f"run.name={name}"]


def losses(events, attempt=None) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in steps_of(events, attempt)}


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_the_tiny_vlm_trains_in_each_precision(tmp_path, precision):
    config = make_config(tmp_path, VLM + out(tmp_path, precision) + [f"train.precision={precision}",
                                                                     "train.max_steps=4"])
    code, events, run_dir = train_in_process(config)
    assert code == 0, events[-1]
    started = next(e for e in events if e["type"] == "run_started")
    assert started["precision"] == precision and started["loss_scaling"] == (precision == "fp16")
    data = next(e for e in events if e["type"] == "data")
    assert data["images"] == data["examples"] == 1024
    steps = steps_of(events)
    assert len(steps) == 4 and all(math.isfinite(s["loss"]) for s in steps)
    assert all(s["images"] == 8 and s["images_per_s"] > 0 for s in steps)  # one picture a row
    if precision == "fp16":
        assert all(s["scale"] is not None for s in steps)
    saved = load_file(str(run_dir.adapter / "adapter_model.safetensors"))
    # LoRA on the language model, the projector trained in full (the defaults), the vision tower frozen.
    assert any("language_model" in name and "lora_A" in name for name in saved)
    assert any("multi_modal_projector" in name for name in saved)
    assert not any("vision_tower" in name for name in saved)


def test_what_trains_follows_the_vision_section(tmp_path):
    config = make_config(tmp_path, VLM + out(tmp_path, "parts") + [
        "train.precision=fp32", "train.max_steps=2", "vision.tower=\"lora\"", "vision.projector=\"frozen\""])
    code, events, run_dir = train_in_process(config)
    assert code == 0, events[-1]
    saved = load_file(str(run_dir.adapter / "adapter_model.safetensors"))
    assert any("vision_tower" in name and "lora_A" in name for name in saved)
    assert not any("multi_modal_projector" in name for name in saved)


def colour_accuracy(run_dir, data_path: str) -> float:
    """Accuracy on the colour questions of `data_path`, read from the trained adapter."""
    from peft import PeftModel

    from loratui.config.schema import DataSection
    from loratui.model.builtin_vlm import builtin_vlm_dir
    from loratui.model.families.llava import LlavaFamily

    family = LlavaFamily()
    path = str(builtin_vlm_dir("builtin:tiny-vlm"))
    processor = family.load_processor(path, trust_remote_code=False)
    examples, _ = family.build_examples(DataSection(path=data_path), processor)
    colours = [processor.tokenizer.convert_tokens_to_ids(processor.tokenizer.tokenize(c))[0]
               for c in ("red", "green", "blue", "yellow")]
    model = PeftModel.from_pretrained(family.load_model(path, torch.float32, trust_remote_code=False),
                                      str(run_dir.adapter)).eval()
    stream = family.batches(examples, processor, batch_size=50, seed=0, shuffle=False, rank=0, world_size=1)
    right = total = 0
    with torch.no_grad():
        for _ in range(stream.batches_per_epoch):
            batch = stream.next_batch()
            labels = batch.pop("labels")
            logits = model(**batch).logits
            for row in range(len(labels)):
                answer = int((labels[row] != -100).nonzero()[0])  # the first answer: the colour
                guess = colours[int(logits[row, answer - 1, colours].argmax())]
                right += guess == int(labels[row, answer])
                total += 1
    stream.close()
    return right / total


def learn(tmp_path, name: str, data_path: str, steps: int):
    """`loratui demo --scenario vlm-healthy` as shipped (precision auto, its learning rate and schedule), only
    max_steps and the data set changed; returns the step losses and the run directory."""
    from loratui.scenarios import demo_config

    config = demo_config("vlm-healthy", [f"run.output_dir=\"{tmp_path / 'runs'}\"", f"run.name={name}",
                                         f"train.max_steps={steps}", f"data.path=\"{data_path}\""])
    code, events, run_dir = train_in_process(config)
    assert code == 0, events[-1]
    return [s["loss"] for s in steps_of(events)], run_dir


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("LORATUI_TORTURE") != "full",
                    reason="runs under `make torture` (LORATUI_TORTURE=full); the default suite runs the 40-step test "
                           "below")
def test_the_tiny_vlm_learns_to_look(tmp_path):
    """200 steps of the vlm-healthy demo config: colour is read from the picture, and only from it."""
    seen, run_dir = learn(tmp_path, "look", "builtin:tiny-shapes", 200)
    # The base has never seen a picture with anything in it (builtin_vlm.pretrain): what it learns is to look.
    assert sum(seen[-10:]) <= 0.5 * sum(seen[:10]), (seen[:10], seen[-10:])
    assert colour_accuracy(run_dir, "builtin:tiny-shapes-heldout") >= 0.8
    _, blind_dir = learn(tmp_path, "blank", "builtin:tiny-shapes-blank", 200)
    # The same questions over a grey picture: four colours, nothing to see, about one answer in four.
    assert colour_accuracy(blind_dir, "builtin:tiny-shapes-heldout") <= 0.4


def test_the_tiny_vlm_starts_to_read_colours_within_40_steps(tmp_path):
    """The default suite's short version of the test above: held-out colour beats any image-blind model."""
    _, run_dir = learn(tmp_path, "look-short", "builtin:tiny-shapes", 40)
    assert colour_accuracy(run_dir, "builtin:tiny-shapes-heldout") >= 0.4  # blind: 0.25 at best, on average


@pytest.mark.parametrize("model", ["builtin:tiny-vlm", "builtin:tiny-qwen2-vl"])
def test_exact_resume_on_a_vlm_run(tmp_path, model):
    base = VLM + ["train.precision=fp32", "train.max_steps=6", "checkpoint.every_steps=2", "lora.dropout=0.1",
                  f"model.name_or_path=\"{model}\""]
    code, full_events, full_dir = train_in_process(make_config(tmp_path, base + out(tmp_path, "full")))
    assert code == 0, full_events[-1]
    part = make_config(tmp_path, base + out(tmp_path, "part"))
    code, first, part_dir = train_in_process(part, monitor=StepHook({3: command_at("stop")}))
    assert code == 0 and max(losses(first)) == 3
    code, events, _ = train_in_process(part, resume=True)
    assert code == 0, events[-1]
    assert_exact_resume(full_events, full_dir, events, part_dir, [4, 5, 6])


def test_a_bad_image_stops_the_run_before_training_with_its_place(tmp_path):
    from PIL import Image

    Image.new("RGB", (56, 56), (200, 0, 0)).save(tmp_path / "red.png")
    rows = [{"messages": [{"role": "user", "content": "<image>What colour?"},
                          {"role": "assistant", "content": "red"}], "images": [image]}
            for image in ("red.png", "red.png", "gone.png")]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = make_config(tmp_path, VLM + out(tmp_path, "bad") + [f"data.path=\"{data}\"", "train.max_steps=2"])
    code, events, _ = train_in_process(config)
    assert code == 2
    assert f"{data}:3" in events[-1]["error"] and "image not found: gone.png" in events[-1]["error"]
    assert not steps_of(events)
    config = make_config(tmp_path, VLM + out(tmp_path, "skip") + [f"data.path=\"{data}\"", "train.max_steps=2",
                                                                  "data.on_bad_row=\"skip\"", "train.batch_size=2"])
    code, events, _ = train_in_process(config)
    assert code == 0, events[-1]
    data_event = next(e for e in events if e["type"] == "data")
    assert data_event["skipped"] == {"image not found": 1} and data_event["images"] == 2


def test_health_readings_name_the_part_of_the_model(tmp_path):
    """The monitor's probes cover the whole VLM: the headroom reading names the vision tower's module and its part,
    in fp16 (where it overflows) and in bf16 (where the same activation is only measured)."""
    from test_monitor_support import train_monitored

    for precision in ("fp16", "bf16"):
        config = make_config(tmp_path, VLM + out(tmp_path, precision) + [
            "model.name_or_path=\"builtin:tiny-vlm-outliers\"", f"train.precision={precision}",
            "train.max_steps=1", "monitor.probe_first_steps=1", "train.batch_size=4"])
        code, events, _ = train_monitored(config)
        assert code == 0, events[-1]
        headroom = next(e for e in events if e["type"] == "health")["checks"]["fp16_headroom"]
        assert headroom["module"].startswith("model.vision_tower.") and headroom["part"] == "vision_tower"


def test_the_fp32_vision_tower_keeps_fp16_finite_on_the_outlier_tower(tmp_path):
    """[vision] tower_fp32: the tower's weights and arithmetic in fp32, the rest in fp16 with its loss scaler."""
    def fp16_losses(name: str, extra: list[str]) -> list[float]:
        config = make_config(tmp_path, VLM + out(tmp_path, name) + [
            "model.name_or_path=\"builtin:tiny-vlm-outliers\"", "train.precision=fp16", "train.max_steps=3",
            "train.batch_size=4", *extra])
        code, events, _ = train_in_process(config)
        assert code == 0, events[-1]
        return [float(s["loss"]) for s in steps_of(events)]  # "nan" as the log writes it

    assert not any(map(math.isfinite, fp16_losses("plain", [])))  # the tower overflows on every picture
    assert all(map(math.isfinite, fp16_losses("tower-fp32", ["vision.tower_fp32=true"])))


def test_the_per_row_diagnosis_replays_a_vlm_step_with_its_pictures(tmp_path):
    """The monitor's row-by-row replay (run precision and fp32) feeds the pictures too: fp16 fails on every row of
    the outlier tower and fp32 does not, with the vision tower's module named as where fp16's range ends."""
    from dataclasses import replace

    from helpers import ready_trainer
    from loratui.monitor.diagnosis import diagnose

    config = make_config(tmp_path, VLM + out(tmp_path, "rows") + [
        "model.name_or_path=\"builtin:tiny-vlm-outliers\"", "train.precision=fp16", "train.batch_size=4"])
    trainer = ready_trainer(config)
    try:
        found = diagnose(trainer, replace(trainer.stream.position), limit=65504.0)
    finally:
        trainer.cleanup()
    assert found.rows == 4 and len(found.failing) == 4 and not found.failing_in_fp32
    assert found.peak_module.module.startswith("model.vision_tower.")


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("LORATUI_TORTURE") != "full",
                    reason="runs under `make torture` (LORATUI_TORTURE=full); the default suite resumes the stand-in "
                           "with slicing in tests/test_vlm_minicpmv.py")
def test_the_minicpmv_standin_trains_and_resumes_exactly(tmp_path):
    """MiniCPM-V-2_6's interface (remote code, model(data={...}), vpm / resampler / llm) through a test stand-in
    (tests/fakes/minicpmv_standin), on the recipe's own data format."""
    from fakes.minicpmv_standin import build_standin

    model_dir = build_standin(tmp_path / "MiniCPM-V-standin")
    base = [f"model.name_or_path=\"{model_dir}\"", "model.trust_remote_code=true", "data.path=\"builtin:tiny-shapes\"",
            "data.format=\"minicpmv\"", "train.precision=fp32", "train.batch_size=4", "train.warmup_steps=1",
            "train.max_steps=6", "checkpoint.every_steps=2", "monitor.probe_every=1000",
            "monitor.probe_first_steps=0"]
    code, full_events, full_dir = train_in_process(make_config(tmp_path, base + out(tmp_path, "full")))
    assert code == 0, full_events[-1]
    assert all(math.isfinite(s["loss"]) and s["images"] == 4 for s in steps_of(full_events))
    part = make_config(tmp_path, base + out(tmp_path, "part"))
    code, first, part_dir = train_in_process(part, monitor=StepHook({3: command_at("stop")}))
    assert code == 0 and max(losses(first)) == 3
    code, events, _ = train_in_process(part, resume=True)
    assert code == 0, events[-1]
    final_full = assert_exact_resume(full_events, full_dir, events, part_dir, [4, 5, 6])
    assert any("llm" in k and "lora_A" in k for k in final_full) and any("resampler" in k for k in final_full)
    assert not any("vpm" in k for k in final_full)
