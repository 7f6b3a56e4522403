"""Image files of vision rows: checked once when rows are read, decoded lazily when batches are built.

Reading rows only opens each image's header (its size: no pixels decoded) and
verifies the file's structure, so a missing, unreadable, corrupt or oversized
image is a bad row at its file:line before training starts, while pixels are
decoded only for the batch being built (see vision_stream.py), never all at once.
"""

from __future__ import annotations

from pathlib import Path


class BadImage(Exception):
    """An image a row cannot use; the message names the image and the reason (reason first)."""

    def __init__(self, reason: str, image: str, detail: str = ""):
        super().__init__(f"{reason}: {image}{f' ({detail})' if detail else ''}")
        self.reason = reason


def resolve_image_path(reference: str, data_file: Path) -> Path:
    """A row's image path: absolute as given, or relative to the data file's directory."""
    path = Path(reference)
    try:
        path = path.expanduser()
    except RuntimeError:  # ~name for a user this machine does not have: as written, and not found
        pass
    return path if path.is_absolute() else data_file.parent / path


def check_image(path: Path, shown: str, *, max_pixels: int) -> tuple[int, int]:
    """(width, height) of an image that can be used; BadImage naming `shown` otherwise."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            size = image.size
            image.verify()  # structure and checksums, without decoding the pixels
    except FileNotFoundError:
        raise BadImage("image not found", shown) from None
    except IsADirectoryError:
        raise BadImage("image not found", shown, "a directory") from None
    except PermissionError:
        raise BadImage("image unreadable", shown, "permission denied") from None
    except UnidentifiedImageError:
        raise BadImage("image corrupt", shown, "not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow reports damaged data with these
        raise BadImage("image corrupt", shown, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) \
            from None
    width, height = size
    if width * height > max_pixels:
        raise BadImage("image over the pixel budget", shown,
                       f"{width}x{height} = {width * height} pixels > data.max_pixels = {max_pixels}")
    return width, height


def load_rgb(path: Path):
    """Decode an image to RGB pixels (the moment its memory is spent)."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")
