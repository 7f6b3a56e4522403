"""How MiniCPM-V 2.x cuts a picture into slices, and the text that stands for them.

MiniCPM-V's processor (remote code, not loadable here) shows the vision tower a
large picture twice: whole, shrunk to about scale_resolution² pixels (the source),
and as a grid of up to max_slice_nums crops of an upscaled copy, each crop again
about scale_resolution² pixels. The grid has between the wanted count - 1 and + 1
cells (wanted: the picture's area in scale_resolution² units, at most
max_slice_nums) and the columns : rows shape closest to the picture's aspect
ratio; a picture of at most one such area is not sliced but resized to it. Every
side is a multiple of patch_size. This module does the same arithmetic (the model
was trained on exactly these sizes) with the settings the model ships:
preprocessor_config.json first (what its processor reads), then config.json's
slice_config, then config.json itself.

Each picture becomes query_num resampler queries, written as `<unk>` tokens. In
the text, MiniCPM-V-2_6 (version 2.6) writes an image as
`<image_id>N</image_id>` (with use_image_id; N counts the row's images from 0),
`<image>` + queries + `</image>` for the source, then one `<slice>` + queries +
`</slice>` per slice, the grid's rows separated by newlines. Versions before 2.6
(no `version` key: 2.0, 2.5) wrap all rows in one `<slice>...</slice>` and each
slice in `<image>...</image>`, as vLLM also tells them apart.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

IMAGE_MEAN = IMAGE_STD = 0.5  # MiniCPM-V 2.x normalises every channel to [-1, 1]


@dataclass(frozen=True)
class SliceSettings:
    slice_mode: bool  # off: every picture is seen whole, resized to about scale_resolution² pixels
    max_slice_nums: int
    scale_resolution: int
    patch_size: int
    query_num: int  # resampler queries per picture: the `<unk>` tokens each one's features replace
    use_image_id: bool
    tag_each_slice: bool  # 2.6 and later: `<slice>...</slice>` around each slice, not around the grid

    def tokens(self) -> list[str]:
        """The tokenizer's tokens this layout writes."""
        return (["<image>", "</image>", "<unk>"] + (["<slice>", "</slice>"] if self.slice_mode else [])
                + (["<image_id>", "</image_id>"] if self.use_image_id else []))


def read_slice_settings(path: str, config) -> SliceSettings:
    """The slicing settings of the MiniCPM-V model at `path` (its loaded config is `config`)."""
    from loratui.errors import Problem, UserInputError

    processor = _preprocessor_config(path)
    slice_config = getattr(config, "slice_config", None) or {}
    sources = [processor, slice_config if isinstance(slice_config, dict) else vars(slice_config), vars(config)]

    def setting(key: str, default=None):
        for source in sources:
            if source.get(key) is not None:
                return source[key]
        if default is None:
            raise UserInputError(Problem("model.name_or_path", f"{path} has no {key} in preprocessor_config.json "
                                         "or config.json (MiniCPM-V's slicing settings)"))
        return default

    try:
        version = float(setting("version", 0.0))
    except (TypeError, ValueError):
        raise UserInputError(Problem("model.name_or_path", f"{path}: MiniCPM-V's version is "
                                     f"{setting('version')!r}, not a number like 2.6")) from None
    return SliceSettings(slice_mode=bool(setting("slice_mode", False)),
                         max_slice_nums=int(setting("max_slice_nums", 9)),  # the processor's own default
                         scale_resolution=int(setting("scale_resolution")), patch_size=int(setting("patch_size")),
                         query_num=int(getattr(config, "query_num", None) or setting("image_feature_size")),
                         use_image_id=bool(setting("use_image_id", False)),
                         tag_each_slice=version >= 2.6)


def _preprocessor_config(path: str) -> dict:
    from transformers.utils import cached_file

    from loratui.errors import Problem, UserInputError

    found = cached_file(path, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False,
                        _raise_exceptions_for_connection_errors=False)
    if found is None:
        return {}
    try:
        return json.loads(open(found, encoding="utf-8").read())
    except (OSError, ValueError) as exc:
        raise UserInputError(Problem(found, f"cannot read MiniCPM-V's preprocessor settings: {exc}")) from None


# ------------------------------------------------------------------ geometry

