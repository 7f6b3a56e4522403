"""Reads events.jsonl as it grows, in blocks of whole lines, and folds them into a RunModel.

Used from a worker thread: a block is parsed outside the lock and applied
under it, so the UI thread never waits on the parsing. A file that shrinks
(replaced or truncated by hand) is read again from the start.
"""

from __future__ import annotations

import os
from pathlib import Path

from loratui.ui.event_parser import parse_block
from loratui.ui.run_model import RunModel

BLOCK_BYTES = 4 << 20  # a block parses in a few tens of milliseconds: the UI thread stays responsive


class EventFollower:
    def __init__(self, path: Path, model: RunModel):
        self.path = Path(path)
        self.model = model
        self.offset = 0  # bytes consumed, always just after a newline
        self.caught_up = False  # has it reached the end of the file once?

    def read_block(self) -> int:
        """Read and apply at most one block; returns the bytes consumed (0: nothing new yet)."""
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            self.caught_up = True
            return 0
        if size < self.offset:
            self._restart()
        if size == self.offset:
            self.caught_up = True
            return 0
        with open(self.path, "rb") as file:
            file.seek(self.offset)
            chunk = file.read(min(BLOCK_BYTES, size - self.offset))
        end = chunk.rfind(b"\n")
        if end < 0:
            if len(chunk) >= BLOCK_BYTES:  # one line longer than a block: skip it rather than stall
                self.offset += len(chunk)
            self.caught_up = True
            return 0
        block = chunk[: end + 1]
        parsed = parse_block(block)
        self.offset += len(block)
        at_end = self.offset >= size
        with self.model.lock:
            self.model.apply(parsed)
            self.model.reading = None if (at_end or self.caught_up) else self.offset / size
        if at_end:
            self.caught_up = True
        return len(block)

    def _restart(self) -> None:
        self.offset = 0
        with self.model.lock:
            self.model.reset()
