"""MiniCPM-V-2_6's image slicing: the grid, the pictures, the placeholder text, image_bound, and training on it.

The slicing settings are MiniCPM-V-2_6's own (scale_resolution 448, patch 14,
max_slice_nums 9, 64 queries) where only the arithmetic is checked, and the
stand-in's (tests/fakes/minicpmv_standin: 28 px, 4 queries, max_slice_nums 3) where
a model reads the batch. The expected grids and sizes are worked out by hand from
MiniCPM-V's processor's rules (see loratui/model/families/minicpmv_slices.py).
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
from PIL import Image

from helpers import StepHook, assert_exact_resume, command_at, make_config, steps_of, train_in_process
from loratui.config.schema import DataSection
from loratui.errors import UserInputError
from loratui.model.families.minicpmv import MiniCPMVFamily
from loratui.model.families.minicpmv_slices import image_text, read_slice_settings, slice_grid, slice_image, slice_sizes

# MiniCPM-V-2_6's config.json and preprocessor_config.json, the keys slicing reads.
CONFIG_2_6 = {"model_type": "minicpmv", "query_num": 64, "patch_size": 14, "image_size": 448, "slice_mode": True,
              "slice_config": {"max_slice_nums": 9, "patch_size": 14, "scale_resolution": 448},
              "use_image_id": True, "version": 2.6}
PREPROCESSOR_2_6 = {"max_slice_nums": 9, "scale_resolution": 448, "patch_size": 14, "use_image_id": True,
                    "image_feature_size": 64, "slice_mode": True, "norm_mean": [0.5] * 3, "norm_std": [0.5] * 3,
                    "version": 2.6}
Q4 = "<unk>" * 4  # the stand-in's query tokens for one picture


def settings_from(tmp_path, config: dict, preprocessor: dict | None):
    from transformers import PretrainedConfig

    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(config))
    if preprocessor is not None:
        (tmp_path / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return read_slice_settings(str(tmp_path), PretrainedConfig(**config))


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    from fakes.minicpmv_standin import build_standin

    path = build_standin(tmp_path_factory.mktemp("minicpmv") / "MiniCPM-V-standin")
    family = MiniCPMVFamily()
    return path, family, family.load_processor(str(path), trust_remote_code=True)


def test_a_large_image_gets_the_grid_and_sizes_of_minicpmv_2_6(tmp_path):
    settings = settings_from(tmp_path, CONFIG_2_6, PREPROCESSOR_2_6)
    assert (settings.scale_resolution, settings.patch_size, settings.max_slice_nums, settings.query_num) == \
        (448, 14, 9, 64)
    # 1344 x 896 is 6 areas of 448²: 3 columns x 2 rows match its 3:2 exactly. The source keeps 3:2 at about
    # 448² pixels (int(448 / sqrt 1.5) = 365 high, 547 wide, rounded to 14 px patches); each slice is 448².
    assert slice_grid(1344, 896, settings) == (3, 2)
    assert slice_sizes(1344, 896, settings) == [(546, 364)] + [(448, 448)] * 6
    assert MiniCPMVFamily().image_tokens(_processor(settings), 1344, 896) == 7 * 64
    # 1344² is 9 areas, the most allowed: 3 x 3. A 2:1 picture of 2.5 areas: 2 x 1 (and 1 x 2 standing up).
    assert slice_grid(1344, 1344, settings) == (3, 3) and len(slice_sizes(1344, 1344, settings)) == 10
    assert slice_grid(1000, 500, settings) == (2, 1) and slice_sizes(1000, 500, settings)[0] == (630, 322)
    assert slice_grid(500, 1000, settings) == (1, 2)
    # At most one area: not sliced, resized (up if need be) to about 448² keeping its shape.
    assert slice_grid(448, 448, settings) is None and slice_sizes(448, 448, settings) == [(448, 448)]
    assert slice_sizes(300, 200, settings) == [(546, 364)]


def test_the_processor_s_settings_win_over_config_json_and_slice_mode_off_sees_pictures_whole(tmp_path):
    capped = settings_from(tmp_path / "capped", CONFIG_2_6, {**PREPROCESSOR_2_6, "max_slice_nums": 4})
    assert slice_grid(1344, 1344, capped) == (2, 2)  # 9 areas wanted, 4 allowed: the squarest grid of 3 to 4
    only_config = settings_from(tmp_path / "config-only", CONFIG_2_6, None)
    assert only_config == settings_from(tmp_path / "both", CONFIG_2_6, PREPROCESSOR_2_6)
    whole = settings_from(tmp_path / "whole", {**CONFIG_2_6, "slice_mode": False},
                          {**PREPROCESSOR_2_6, "slice_mode": False})
    assert slice_grid(1344, 896, whole) is None and slice_sizes(1344, 896, whole) == [(546, 364)]
    assert image_text(1344, 896, 0, whole) == "<image_id>0</image_id><image>" + "<unk>" * 64 + "</image>"


def test_slices_are_the_picture_s_cells_row_by_row(tmp_path):
    settings = settings_from(tmp_path, CONFIG_2_6, PREPROCESSOR_2_6)
    colours = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0)]  # top left, top right, bottom left, right
    picture = Image.new("RGB", (896, 896))
    for index, colour in enumerate(colours):
        left, top = 448 * (index % 2), 448 * (index // 2)
        picture.paste(colour, (left, top, left + 448, top + 448))
    pictures = slice_image(picture, settings)
    assert [p.size for p in pictures] == [(448, 448)] * 5  # 4 areas: 2 x 2, and the whole shrunk to one area
    assert [p.getpixel((224, 224)) for p in pictures[1:]] == colours
    assert pictures[0].getpixel((112, 112)) == colours[0] and pictures[0].getpixel((336, 336)) == colours[3]


def test_versions_before_2_6_wrap_the_grid_in_one_slice_tag(tmp_path):
    config = {key: value for key, value in CONFIG_2_6.items() if key not in ("version", "use_image_id")}
    settings = settings_from(tmp_path, {**config, "query_num": 4, "slice_config": {
        "max_slice_nums": 9, "patch_size": 14, "scale_resolution": 28}}, None)
    # 56 x 28 is 2 areas of 28²: 2 columns, one row, the whole in one <slice> tag, each slice an <image>, no ids.
    assert image_text(56, 28, 3, settings) == \
        f"<image>{Q4}</image><slice><image>{Q4}</image><image>{Q4}</image></slice>"


def _processor(settings):
    from loratui.model.families.vision import VisionProcessor

    return VisionProcessor(None, settings, None)


def _rows_with_images(tmp_path):
    """Row 0: a 56 px picture (sliced 1 x 2) then a 28 px one (whole); row 1: an 84 x 28 picture (sliced 3 x 1)."""
    for name, size in (("square.png", (56, 56)), ("small.png", (28, 28)), ("wide.png", (84, 28))):
        Image.new("RGB", size, (30, 140, 200)).save(tmp_path / name)
    rows = [{"messages": [{"role": "user", "content": "<image> and <image>: What colour?"},
                          {"role": "assistant", "content": "blue"}], "images": ["square.png", "small.png"]},
            {"messages": [{"role": "user", "content": "<image>What colour?"}, {"role": "assistant", "content": "blue"}],
             "images": ["wide.png"]}]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return DataSection(path=str(path), format="messages")


def test_each_image_is_written_with_its_id_source_and_slices_and_never_learned(standin, tmp_path):
    _, family, processor = standin
    examples, report = family.build_examples(_rows_with_images(tmp_path), processor)
    assert report.images == 3
    tokenizer = processor.tokenizer
    first, second = (tokenizer.decode(example.input_ids) for example in examples)
    # The stand-in slices a 56 px picture into 1 column x 2 rows: a newline between the rows.
    assert (f"<image_id>0</image_id><image>{Q4}</image><slice>{Q4}</slice>\n<slice>{Q4}</slice>"
            f" and <image_id>1</image_id><image>{Q4}</image>:") in first
    # Ids count each row's images from 0; a 3 x 1 grid is one line.
    assert f"<image_id>0</image_id><image>{Q4}</image><slice>{Q4}</slice><slice>{Q4}</slice><slice>{Q4}</slice>" \
        "What colour?" in second
    image_ids = set(tokenizer.convert_tokens_to_ids(["<image>", "</image>", "<unk>", "<slice>", "</slice>",
                                                     "<image_id>", "</image_id>"]))
    for example in examples:
        learned = [token for token, label in zip(example.input_ids, example.labels) if label != -100]
        assert tokenizer.decode(learned).strip().startswith("blue") and not image_ids & set(learned)


def test_image_bound_tgt_sizes_and_rows_line_up_with_the_query_tokens(standin, tmp_path):
    import torch

    path, family, processor = standin
    examples, _ = family.build_examples(_rows_with_images(tmp_path), processor)
    stream = family.batches(examples, processor, batch_size=2, seed=0, shuffle=False, rank=0, world_size=1)
    try:
        batch = stream.next_batch()
    finally:
        stream.close()
    # Row 0: square (source 2 x 2 patches, 2 slices of 1 x 3), small (whole, 2 x 2); row 1: wide (source 1 x 3,
    # 3 slices of 2 x 2). Pixels padded to the longest picture (4 patches of 14 x 14).
    assert batch["tgt_sizes"].tolist() == [[2, 2], [1, 3], [1, 3], [2, 2], [1, 3], [2, 2], [2, 2], [2, 2]]
    assert batch["image_rows"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert tuple(batch["pixel_values"].shape) == (8, 3, 14, 4 * 14)
    tokenizer = processor.tokenizer
    opening = set(tokenizer.convert_tokens_to_ids(["<image>", "<slice>"]))
    closing = set(tokenizer.convert_tokens_to_ids(["</image>", "</slice>"]))
    query = tokenizer.convert_tokens_to_ids("<unk>")
    for row, (start, end) in zip(batch["image_rows"].tolist(), batch["image_bound"].tolist()):
        ids = batch["input_ids"][row].tolist()
        assert end - start == 4 and set(ids[start:end]) == {query}
        assert ids[start - 1] in opening and ids[end] in closing
        assert set(batch["labels"][row, start:end].tolist()) == {-100}
    assert sum(ids.count(query) for ids in batch["input_ids"].tolist()) == 8 * 4  # every query token is bound
    # The stand-in checks what the real model needs (each picture's pixels its grid, each span query_num tokens)
    # and writes the resampler's features into the spans.
    model = family.load_model(str(path), torch.float32, trust_remote_code=True)
    with torch.no_grad():
        loss = model(**batch).loss
    assert math.isfinite(loss.item())
    other = dict(batch, pixel_values=-batch["pixel_values"])
    with torch.no_grad():
        assert model(**other).loss.item() != loss.item()  # the pictures reach the loss


def test_missing_image_tokens_or_settings_are_named(standin, tmp_path):
    from loratui.model.builtin_vlm import train_vlm_tokenizer

    path, family, _ = standin
    no_slice_tokens = shutil.copytree(path, tmp_path / "no-slice-tokens")
    train_vlm_tokenizer(["<image>", "</image>", "<unk>"]).save_pretrained(no_slice_tokens)
    with pytest.raises(UserInputError) as caught:
        family.load_processor(str(no_slice_tokens), trust_remote_code=True)
    assert "model.name_or_path" in caught.value.render() and "<slice>, </slice>, <image_id>" in caught.value.render()
    bare = {key: value for key, value in CONFIG_2_6.items() if key not in ("slice_config", "image_size")}
    with pytest.raises(UserInputError) as caught:
        settings_from(tmp_path / "no-settings", bare, None)
    assert "model.name_or_path" in caught.value.render()
    assert "no scale_resolution in preprocessor_config.json or config.json" in caught.value.render()
    with pytest.raises(UserInputError) as caught:
        settings_from(tmp_path / "odd-version", {**CONFIG_2_6, "version": "2.6-beta"}, None)
    assert "version is '2.6-beta', not a number" in caught.value.render()


def test_the_standin_trains_and_resumes_exactly_with_slicing(standin, tmp_path):
    path, _, _ = standin
    base = [f"model.name_or_path=\"{path}\"", "model.trust_remote_code=true", "data.path=\"builtin:tiny-shapes\"",
            "data.format=\"minicpmv\"", "train.precision=fp32", "train.batch_size=4", "train.warmup_steps=1",
            "train.max_steps=4", "checkpoint.every_steps=2", "monitor.probe_every=1000",
            "monitor.probe_first_steps=0"]

    def out(name):
        return [f"run.output_dir=\"{tmp_path / 'runs'}\"", f"run.name={name}"]

    code, full_events, full_dir = train_in_process(make_config(tmp_path, base + out("full")))
    assert code == 0, full_events[-1]
    assert all(math.isfinite(s["loss"]) and s["images"] == 4 for s in steps_of(full_events))
    part = make_config(tmp_path, base + out("part"))
    code, first, part_dir = train_in_process(part, monitor=StepHook({2: command_at("stop")}))
    assert code == 0 and max(s["step"] for s in steps_of(first)) == 2
    code, events, _ = train_in_process(part, resume=True)
    assert code == 0, events[-1]
    final = assert_exact_resume(full_events, full_dir, events, part_dir, [3, 4])
    assert any("llm" in k and "lora_A" in k for k in final) and any("resampler" in k for k in final)
