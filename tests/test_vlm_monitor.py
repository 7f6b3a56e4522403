"""The monitor across the whole vision-language model: vision tower, projector and language model.

Real runs of the built-in tiny VLMs (LLaVA's layout and Qwen2-VL's, where every
image's patches are concatenated) with the real monitor and a probe on step 1:
each part's headroom, underflow, fidelity and stale-update figures name a module
of that part that exists in the model; a vision tower kept in fp32 under fp16 is
measured but not judged against 65504; the dashboard's health panel shows one row
per part for a VLM run and none for a text run.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import make_config, steps_of
from test_monitor_support import train_monitored
from test_ui_support import caught_up, run_async, screen_text

from loratui.monitor.activations import ActivationPeaks
from loratui.monitor.parts import PARTS, image_tokens_per_row

# Where each family's parts live (the first matching prefix wins: Qwen2-VL's merger sits inside its tower).
PREFIXES = {
    "builtin:tiny-vlm": {"vision_tower": "model.vision_tower.", "projector": "model.multi_modal_projector.",
                         "language_model": "model.language_model."},
    "builtin:tiny-qwen2-vl": {"projector": "model.visual.merger.", "vision_tower": "model.visual.",
                              "language_model": "model.language_model."},
}
# Every part trains (LoRA on the tower too), so every part has gradients to compare and updates to check.
PROBED = ["data.path=\"builtin:tiny-shapes\"", "train.batch_size=4", "train.max_steps=1", "train.warmup_steps=0",
          # fp16: a scale step 1 keeps (at 2^16 the tiny VLM's first gradients overflow: a calibration skip, no update)
          "amp.init_scale=1024.0",
          "vision.tower=\"lora\"", "monitor.probe_first_steps=1", "monitor.probe_every=1000"]


def part_of(model: str, module: str) -> str:
    return next(part for part, prefix in PREFIXES[model].items() if module.startswith(prefix))


def base_modules(model: str) -> set[str]:
    from loratui.model.builtin_vlm import builtin_vlm_dir
    from loratui.model.families import family_for

    path = str(builtin_vlm_dir(model))
    return {name for name, _ in family_for(path).load_model(path, torch.float32, trust_remote_code=False)
            .named_modules()}


@pytest.fixture(scope="module")
def probed_runs(tmp_path_factory):
    """One probed step per (model, precision), trained once for the module's tests."""
    runs = {}

    def run(model: str, precision: str, *extra: str):
        key = (model, precision, extra)
        if key not in runs:
            tmp_path = tmp_path_factory.mktemp("vlm-monitor")
            config = make_config(tmp_path, PROBED + [f"model.name_or_path=\"{model}\"", f"train.precision={precision}",
                                                     f"run.output_dir=\"{tmp_path / 'runs'}\"", "run.name=probed",
                                                     *extra])
            code, events, run_dir = train_monitored(config)
            assert code == 0, events[-1]
            runs[key] = events, run_dir
        return runs[key]

    return run


@pytest.mark.parametrize("model, precision", [("builtin:tiny-vlm", "fp16"), ("builtin:tiny-qwen2-vl", "fp16"),
                                              ("builtin:tiny-qwen2-vl", "bf16")])
def test_every_part_is_probed_and_named(probed_runs, model, precision):
    events, _ = probed_runs(model, precision)
    health = next(e for e in events if e["type"] == "health")
    parts = health["parts"]
    assert set(parts) == set(PARTS)
    modules = base_modules(model)
    for part, figures in parts.items():
        assert figures["precision"] == precision
        readings = {"fp16_headroom": figures["fp16_headroom"], "fidelity": figures["fidelity"],
                    "stale_update": figures["stale_update"]}
        if precision == "fp16":
            readings["underflow"] = figures["underflow"]
        else:  # bf16 has fp32's range: nothing underflows that fp32 keeps
            assert figures["underflow"]["status"] == "n/a" and figures["underflow"]["value"] is None
        for check, reading in readings.items():
            module = reading["module"]
            # A real module of this part, by the name it has in the base model.
            assert module in modules and part_of(model, module) == part, (part, check, module)
            assert reading["value"] is not None and math.isfinite(reading["value"]), (part, check, reading)
        assert 0 < figures["fp16_headroom"]["value"]
        assert -1 <= figures["fidelity"]["value"] <= 1 and 0 <= figures["stale_update"]["value"] <= 1
    # The whole-model checks still name one module, with its part.
    headroom = health["checks"]["fp16_headroom"]
    assert headroom["part"] == part_of(model, headroom["module"]) and headroom["rows"] == 4


