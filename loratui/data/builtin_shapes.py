"""`builtin:tiny-shapes`: coloured shapes drawn with PIL from a seed, with questions about them.

Each row is one picture of one to three shapes of one colour and one kind, all on
one side, and a two-turn conversation: first its colour (every row, so the
colour answer is the clearest signal that the model looks), then one of its
shape, count or side. Four colours: a model that does not look gets 25 %.

Variants, each written in both data formats (`messages` JSONL with an `images`
list, and MiniCPM-V's own JSON list of `image` + `conversations`):
- `builtin:tiny-shapes`: the training rows;
- `builtin:tiny-shapes-heldout`: other pictures from another seed (for evaluation);
- `builtin:tiny-shapes-blank`: the training questions over a plain grey picture,
  which proves it is the picture that teaches the answers.

Files are generated on first use into the cache (like the built-in models) and
referenced by relative paths, as a user's own data would be.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

SHAPES_SEED = 2024
HELDOUT_SEED = 7
TRAIN_ROWS = 1024
HELDOUT_ROWS = 200
IMAGE_SIZE = 56
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (235, 205, 40)}
KINDS = ("circle", "square", "triangle")
COUNTS = ("one", "two", "three")
SIDES = ("left", "right")
BACKGROUND = (128, 128, 128)
COLOUR_QUESTION = "What colour are the shapes?"
FOLLOW_UPS = {"shape": "What shape are they?", "count": "How many shapes are there?",
              "side": "Which side are they on?"}
VARIANTS = ("tiny-shapes", "tiny-shapes-heldout", "tiny-shapes-blank")


def is_shapes_dataset(name: str) -> bool:
    return name.removeprefix("builtin:") in VARIANTS


def shapes_dataset_path(name: str, data_format: str) -> Path:
    """The data file of a variant in `data_format` ("messages" or "minicpmv"), generated on first use."""
    variant = name.removeprefix("builtin:")
    suffix = ".jsonl" if data_format == "messages" else ".minicpmv.json"
    return _generated_dir() / f"{variant}{suffix}"


def all_answers() -> list[str]:
    """Every answer word the data uses (the built-in VLMs' tokenizers keep each one a single token)."""
    return [*COLOURS, *KINDS, *COUNTS, *SIDES]


def all_questions() -> list[str]:
    return [COLOUR_QUESTION, *FOLLOW_UPS.values()]


def _generated_dir() -> Path:
    from loratui.data.cache import built_once, cache_root

    return built_once(cache_root() / "data" / f"tiny-shapes-{_fingerprint()}", write_shapes)


def write_shapes(out_dir: Path) -> None:
    """Draw every picture and write each variant in both formats under `out_dir`."""
    (out_dir / "images").mkdir(parents=True)
    blank = "images/blank.png"
    _draw_blank().save(out_dir / blank)
    train = _rows(random.Random(SHAPES_SEED), TRAIN_ROWS, out_dir, "train")
    heldout = _rows(random.Random(HELDOUT_SEED), HELDOUT_ROWS, out_dir, "heldout")
    blanked = [dict(row, image=blank) for row in train]
    for variant, rows in zip(VARIANTS, (train, heldout, blanked)):
        _write_messages(out_dir / f"{variant}.jsonl", rows)
        _write_minicpmv(out_dir / f"{variant}.minicpmv.json", rows, variant)


def _rows(rng: random.Random, count: int, out_dir: Path, prefix: str) -> list[dict]:
    rows = []
    for index in range(count):
        colour, kind = rng.choice(list(COLOURS)), rng.choice(KINDS)
        number, side = rng.randrange(1, 4), rng.choice(SIDES)
        image = f"images/{prefix}-{index:05d}.png"
        _draw(rng, colour, kind, number, side).save(out_dir / image)
        follow_up = rng.choice(list(FOLLOW_UPS))
        answer = {"shape": kind, "count": COUNTS[number - 1], "side": side}[follow_up]
        rows.append({"image": image, "colour": colour, "follow_up": FOLLOW_UPS[follow_up], "answer": answer})
    return rows


def _draw(rng: random.Random, colour: str, kind: str, number: int, side: str):
    from PIL import Image, ImageDraw

    picture = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    pen = ImageDraw.Draw(picture)
    half = IMAGE_SIZE // 2
    size = 14
    x0 = 2 if side == "left" else half + 2
    # Shapes stack down their half so that up to three fit without overlapping.
    slots = rng.sample(range(3), number)
    for slot in slots:
        left = x0 + rng.randrange(0, half - size - 3)
        top = 1 + slot * (size + 4) + rng.randrange(0, 3)
        box = (left, top, left + size, top + size)
        fill = COLOURS[colour]
        if kind == "circle":
            pen.ellipse(box, fill=fill)
        elif kind == "square":
            pen.rectangle(box, fill=fill)
        else:
            pen.polygon([(left + size // 2, top), (left, top + size), (left + size, top + size)], fill=fill)
    return picture


def _draw_blank():
    from PIL import Image

    return Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)


def _write_messages(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as file:
        for row in rows:
            messages = [{"role": "user", "content": f"<image>{COLOUR_QUESTION}"},
                        {"role": "assistant", "content": row["colour"]},
                        {"role": "user", "content": row["follow_up"]},
                        {"role": "assistant", "content": row["answer"]}]
            file.write(json.dumps({"messages": messages, "images": [row["image"]]}) + "\n")


def _write_minicpmv(path: Path, rows: list[dict], variant: str) -> None:
    # MiniCPM-V's recipe writes one JSON list; "<image>\n" marks the picture in the first turn.
    items = [{"id": f"{variant}-{index}", "image": row["image"],
              "conversations": [{"role": "user", "content": f"<image>\n{COLOUR_QUESTION}"},
                                {"role": "assistant", "content": row["colour"]},
                                {"role": "user", "content": row["follow_up"]},
                                {"role": "assistant", "content": row["answer"]}]}
             for index, row in enumerate(rows)]
    path.write_text(json.dumps(items, indent=1), encoding="utf-8")


def _fingerprint() -> str:
    """Cache key: changes whenever the recipe (this file) or Pillow's drawing changes."""
    import PIL

    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(PIL.__version__.encode())
    return digest.hexdigest()[:12]
