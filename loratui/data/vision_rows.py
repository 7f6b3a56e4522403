"""Rows with images: read, check and tokenize them into examples that name their images.

Two formats:
- `messages` rows with an optional `images` list (paths relative to the data file,
  or absolute). Each `<image>` placeholder in a turn marks where an image goes; their
  count must equal the list's length; a row with images and no placeholder gets them
  before its first user turn (the LLaMA-Factory / ShareGPT convention).
- `minicpmv`: MiniCPM-V's own fine-tuning file, a JSON list (its recipe writes `.json`)
  or JSONL of {"id", "image": path or {"<image_00>": path, ...}, "conversations":
  [{"role", "content"}]}. Its placeholders (`<image>`, or the keys of the image dict)
  are read the same way.

Both become one conversation with `<image>` placeholders and an ordered image list;
a model family then renders it (the chat template, assistant-only labels, its own
image tokens). Every image is checked when its row is read (see images.py): a bad
one stops the run at file:line naming the image and the reason, or with
on_bad_row = "skip" is counted per reason in the data report.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from loratui.data.dataset import IGNORE_INDEX, BadRow, DataReport, Example, _parse_row, _read_lines, finish_reading
from loratui.data.images import BadImage, check_image, resolve_image_path
from loratui.errors import Problem, UserInputError

PLACEHOLDER = "<image>"
_MINICPMV_KEY = re.compile(r"<image_\d+>")


@dataclass
class VisionRow:
    """One conversation whose `<image>` placeholders stand, in order, for `images` (with their sizes)."""

    messages: list[dict]
    images: list[Path]
    sizes: list[tuple[int, int]]


@dataclass
class VisionExample(Example):
    images: list[Path] = field(default_factory=list)
    image_sizes: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class VisionReport(DataReport):
    images: int = 0  # images in the examples kept

    def summary(self) -> str:
        return f"{super().summary()}; {self.images} images"

    def as_dict(self) -> dict:
        return {**super().as_dict(), "images": self.images}


# The family's part: render a row into token ids and labels, its images expanded into its own tokens.
Encoder = Callable[[VisionRow], tuple[list[int], list[int]]]


def load_vision_examples(file: Path, data_format: str, encode: Encoder, *, max_length: int, on_too_long: str,
                         on_bad_row: str, max_pixels: int, image_token_ids: set[int],
                         progress: Callable[[int, int], None] | None = None
                         ) -> tuple[list[VisionExample], VisionReport]:
    """Examples (token ids, labels, image paths) and the counts of what was skipped, dropped or truncated."""
    rows = _minicpmv_items(file) if data_format == "minicpmv" else _read_lines(file)
    report = VisionReport()
    examples: list[VisionExample] = []
    for index, (line_number, raw) in enumerate(rows):
        if progress and index % 256 == 0:
            progress(index, len(rows))
        if isinstance(raw, str) and not raw.strip():
            continue
        report.rows_read += 1
        try:
            row = _parse_row(raw) if isinstance(raw, str) else _object(raw)
            vision_row = _minicpmv_row(row) if data_format == "minicpmv" else _messages_row(row)
            checked = _checked_images(vision_row, file, max_pixels)
            input_ids, labels = encode(checked)
        except (BadRow, BadImage) as bad:
            if on_bad_row == "error":
                raise UserInputError(Problem(f"{file}:{line_number}", f"{bad} (set data.on_bad_row = \"skip\" to "
                                             "skip such rows)")) from None
            report.skipped[bad.reason if isinstance(bad, BadImage) else str(bad).split(" (")[0]] += 1
            continue
        if not any(label != IGNORE_INDEX for label in labels):
            if on_bad_row == "error":
                raise UserInputError(Problem(f"{file}:{line_number}", "no tokens to learn from (no assistant "
                                             "turn)"))
            report.skipped["nothing to learn"] += 1
            continue
        if len(input_ids) > max_length:
            if on_too_long == "error":
                raise UserInputError(Problem(f"{file}:{line_number}", f"{len(input_ids)} tokens with its image "
                                             f"tokens, longer than data.max_length = {max_length} (on_too_long "
                                             "can be truncate or drop)"))
            last_image_token = max((i for i, t in enumerate(input_ids) if t in image_token_ids), default=-1)
            kept = labels[:max_length]
            # Cutting through an image's tokens would leave the model a partial image: drop such rows.
            if on_too_long == "drop" or last_image_token >= max_length or \
                    not any(label != IGNORE_INDEX for label in kept):
                report.dropped_too_long += 1
                continue
            input_ids, labels = input_ids[:max_length], kept
            report.truncated += 1
        examples.append(VisionExample(input_ids, labels, checked.images, checked.sizes))
        report.images += len(checked.images)
    return finish_reading(file, examples, report, len(rows), progress)


def _object(value) -> dict:
    if not isinstance(value, dict):
        raise BadRow(f"expected a JSON object, got {type(value).__name__}")
    return value


def _messages_row(row: dict) -> VisionRow:
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRow("field 'messages' must be a non-empty list")
    images = row.get("images", [])
    if not isinstance(images, list) or not all(isinstance(p, str) and p.strip() for p in images):
        raise BadRow("field 'images' must be a list of image paths")
    return _placed(messages, images)


def _placed(messages: list, images: list[str]) -> VisionRow:
    """Check the placeholders against the images; put unplaced images before the first user turn."""
    for turn, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise BadRow(f"messages[{turn}] must be an object with string 'role' and 'content'")
    placeholders = sum(m["content"].count(PLACEHOLDER) for m in messages)
    if placeholders == 0 and images:
        first_user = next((i for i, m in enumerate(messages) if m.get("role") == "user"), None)
        if first_user is None:
            raise BadRow("images but no user turn to put them in")
        messages = [dict(m) for m in messages]
        messages[first_user]["content"] = PLACEHOLDER * len(images) + messages[first_user]["content"]
    elif placeholders != len(images):
        raise BadRow(f"placeholder count mismatch ({placeholders} {PLACEHOLDER} placeholders, "
                     f"{len(images)} images)")
    return VisionRow(messages, [Path(p) for p in images], [])


def _minicpmv_row(row: dict) -> VisionRow:
    conversations = row.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        raise BadRow("field 'conversations' must be a non-empty list")
    for turn, message in enumerate(conversations):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise BadRow(f"conversations[{turn}] must be an object with string 'role' and 'content'")
    image = row.get("image")
    messages = [{"role": m.get("role"), "content": m["content"]} for m in conversations]
    if image is None:
        return _placed(messages, [])
    if isinstance(image, str) and image.strip():
        # The recipe writes "<image>\n" before the question; the newline belongs to the placeholder.
        for m in messages:
            m["content"] = m["content"].replace(PLACEHOLDER + "\n", PLACEHOLDER)
        return _placed(messages, [image])
    if not isinstance(image, dict) or not image or \
            not all(_MINICPMV_KEY.fullmatch(k) and isinstance(v, str) and v.strip() for k, v in image.items()):
        raise BadRow("field 'image' must be a path or an object of \"<image_NN>\": path")
    text = "\n".join(m["content"] for m in messages)
    named = _MINICPMV_KEY.findall(text)
    unknown = sorted(set(named) - set(image))
    if unknown:
        raise BadRow(f"placeholder count mismatch ({', '.join(unknown)} in the conversation but not in 'image')")
    if named and sorted(set(named)) != sorted(image):
        missing = sorted(set(image) - set(named))
        raise BadRow(f"placeholder count mismatch ({', '.join(missing)} in 'image' but not in the conversation)")
    order = named or list(image)
    for m in messages:
        m["content"] = _MINICPMV_KEY.sub(PLACEHOLDER, m["content"].replace(">\n", ">"))
    return _placed(messages, [image[key] for key in order])


def _checked_images(row: VisionRow, data_file: Path, max_pixels: int) -> VisionRow:
    paths, sizes = [], []
    for reference in row.images:
        path = resolve_image_path(str(reference), data_file)
        sizes.append(check_image(path, str(reference), max_pixels=max_pixels))
        paths.append(path)
    return VisionRow(row.messages, paths, sizes)


def _minicpmv_items(file: Path) -> list[tuple[int, object]]:
    """(line, item) for each item of a JSON list file, or (line, raw line) for JSONL."""
    if file.suffix != ".json":
        return _read_lines(file)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserInputError(Problem(str(file), "no such data file")) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(Problem(str(file), f"cannot be read: {exc}")) from None
    decoder = json.JSONDecoder()
    items: list[tuple[int, object]] = []
    position = _skip_space(text, 0)
    if not text.startswith("[", position):
        raise UserInputError(Problem(f"{file}:{text.count(chr(10), 0, position) + 1}",
                                     "a MiniCPM-V data file (.json) must be a JSON list of conversations"))
    position = _skip_space(text, position + 1)
    while not text.startswith("]", position):
        line = text.count("\n", 0, position) + 1
        try:
            item, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            raise UserInputError(Problem(f"{file}:{exc.lineno}", f"malformed JSON ({exc.msg} at column "
                                         f"{exc.colno}); the rest of the list cannot be read")) from None
        items.append((line, item))
        position = _skip_space(text, position)
        if text.startswith(",", position):
            position = _skip_space(text, position + 1)
        elif not text.startswith("]", position):
            raise UserInputError(Problem(f"{file}:{text.count(chr(10), 0, position) + 1}",
                                         "malformed JSON (expected ',' or ']' after a list item)"))
    return items


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position