def slice_grid(width: int, height: int, settings: SliceSettings) -> tuple[int, int] | None:
    """(columns, rows) of slices for a picture this size; None when it is seen whole."""
    if not settings.slice_mode:
        return None
    wanted = min(math.ceil(width * height / settings.scale_resolution ** 2), settings.max_slice_nums)
    if wanted <= 1:
        return None
    counts = [count for count in (wanted - 1, wanted, wanted + 1) if 1 < count <= settings.max_slice_nums]
    grids = [(columns, count // columns) for count in counts for columns in range(1, count + 1)
             if count % columns == 0]
    aspect = math.log(width / height)
    # min keeps the first of equal candidates, fewest cells and fewest columns first, as the processor does.
    return min(grids, key=lambda grid: abs(aspect - math.log(grid[0] / grid[1])))


def slice_sizes(width: int, height: int, settings: SliceSettings) -> list[tuple[int, int]]:
    """(width, height) of each picture the tower sees: the source, then every slice row by row."""
    grid = slice_grid(width, height, settings)
    source = _about_one_area(width, height, settings, upscale=grid is None)
    if grid is None:
        return [source]
    columns, rows = grid
    return [source] + [_slice_size(width, height, grid, settings)] * (columns * rows)


def slice_image(image, settings: SliceSettings) -> list:
    """The pictures the tower sees for a PIL `image`: the source, then the grid's slices row by row."""
    from PIL import Image

    width, height = image.size
    grid = slice_grid(width, height, settings)
    source = image.resize(_about_one_area(width, height, settings, upscale=grid is None), Image.Resampling.BICUBIC)
    if grid is None:
        return [source]
    columns, rows = grid
    cell_width, cell_height = _slice_size(width, height, grid, settings)
    upscaled = image.resize((cell_width * columns, cell_height * rows), Image.Resampling.BICUBIC)
    return [source] + [upscaled.crop((column * cell_width, row * cell_height, (column + 1) * cell_width,
                                      (row + 1) * cell_height)) for row in range(rows) for column in range(columns)]


def _slice_size(width: int, height: int, grid: tuple[int, int], settings: SliceSettings) -> tuple[int, int]:
    """One slice's size: a grid cell of the picture (its sides first rounded to the grid) brought to one area."""
    columns, rows = grid
    return _about_one_area(_multiple(width, columns) / columns, _multiple(height, rows) / rows, settings,
                           upscale=True)


def _about_one_area(width: float, height: float, settings: SliceSettings, *, upscale: bool) -> tuple[int, int]:
    """The size keeping this aspect with about scale_resolution² pixels (never larger unless `upscale`),
    each side a multiple of patch_size."""
    side = settings.scale_resolution
    if upscale or width * height > side * side:
        aspect = width / height
        height = int(side / math.sqrt(aspect))
        width = int(height * aspect)
    return _multiple(width, settings.patch_size), _multiple(height, settings.patch_size)


def _multiple(length: float, step: int) -> int:
    """The nearest multiple of `step`, at least `step` (Python's round, halves to even, as the processor's)."""
    return max(round(length / step) * step, step)


# ---------------------------------------------------------------------- text

def image_text(width: int, height: int, index: int, settings: SliceSettings) -> str:
    """What MiniCPM-V's processor writes for the `index`-th image of a row (from 0) of this size."""
    queries = "<unk>" * settings.query_num
    text = f"<image_id>{index}</image_id>" if settings.use_image_id else ""
    text += f"<image>{queries}</image>"
    grid = slice_grid(width, height, settings)
    if grid is None:
        return text
    columns, rows = grid
    if settings.tag_each_slice:
        return text + "\n".join(f"<slice>{queries}</slice>" * columns for _ in range(rows))
    return text + "<slice>" + "\n".join(f"<image>{queries}</image>" * columns for _ in range(rows)) + "</slice>"


def query_spans(ids: list[int], query_token: int) -> list[list[int]]:
    """[start, end) of every run of query tokens: one per picture, in order (MiniCPM-V's image_bound)."""
    spans, start = [], None
    for index, value in enumerate(ids + [None]):
        if value == query_token and start is None:
            start = index
        elif value != query_token and start is not None:
            spans.append([start, index])
            start = None
    return spans


def by_patch(picture, patch: int):
    """A PIL picture normalised and laid out as (3, patch, H*W/patch): its patches side by side, row by row,
    the layout MiniCPM-V's forward takes (tgt_sizes gives each one's patch grid back)."""
    import numpy as np
    import torch

    array = np.asarray(picture, dtype=np.float32) / 255.0
    pixels = (torch.from_numpy(array).permute(2, 0, 1) - IMAGE_MEAN) / IMAGE_STD
    patches = torch.nn.functional.unfold(pixels.unsqueeze(0), (patch, patch), stride=(patch, patch))
    return patches.reshape(3, patch, patch, -1).permute(0, 1, 3, 2).reshape(3, patch, -1)
