"""Generated built-ins (pictures, tiny models) in loratui's cache, each written once and moved into place whole."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def cache_root() -> Path:
    """$LORATUI_CACHE, else $XDG_CACHE_HOME/loratui, else ~/.cache/loratui."""
    base = os.environ.get("LORATUI_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "loratui")
    return Path(base)


def built_once(target: Path, build: Callable[[Path], None]) -> Path:
    """`target`, written by `build(staging_dir)` on first use; a finished build is never seen half-written.

    The build happens in a staging directory beside the target, marked complete, then
    renamed into place: the rename is atomic, and a concurrent builder's result is as
    good as ours.
    """
    if (target / "complete").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(staging)
        (staging / "complete").write_text("")
        if target.exists() and not (target / "complete").is_file():
            # Not written by us (we only rename finished builds into place): set it aside.
            shutil.rmtree(target.rename(target.with_name(f".broken-{target.name}-{os.getpid()}")),
                          ignore_errors=True)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "complete").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
