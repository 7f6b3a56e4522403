"""Atomic checkpoints: written into a hidden directory, manifest last, then renamed into place.

A checkpoint directory named `step-NNNNNN` is complete by construction: the
rename is atomic and happens only after every file and the manifest (sizes
and SHA-256 of each file) are on disk. Readers still verify the manifest, so
a damaged checkpoint (truncated file, edited by hand, bad disk) is skipped
with a reason instead of being loaded. Old checkpoints are deleted only
after a newer one is complete, so once the first exists there is always one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

MANIFEST = "manifest.json"
STATE = "trainer_state.json"
FORMAT_VERSION = 1
PARTIAL_PREFIX = ".partial-"
# A complete checkpoint moved aside while a newer copy of the same step takes its name.
RETIRED_PREFIX = ".retired-"
SUPERSEDED = "superseded"


@dataclass
class CheckpointInfo:
    path: Path
    step: int
    state: dict  # trainer_state.json


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def partial_dir(checkpoints: Path, step: int) -> Path:
    return checkpoints / f"{PARTIAL_PREFIX}{checkpoint_name(step)}"


def retired_dir(final: Path) -> Path:
    return final.parent / f"{RETIRED_PREFIX}{final.name}"


def begin(checkpoints: Path, step: int) -> Path:
    """A fresh hidden directory to write a checkpoint into (a leftover from a crash is discarded)."""
    staging = partial_dir(checkpoints, step)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700, parents=True)
    return staging


def commit(staging: Path, state: dict, *, slow_hook: Callable[[], None] | None = None) -> Path:
    """Write the state and the manifest, fsync, and rename the checkpoint into place."""
    _write_json(staging / STATE, state)
    files = {}
    for path in sorted(staging.iterdir()):
        if path.name == MANIFEST:
            continue
        if slow_hook:
            slow_hook()
        files[path.name] = {"size": path.stat().st_size, "sha256": _sha256(path)}
        _fsync(path)
    _write_json(staging / MANIFEST, {"format": FORMAT_VERSION, "step": state["step"], "files": files,
                                     "written": time.time()})
    _fsync(staging / MANIFEST)
    final = staging.parent / checkpoint_name(state["step"])
    if final.exists():
        # Same step saved again (over a damaged copy a resume skipped, say): the newer copy
        # replaces it. A directory cannot be renamed over another, so the old one steps aside
        # first; killed between the two renames, clean_partials puts it back.
        retired = retired_dir(final)
        shutil.rmtree(retired, ignore_errors=True)
        os.rename(final, retired)
        os.rename(staging, final)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staging, final)
    _fsync_dir(staging.parent)
    return final


def write_torch(obj, path: Path) -> None:
    """torch.save into a private file of ours, so that a full disk raises the OSError it is.

    torch.save reports a failed write as a vague RuntimeError ("unexpected pos ..."),
    which would end the run as a crash instead of a checkpoint the disk refused.
    """
    import torch

    with _private_file(path) as file:
        writer = _WriteErrorRecorder(file)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is None:
                raise
            raise writer.error from None


def write_tensors(tensors: dict, path: Path) -> None:
    """A safetensors file written by us: safetensors' own writer folds the OSError into its message."""
    from safetensors.torch import save

    with _private_file(path) as file:
        file.write(save(tensors))


def verify(path: Path) -> str | None:
    """None if the checkpoint is complete and intact, else the reason it is not."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return "no manifest (the save did not finish)"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError, OSError):
        return "unreadable manifest"
    if manifest.get("format") != FORMAT_VERSION:
        return f"manifest format {manifest.get('format')!r} is not {FORMAT_VERSION}"
    if STATE not in files:
        return f"manifest does not list {STATE}"
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != expected.get("size"):
            return f"{name} has {file.stat().st_size} bytes, the manifest says {expected.get('size')}"
        if _sha256(file) != expected.get("sha256"):
            return f"{name} does not match its checksum"
    return None


def list_complete(checkpoints: Path, on_skip: Callable[[Path, str], None] | None = None
                  ) -> list[CheckpointInfo]:
    """Verified checkpoints, newest step first; damaged ones are reported through on_skip."""
    found = []
    if not checkpoints.is_dir():
        return found
    for path in checkpoints.iterdir():
        if not path.is_dir() or not path.name.startswith("step-"):
            continue
        reason = verify(path)
        if reason:
            if on_skip:
                on_skip(path, reason)
            continue
        state = json.loads((path / STATE).read_text())
        found.append(CheckpointInfo(path, int(state["step"]), state))
    found.sort(key=lambda info: info.step, reverse=True)
    return found


def list_names(checkpoints: Path) -> list[tuple[int, Path]]:
    """Checkpoint directories by step, newest first, without verifying them (cheap)."""
    out = []
    if checkpoints.is_dir():
        for path in checkpoints.iterdir():
            if path.is_dir() and path.name.startswith("step-") and (path / MANIFEST).is_file():
                try:
                    out.append((int(path.name.removeprefix("step-")), path))
                except ValueError:
                    continue
    out.sort(reverse=True)
    return out


def apply_retention(checkpoints: Path, keep: int, *, protect: Path | None = None) -> list[Path]:
    """Delete all but the `keep` newest complete checkpoints (never `protect`)."""
    removed = []
    for _step, path in list_names(checkpoints)[keep:]:
        if protect is not None and path == protect:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def set_aside_after(checkpoints: Path, step: int, attempt: int) -> list[Path]:
    """Move checkpoints newer than `step` out of the way after a rollback.

    They belong to the abandoned branch of the run: left in place, a later
    --resume would continue from them. They are moved, not deleted.
    """
    moved = []
    for found_step, path in list_names(checkpoints):
        if found_step > step:
            target_dir = checkpoints / SUPERSEDED / f"attempt-{attempt}"
            target_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.rename(path, target_dir / path.name)
            moved.append(target_dir / path.name)
    return moved


def clean_partials(checkpoints: Path) -> None:
    """Tidy up after a process killed while saving: half-written checkpoints go, retired ones return.

    A retired copy is deleted only when its replacement is in place; without one
    (the kill fell between commit's two renames) it is the complete checkpoint of
    its step and gets its name back.
    """
    if not checkpoints.is_dir():
        return
    for path in checkpoints.iterdir():
        if path.name.startswith(PARTIAL_PREFIX):
            shutil.rmtree(path, ignore_errors=True)
        elif path.name.startswith(RETIRED_PREFIX):
            final = checkpoints / path.name.removeprefix(RETIRED_PREFIX)
            if final.exists():
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.rename(path, final)


class _WriteErrorRecorder:
    """A file wrapper that remembers the OSError of a failed write before torch hides it."""

    def __init__(self, file):
        self.file = file
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.file.flush()


@contextmanager
def _private_file(path: Path):
    """A new file private to the user; a failed write names the file, which file.write's OSError does not."""
    try:
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as file:
            yield file
    except OSError as exc:
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise


def _write_json(path: Path, value: dict) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(value, file, indent=1, allow_nan=False)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        _fsync(path)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename is still atomic
