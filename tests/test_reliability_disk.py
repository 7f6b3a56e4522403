"""A checkpoint save that fails for lack of space: the previous checkpoint stays, an alert says so.

Two ways to run out, both real: a small tmpfs filled up with ballast (ENOSPC;
needs root to mount, skipped otherwise) and a file size limit (RLIMIT_FSIZE,
EFBIG; works anywhere). The pressure starts after step 3, so the save at step
4 fails while the one at step 2 is complete; with checkpoint.on_error =
"continue" the pressure ends after step 5 and the save at step 6 succeeds.
"""

from __future__ import annotations

import os
import resource
import subprocess

import pytest

from helpers import StepHook, steps_of, train_in_process
from loratui.config import load_config
from test_reliability_support import (
    complete_steps,
    partial_dirs,
    single_cpu_thread,  # noqa: F401 (an autouse fixture)
    write_run_config,
)

ROOM_LEFT = 200 * 1024  # less than optimizer.pt (~340 KB), enough for event lines


class SmallFilesystem:
    """A 16 MiB tmpfs: `squeeze` fills it with ballast up to ROOM_LEFT, `relieve` deletes the ballast."""

    def __init__(self, mount_point):
        self.root = mount_point
        self.ballast = mount_point / "ballast"

    def squeeze(self, _trainer=None) -> None:
        stats = os.statvfs(self.root)
        with open(self.ballast, "wb") as file:
            file.write(b"\0" * (stats.f_bavail * stats.f_frsize - ROOM_LEFT))

    def relieve(self, _trainer=None) -> None:
        self.ballast.unlink(missing_ok=True)


class FileSizeLimit:
    """RLIMIT_FSIZE on this process: no file may grow past ROOM_LEFT (Python ignores SIGXFSZ)."""

    def __init__(self, directory):
        self.root = directory
        self.original = resource.getrlimit(resource.RLIMIT_FSIZE)

    def squeeze(self, _trainer=None) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (ROOM_LEFT, self.original[1]))

    def relieve(self, _trainer=None) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, self.original)


@pytest.fixture(params=["small filesystem", "file size limit"])
def disk(request, tmp_path):
    if request.param == "file size limit":
        pressure = FileSizeLimit(tmp_path)
        yield pressure
        pressure.relieve()
        return
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield SmallFilesystem(mount_point)
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def config_on(disk, tmp_path, on_error: str):
    path = write_run_config(tmp_path, max_steps=8, every_steps=2, keep=2)
    return load_config(path, [f'run.output_dir="{disk.root}"', f'checkpoint.on_error="{on_error}"'])


def the_alert(events):
    alerts = [e for e in events if e["type"] == "alert"]
    assert len(alerts) >= 1, [e["type"] for e in events]
    alert = alerts[0]
    assert alert["kind"] == "checkpoint_failed" and alert["severity"] == "critical" and alert["step"] == 4
    assert "previous checkpoint is intact" in alert["message"]
    assert any(reason in alert["evidence"]["error"] for reason in ("No space left on device", "File too large"))
    return alerts


def test_with_on_error_stop_a_failed_save_ends_the_run_and_keeps_the_previous_checkpoint(disk, tmp_path):
    code, events, run_dir = train_in_process(config_on(disk, tmp_path, "stop"), monitor=StepHook({3: disk.squeeze}))
    disk.relieve()
    assert code == 1
    assert len(the_alert(events)) == 1
    failed = [e for e in events if e["type"] == "run_failed"]
    assert failed and "checkpoint could not be written" in failed[-1]["error"]
    assert steps_of(events)[-1]["step"] == 4
    assert complete_steps(run_dir.checkpoints) == [2, 0]
    assert not partial_dirs(run_dir.checkpoints), "the failed save's files are removed"


def test_with_on_error_continue_the_run_goes_on_and_saves_when_space_returns(disk, tmp_path):
    hook = StepHook({3: disk.squeeze, 5: disk.relieve})
    code, events, run_dir = train_in_process(config_on(disk, tmp_path, "continue"), monitor=hook)
    assert code == 0
    assert len(the_alert(events)) == 1
    saved = [e["step"] for e in events if e["type"] == "checkpoint"]
    assert saved == [0, 2, 6, 8]
    assert steps_of(events)[-1]["step"] == 8
    assert complete_steps(run_dir.checkpoints) == [8, 6]
    assert (run_dir.adapter / "adapter_model.safetensors").is_file()
