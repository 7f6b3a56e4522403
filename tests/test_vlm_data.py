"""Vision-language data: both row formats, every bad-image case, lazy decoding within a memory bound.

Rows are tokenized by the real LLaVA family with the built-in tiny VLM's tokenizer
and image processor (built offline once, cached like the text model).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from loratui.config.schema import DataSection
from loratui.data.builtin_shapes import shapes_dataset_path
from loratui.errors import UserInputError
from loratui.model.builtin_vlm import builtin_vlm_dir
from loratui.model.families.llava import LlavaFamily


@pytest.fixture(scope="module")
def llava():
    family = LlavaFamily()
    return family, family.load_processor(str(builtin_vlm_dir("builtin:tiny-vlm")), trust_remote_code=False)


def data_config(path, data_format="messages", **changes) -> DataSection:
    section = DataSection(path=str(path), format=data_format)
    for name, value in changes.items():
        setattr(section, name, value)
    return section


def picture(path: Path, size=(56, 56), colour=(200, 30, 30)) -> str:
    Image.new("RGB", size, colour).save(path)
    return path.name


def chat(first_user: str, answer: str = "red") -> list[dict]:
    return [{"role": "user", "content": first_user}, {"role": "assistant", "content": answer}]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_both_formats_of_the_builtin_data_give_the_same_examples(llava):
    family, processor = llava
    messages, report = family.build_examples(data_config("builtin:tiny-shapes"), processor)
    minicpmv, minicpmv_report = family.build_examples(data_config("builtin:tiny-shapes", "minicpmv"), processor)
    assert shapes_dataset_path("builtin:tiny-shapes", "minicpmv").suffix == ".json"  # the recipe's JSON list
    assert report.as_dict() == minicpmv_report.as_dict()
    assert report.images == report.examples == len(messages) > 1000
    assert [e.input_ids for e in messages] == [e.input_ids for e in minicpmv]
    assert [e.images for e in messages] == [e.images for e in minicpmv]
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    tokens_per_image = family.image_tokens(processor, 56, 56)
    assert tokens_per_image == 16  # a 56 px SigLIP picture in 14 px patches, every feature kept
    assert all(e.input_ids.count(image_id) == tokens_per_image for e in messages)
    # Only the answers are learned: the image tokens and the questions are masked out.
    first = messages[0]
    learned = processor.tokenizer.decode([t for t, label in zip(first.input_ids, first.labels) if label != -100])
    assert "What" not in learned and "<image>" not in learned and "<|assistant|>" not in learned


def test_images_are_placed_where_the_placeholders_are_or_before_the_first_user_turn(llava, tmp_path):
    family, processor = llava
    a, b = picture(tmp_path / "a.png"), picture(tmp_path / "b.png", colour=(0, 0, 200))
    rows = [{"messages": chat("What colour?"), "images": [a]},
            {"messages": chat("<image>What colour?"), "images": [a]},
            {"messages": [{"role": "system", "content": "Answer in one word."}, *chat("<image> then <image>?")],
             "images": [a, b]},
            {"messages": chat("No picture here.")}]
    examples, report = family.build_examples(data_config(write_jsonl(tmp_path / "d.jsonl", rows)), processor)
    assert report.images == 4 and report.examples == 4
    assert examples[0].input_ids == examples[1].input_ids
    assert examples[2].images == [tmp_path / "a.png", tmp_path / "b.png"]
    assert examples[3].images == []
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert examples[2].input_ids.count(image_id) == 2 * 16 and image_id not in examples[3].input_ids


def test_minicpmv_json_list_with_named_images_and_absolute_paths(llava, tmp_path):
    family, processor = llava
    first = picture(tmp_path / "first.png")
    second = tmp_path / "sub" / "second.png"
    second.parent.mkdir()
    picture(second)
    items = [{"id": "0", "image": {"<image_00>": first, "<image_01>": str(second)},
              "conversations": [{"role": "user", "content": "<image_01>\nand <image_00>\nsame colour?"},
                                {"role": "assistant", "content": "yes"}]},
             {"id": "1", "image": first, "conversations": chat("What colour?")}]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(items, indent=2))
    examples, _ = family.build_examples(data_config(path, "minicpmv"), processor)
    assert examples[0].images == [second, tmp_path / "first.png"]  # in the order the conversation names them
    assert len(examples[1].images) == 1


def bad_rows(tmp_path: Path) -> list[tuple[str, dict]]:
    """(the reason each row must be rejected for, the row)."""
    good = picture(tmp_path / "good.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    full = tmp_path / "full.png"
    picture(full)
    (tmp_path / "truncated.png").write_bytes(full.read_bytes()[:-20])
    (tmp_path / "text.png").write_text("not a picture")
    (tmp_path / "folder.png").mkdir()
    picture(tmp_path / "huge.png", size=(300, 200))
    return [("image not found", {"messages": chat("<image>?"), "images": ["missing.png"]}),
            ("image not found", {"messages": chat("<image>?"), "images": ["folder.png"]}),
            ("image corrupt", {"messages": chat("<image>?"), "images": ["corrupt.png"]}),
            ("image corrupt", {"messages": chat("<image>?"), "images": ["truncated.png"]}),
            ("image corrupt", {"messages": chat("<image>?"), "images": ["text.png"]}),
            ("image over the pixel budget", {"messages": chat("<image>?"), "images": ["huge.png"]}),
            ("placeholder count mismatch", {"messages": chat("<image><image>?"), "images": [good]}),
            ("placeholder count mismatch", {"messages": chat("<image>?"), "images": [good, good]}),
            ("field 'images' must be a list of image paths", {"messages": chat("<image>?"), "images": good}),
            # ~name of a user the machine does not have: pathlib raises instead of expanding
            ("image not found", {"messages": chat("<image>?"), "images": ["~nosuchuser0/a.png"]})]


def test_each_bad_image_stops_the_run_at_its_line_naming_the_image_and_the_reason(llava, tmp_path):
    family, processor = llava
    good = {"messages": chat("<image>?"), "images": [picture(tmp_path / "ok.png")]}
    bad = bad_rows(tmp_path)
    for reason, row in bad:
        path = write_jsonl(tmp_path / "d.jsonl", [good, good, row])
        with pytest.raises(UserInputError) as caught:
            family.build_examples(data_config(path, max_pixels=50_000), processor)
        message = caught.value.render()
        assert f"{path}:3" in message and reason in message, message
        if reason.startswith("image"):
            assert row["images"][0] in message  # the image is named
    path = write_jsonl(tmp_path / "d.jsonl", [good, bad[5][1]])
    with pytest.raises(UserInputError) as caught:
        family.build_examples(data_config(path, max_pixels=50_000), processor)
    assert "300x200 = 60000 pixels > data.max_pixels = 50000" in caught.value.render()


def test_skipped_bad_rows_are_counted_exactly_per_reason(llava, tmp_path):
    family, processor = llava
    good = {"messages": chat("<image>?"), "images": [picture(tmp_path / "ok.png")]}
    bad = bad_rows(tmp_path)
    path = write_jsonl(tmp_path / "d.jsonl", [good, *[row for _, row in bad], good])
    examples, report = family.build_examples(data_config(path, on_bad_row="skip", max_pixels=50_000), processor)
    assert len(examples) == 2 and report.images == 2 and report.rows_read == len(bad) + 2
    expected: dict[str, int] = {}
    for reason, _ in bad:
        expected[reason] = expected.get(reason, 0) + 1
    assert report.as_dict()["skipped"] == expected


def test_a_malformed_minicpmv_json_list_names_its_line(llava, tmp_path):
    family, processor = llava
    path = tmp_path / "broken.json"
    path.write_text('[\n {"id": "0", "conversations": []},\n {"id": 1,, }\n]')
    with pytest.raises(UserInputError) as caught:
        family.build_examples(data_config(path, "minicpmv"), processor)
    assert f"{path}:3" in caught.value.render() and "malformed JSON" in caught.value.render()
    picture(tmp_path / "a.png")
    path.write_text(json.dumps([{"id": "0", "image": {"<image_00>": "a.png"},
                                 "conversations": chat("<image_01>?")}]))
    with pytest.raises(UserInputError) as caught:
        family.build_examples(data_config(path, "minicpmv"), processor)
    assert f"{path}:1" in caught.value.render() and "<image_01>" in caught.value.render()


@pytest.mark.parametrize("count", [pytest.param(2400, marks=pytest.mark.slow), 480])
def test_images_are_decoded_lazily_off_the_training_thread_within_a_memory_bound(llava, tmp_path, count):
    """Pictures of 256x256 (470 MB for 2400 if all were decoded at once) stream with a bounded resident size."""
    import psutil

    family, processor = llava
    folder = tmp_path / "many"
    folder.mkdir()
    rows = []
    for index in range(count):
        name = f"{index}.png"
        Image.new("RGB", (256, 256), (index % 251, 90, 160)).save(folder / name, compress_level=1)
        rows.append({"messages": chat("<image>What colour?"), "images": [name]})
    examples, report = family.build_examples(data_config(write_jsonl(folder / "d.jsonl", rows)), processor)
    assert report.images == count
    stream = family.batches(examples, processor, batch_size=16, seed=0, shuffle=True, rank=0, world_size=1)
    process = psutil.Process()
    threads = set()
    stream.family_collate = _recording_thread(stream.family_collate, threads)
    stream.next_batch()
    baseline = process.memory_info().rss
    peak = baseline
    for _ in range(stream.batches_per_epoch):
        batch = stream.next_batch()
        peak = max(peak, process.memory_info().rss)
    stream.close()
    assert batch["pixel_values"].shape[1:] == (3, 56, 56)
    assert stream.images_served == count + 16  # a whole epoch and the next one's first batch
    import threading

    assert threads and threading.get_ident() not in threads  # decoded on the worker thread
    decoded_all = count * 256 * 256 * 3
    assert peak - baseline < decoded_all / 10, f"resident memory grew {(peak - baseline) / 2**20:.0f} MiB"


def _recording_thread(collate, threads: set):
    import threading

    def recording(examples, images):
        threads.add(threading.get_ident())
        return collate(examples, images)

    return recording


def test_image_rows_and_a_text_model_or_text_formats_and_a_vlm_are_refused_with_the_key(llava, tmp_path):
    from loratui.data.dataset import load_examples
    from loratui.model.loading import load_tokenizer

    family, processor = llava
    with pytest.raises(UserInputError) as caught:
        family.build_examples(data_config("builtin:tiny-shapes", "text"), processor)
    assert "data.format" in caught.value.render() and '"messages" or "minicpmv"' in caught.value.render()
    tokenizer = load_tokenizer(str(builtin_vlm_dir("builtin:tiny-vlm")), trust_remote_code=False)
    with pytest.raises(UserInputError) as caught:
        load_examples(str(shapes_dataset_path("builtin:tiny-shapes", "minicpmv")), "minicpmv", tokenizer,
                      max_length=64, on_too_long="truncate", on_bad_row="error")
    assert "data.format" in caught.value.render() and "vision-language model" in caught.value.render()
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": chat("<image>?"), "images": ["a.png"]}])
    with pytest.raises(UserInputError) as caught:
        load_examples(str(path), "messages", tokenizer, max_length=64, on_too_long="truncate", on_bad_row="error")
    assert f"{path}:1" in caught.value.render() and "images need a vision-language model" in caught.value.render()
