"""A checkpoint save that fails for lack of space: the previous checkpoint stays, an alert says so.

Two ways to run out, both real: a small tmpfs filled up with ballast (ENOSPC;
needs root to mount, skipped otherwise) and a file size limit (RLIMIT_FSIZE,
EFBIG; works anywhere). The pressure starts after step 3, so the save at step
4 fails while the one at step 2 is complete; with checkpoint.on_error =
"continue" the pressure ends after step 5 and the save at step 6 succeeds.

With no room at all, events.jsonl cannot grow either (the size limit cuts its
next line after a few bytes; the tmpfs takes lines until its last page, at
most 4 KiB, is full, which the 15 steps before the failing save overflow): the
alert and the steps are lost from the log, never the run, which still follows
on_error; the log stays whole lines, and a notice counts the lost events once
lines can be written again.
"""

from __future__ import annotations

import os
import resource
import subprocess

import pytest

from helpers import StepHook, steps_of, train_in_process
from loratui.config import load_config, render_toml
from loratui.events.bus import CallbackSink, EventBus
from loratui.events.encode import decode_event, encode_event
from loratui.events.jsonl import JsonlSink
from loratui.run_dir import prepare_run_dir
from loratui.train.trainer import Trainer
from test_reliability_support import (
    complete_steps,
    partial_dirs,
    single_cpu_thread,  # noqa: F401 (an autouse fixture)
    write_run_config,
)

ROOM_LEFT = 200 * 1024  # less than optimizer.pt (~340 KB), enough for event lines
LINE_CUT_AFTER = 7  # bytes of the next event line a file size limit lets through


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

    def fill_up(self, _trainer=None) -> None:
        """Not a byte left: only events.jsonl's partly used last page still takes a little."""
        stats = os.statvfs(self.root)
        with open(self.ballast, "wb") as file:
            file.write(b"\0" * (stats.f_bavail * stats.f_frsize))


class FileSizeLimit:
    """RLIMIT_FSIZE on this process: no file may grow past ROOM_LEFT (Python ignores SIGXFSZ)."""

    def __init__(self, directory):
        self.root = directory
        self.original = resource.getrlimit(resource.RLIMIT_FSIZE)

    def squeeze(self, _trainer=None) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (ROOM_LEFT, self.original[1]))

    def relieve(self, _trainer=None) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, self.original)

    def fill_up(self, trainer) -> None:
        """events.jsonl may grow by a few bytes only: its next line is cut, the ones after refused."""
        room = os.stat(trainer.run_dir.events).st_size + LINE_CUT_AFTER
        resource.setrlimit(resource.RLIMIT_FSIZE, (room, self.original[1]))


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


def train_recording_what_is_published(config, monitor):
    """The real trainer with its real event log, and beside it a record of every event as published."""
    run_dir = prepare_run_dir(config, resume=False, config_text=render_toml(config))
    published: list[dict] = []
    bus = EventBus()
    bus.add_sink(JsonlSink(run_dir.events))
    bus.add_sink(CallbackSink(published.append))
    try:
        code = Trainer(config, run_dir, bus, monitor=monitor).run()
    finally:
        bus.close()
    return code, published, run_dir


def split_log(path) -> tuple[list[str], list[bytes]]:
    """The log's lines that parse strictly (as text) and the fragments that do not.

    A line cut when the disk filled up is the log's unfinished tail until a later line ends it.
    """
    whole, fragments = [], []
    for raw in filter(None, path.read_bytes().split(b"\n")):
        try:
            decode_event(raw)
            whole.append(raw.decode())
        except ValueError:
            fragments.append(raw)
    return whole, fragments


def assert_only_a_cut_line_is_broken(fragments: list[bytes], published: list[dict], disk) -> None:
    """A cut line stays a fragment of its own: nothing was glued onto it."""
    assert len(fragments) == (1 if isinstance(disk, FileSizeLimit) else len(fragments)) <= 1, fragments
    lines = [encode_event(e).encode() for e in published]
    for fragment in fragments:
        assert any(len(fragment) < len(line) and line.startswith(fragment) for line in lines), fragment


@pytest.mark.parametrize("on_error", ["continue", "stop"])
def test_with_no_room_even_for_the_event_log_the_run_follows_on_error(disk, tmp_path, capfd, on_error):
    # No room from step 1 on, so the save at step 16 fails; with "continue" there is room again after step 17.
    path = write_run_config(tmp_path, max_steps=20, every_steps=16, keep=2)
    config = load_config(path, [f'run.output_dir="{disk.root}"', f'checkpoint.on_error="{on_error}"'])
    actions = {1: disk.fill_up, 17: disk.relieve} if on_error == "continue" else {1: disk.fill_up}
    try:
        code, published, run_dir = train_recording_what_is_published(config, StepHook(actions))
    finally:
        disk.relieve()
    # What the trainer did, as published: the save at step 16 failed and on_error decided the rest.
    alerts = [e for e in published if e["type"] == "alert"]
    assert [(e["kind"], e["step"]) for e in alerts] == [("checkpoint_failed", 16)], alerts
    if on_error == "continue":
        assert code == 0 and published[-1]["type"] == "run_finished"
        assert [e["step"] for e in published if e["type"] == "checkpoint"] == [0, 20]
        assert complete_steps(run_dir.checkpoints) == [20, 0]
    else:
        assert code == 1 and published[-1]["type"] == "run_failed"
        assert "checkpoint could not be written" in published[-1]["error"]
        assert complete_steps(run_dir.checkpoints) == [0]
    assert not partial_dirs(run_dir.checkpoints)

    # What the log kept: whole lines, the published ones up to the outage, then (once lines
    # could be written again) a notice counting the lost ones and the rest, in order.
    whole, fragments = split_log(run_dir.events)
    assert_only_a_cut_line_is_broken(fragments, published, disk)
    expected = [encode_event(e) for e in published]
    kept = next(i for i, (a, b) in enumerate(zip(whole + [None], expected)) if a != b)
    assert 0 < kept < len(expected) and published[kept]["step"] >= 2, "the outage began after step 1"
    if on_error == "continue":
        notice = decode_event(whole[kept])
        assert notice["type"] == "notice" and "could not be written to events.jsonl" in notice["message"]
        assert whole[kept + 1:] == expected[kept + notice["lost_events"]:]
        assert decode_event(whole[kept + 1])["step"] == 18  # the pressure ended after step 17
    else:
        assert len(whole) == kept, "nothing after the outage reached the log"
    errors = capfd.readouterr().err
    assert errors.count("cannot write") == 1 and "events.jsonl" in errors, errors
    assert "Traceback" not in errors
