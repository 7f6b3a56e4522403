"""events.jsonl: the sink that writes it and the tailer that reads it back.

The writer appends one strict-JSON line per event and flushes it, so a reader
(the dashboard, `loratui watch`, a test) sees each event as soon as it is
published. The tailer only ever yields whole lines: a line is whole when its
newline has been written, so a writer killed mid-line leaves a tail that is
held back until (and unless) it is completed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from loratui.events.bus import say_on_stderr
from loratui.events.encode import decode_event, encode_event

PRIVATE_FILE = 0o600


class JsonlSink:
    """Appends each event as one line with one `os.write`: written and visible when `write` returns.

    No Python file buffer: it would be flushed after every line anyway, and a
    single append of the whole line is cheaper and keeps a line in one piece
    beside other appenders.

    A write the disk refuses (full, over a size limit) never stops the run: the
    event is lost, stderr (trainer.log) says so once per outage, and the first
    line written once the disk takes lines again is a `notice` counting the lost
    events. A line cut short by the failure is ended first, so no line is ever
    glued onto a fragment.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE)
        self._at_line_start = _ends_with_newline(self.path)
        self.lost = 0  # events not written since the last line that was
        self._lost_reason = ""

    def write(self, event: dict) -> None:
        try:
            if self.lost:
                self._append(self._lost_notice(event))
                self.lost = 0
            self._append(event)
        except OSError as exc:
            self._record_loss(exc)

    def _append(self, event: dict) -> None:
        data = (encode_event(event) + "\n").encode("utf-8")
        if not self._at_line_start:
            # A previous writer died mid-line, or a failed write cut ours: end the fragment first.
            data = b"\n" + data
        written = 0
        try:
            while written < len(data):  # a short write (a signal, a full disk): the rest, or the error
                written += os.write(self._fd, data[written:])
        finally:
            if written:
                self._at_line_start = data[written - 1:written] == b"\n"

    def _record_loss(self, exc: OSError) -> None:
        if not self.lost:
            say_on_stderr(f"loratui: cannot write {self.path} ({exc.strerror or exc}): events are lost until "
                          f"it can; training goes on")
        self.lost += 1
        self._lost_reason = exc.strerror or str(exc)

    def _lost_notice(self, event: dict) -> dict:
        return {"type": "notice", "time": event.get("time"), "attempt": event.get("attempt"),
                "step": event.get("step"), "lost_events": self.lost,
                "message": f"{self.lost} event(s) could not be written to {self.path.name} "
                           f"({self._lost_reason})"}

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class EventTailer:
    """Reads events.jsonl incrementally from a byte offset, whole lines only."""

    def __init__(self, path: str | Path, offset: int = 0):
        self.path = Path(path)
        self.offset = offset  # bytes consumed: always just after a newline
        self.bad_lines = 0
        self._pending = b""

    def read_new(self, max_bytes: int = 64 * 1024 * 1024) -> list[dict]:
        return list(self.iter_new(max_bytes))

    def iter_new(self, max_bytes: int = 64 * 1024 * 1024) -> Iterator[dict]:
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            return
        if size < self.offset:  # truncated or replaced: start over
            self.offset, self._pending = 0, b""
        if size == self.offset + len(self._pending):
            return
        start = self.offset + len(self._pending)
        with open(self.path, "rb") as file:
            file.seek(start)
            chunk = self._pending + file.read(min(max_bytes, size - start))
        end = chunk.rfind(b"\n")
        if end < 0:
            self._pending = chunk
            return
        whole, self._pending = chunk[: end + 1], chunk[end + 1:]
        self.offset += len(whole)
        for raw in whole.split(b"\n")[:-1]:
            if not raw.strip():
                continue
            try:
                yield decode_event(raw)
            except ValueError:
                self.bad_lines += 1  # a fragment ended by the next writer's newline


def read_events(path: str | Path) -> list[dict]:
    """Every whole event in a log (for tests and `loratui watch` on a finished run)."""
    return EventTailer(path).read_new(max_bytes=1 << 62)


def next_attempt(path: str | Path) -> int:
    """0 for a new log; one more than its last attempt when a run continues in it (a resume).

    Attempts only grow, so the last whole line holds the highest; only the log's tail is read.
    """
    try:
        with open(path, "rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - 65536))
            lines = file.read().split(b"\n")
    except OSError:
        return 0
    for raw in reversed(lines):
        try:
            return int(decode_event(raw).get("attempt", 0)) + 1
        except ValueError:
            continue
    return 0


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as file:
        file.seek(0, os.SEEK_END)
        if file.tell() == 0:
            return True
        file.seek(-1, os.SEEK_END)
        return file.read(1) == b"\n"