@pytest.mark.parametrize("model", ["builtin:tiny-vlm", "builtin:tiny-qwen2-vl"])
def test_image_items_are_read_for_their_own_rows(model):
    """A batch's vision-tower and projector values (stacked images in LLaVA, concatenated patches in Qwen2-VL) are
    attributed to the row whose picture made them: each row's peak is the peak of that row run alone."""
    from loratui.config.schema import DataSection
    from loratui.model.builtin_vlm import builtin_vlm_dir
    from loratui.model.families import family_for

    path = str(builtin_vlm_dir(model))
    family = family_for(path)
    processor = family.load_processor(path, trust_remote_code=False)
    examples, _ = family.build_examples(DataSection(path="builtin:tiny-shapes"), processor)
    network = family.load_model(path, torch.float32, trust_remote_code=False).eval()
    recorder = ActivationPeaks(network, part_of=family.part_of)

    def row_peaks(rows: int) -> list[dict[str, list[float]]]:
        stream = family.batches(examples[:4], processor, batch_size=rows, seed=0, shuffle=False, rank=0,
                                world_size=1)
        found = []
        with torch.no_grad():
            for _ in range(4 // rows):
                batch = stream.next_batch()
                with recorder.record(batch["input_ids"].shape[0], image_tokens_per_row(family, processor, batch)):
                    network(**batch)
                found.append(recorder.peaks().part_row_peaks)
        stream.close()
        return found

    together = row_peaks(4)[0]
    alone = row_peaks(1)
    for part in ("vision_tower", "projector"):
        assert len(together[part]) == 4
        expected = [peaks[part][0] for peaks in alone]
        assert len(set(expected)) == 4  # four different pictures: a row mix-up would show
        assert together[part] == pytest.approx(expected, rel=1e-4), part


def test_a_vision_tower_kept_in_fp32_is_measured_not_judged_against_fp16(probed_runs):
    """builtin:tiny-vlm-outliers in fp16 with [vision] tower_fp32: the tower's outlier units pass 65504 in the fp32
    recomputation, but the tower computes in fp32, so no overflow alert names it; its readings say fp32."""
    events, _ = probed_runs("builtin:tiny-vlm-outliers", "fp16", "vision.tower_fp32=true")
    assert all(math.isfinite(s["loss"]) for s in steps_of(events))
    health = next(e for e in events if e["type"] == "health")
    tower = health["parts"]["vision_tower"]
    assert tower["precision"] == "fp32"
    assert tower["fp16_headroom"]["module"].startswith("model.vision_tower.encoder.layers.0.mlp.")  # the outlier units
    assert tower["fp16_headroom"]["peak"] > 65504 and tower["fp16_headroom"]["status"] == "n/a"  # measured
    assert tower["underflow"]["status"] == "n/a"  # fp32 gradients are never flushed to zero
    assert health["parts"]["language_model"]["precision"] == health["parts"]["projector"]["precision"] == "fp16"
    headroom = health["checks"]["fp16_headroom"]
    assert headroom["part"] != "vision_tower" and headroom["largest_peak"] < 65504
    assert not any(e["type"] == "alert" and "vision_tower" in str(e.get("evidence")) for e in events)
    assert not any(e["type"] == "alert" and e["kind"] == "overflow" for e in events)


@run_async
async def test_the_health_panel_has_one_row_per_part_for_a_vlm_run(probed_runs):
    from loratui.ui.app import DashboardApp

    events, run_dir = probed_runs("builtin:tiny-vlm", "fp16")
    parts = next(e for e in events if e["type"] == "health")["parts"]
    app = DashboardApp(run_dir.root)
    async with app.run_test(size=(200, 60)) as pilot:
        await caught_up(app, pilot)
        await pilot.pause()
        shown = screen_text(app)
        await pilot.press("h")  # every check in full: the parts with their modules' whole names
        await pilot.pause()
        details = screen_text(app)
    for part, label in (("vision_tower", "vision tower"), ("projector", "projector"),
                        ("language_model", "language model")):
        line = next((line for line in shown.splitlines() if f"│ {label} " in line), None)
        assert line is not None, f"no {label} row in\n{shown}"
        module = parts[part]["fp16_headroom"]["module"]
        assert "fp16 · peak " in line and module.split(".")[-1] in line, line  # the part's precision, its peak
        assert module in details, f"{module} not in\n{details}"


@run_async
async def test_a_text_run_has_no_part_rows(tmp_path):
    from loratui.ui.app import DashboardApp

    config = make_config(tmp_path, ["train.precision=bf16", "train.max_steps=1", "train.batch_size=2",
                                    "monitor.probe_first_steps=1", f"run.output_dir=\"{tmp_path / 'runs'}\"",
                                    "run.name=text"])
    code, events, run_dir = train_monitored(config)
    assert code == 0, events[-1]
    health = next(e for e in events if e["type"] == "health")
    assert "parts" not in health
    app = DashboardApp(run_dir.root)
    async with app.run_test(size=(200, 60)) as pilot:
        await caught_up(app, pilot)
        await pilot.pause()
        shown = screen_text(app)
    assert "fp16 headroom" in shown and "language model" not in shown and "vision tower" not in shown


def test_a_parameter_reads_as_the_module_it_belongs_to():
    from loratui.monitor.activations import parameter_module

    assert parameter_module("base_model.model.model.multi_modal_projector.modules_to_save.default.linear_1.weight") \
        == "model.multi_modal_projector.linear_1"  # a fully trained projector: peft's copy, named as in the model
    assert parameter_module("base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight") \
        == "model.language_model.layers.0.self_attn.q_proj"


def test_gradients_of_a_part_kept_in_fp32_are_not_underflow():
    """The same tiny gradients flush in fp16 but not in a part that computes in fp32 (tower_fp32)."""
    from loratui.monitor.gradients import compare_gradients

    reference = [torch.full((8,), 1e-7), torch.full((8,), 1e-2)]
    run = [r.clone() for r in reference]  # unscaled (scale 1): 1e-7 is below fp16's smallest normal
    names = ["model.vision_tower.fc1", "model.language_model.q_proj"]
    part = {"model.vision_tower.fc1": "vision_tower", "model.language_model.q_proj": "language_model"}.get
    plain = compare_gradients(run, reference, names, scale=1.0, accum=1, count_underflow=True, part_of=part)
    assert plain.underflow_share == 0.5 and plain.parts["vision_tower"].underflow_share == 1.0
    kept = compare_gradients(run, reference, names, scale=1.0, accum=1, count_underflow=True, part_of=part,
                             fp32_parts={"vision_tower"})
    assert kept.underflow_share == 0.0 and kept.compared == 8
    assert kept.parts["vision_tower"].underflow_share is None and kept.parts["language_model"].underflow_share == 0.0
    assert kept.parts["vision_tower"].cosine == pytest.approx(1.0)  # fidelity is still compared


def test_the_minicpmv_standin_is_probed_in_every_part(tmp_path):
    """The fp32 recomputation through MiniCPM-V's own forward (model(data={...}), per-row pixel lists), on the
    test stand-in of its remote code: every part of vpm / resampler / llm is read."""
    from fakes.minicpmv_standin import build_standin

    model_dir = build_standin(tmp_path / "MiniCPM-V-standin")
    config = make_config(tmp_path, PROBED + [f"model.name_or_path=\"{model_dir}\"", "model.trust_remote_code=true",
                                             "data.format=\"minicpmv\"", "train.precision=fp16",
                                             f"run.output_dir=\"{tmp_path / 'runs'}\"", "run.name=standin"])
    code, events, _ = train_monitored(config)
    assert code == 0, events[-1]
    parts = next(e for e in events if e["type"] == "health")["parts"]
    for part, prefix in (("vision_tower", "model.vpm."), ("projector", "model.resampler."),
                         ("language_model", "model.llm.")):
        for check in ("fp16_headroom", "underflow", "fidelity", "stale_update"):
            reading = parts[part][check]
            assert reading["module"].startswith(prefix) and reading["value"] is not None, (part, check, reading)
