"""Helper processes that parse blocks of a long event log beside the follower's thread.

Parsing is Python work under one GIL, so a second thread would not help; a
million-step log (about 350 MB) takes seconds on one core. Each spare core
gets a helper: `python -m loratui.ui.parse_helpers`, which imports only the
parser (not Textual, nothing of the caller's own main module), reads byte
ranges of the log named on its stdin and writes the parsed blocks back on its
stdout, in the order asked, as length-prefixed pickles. Its stderr goes
nowhere: the dashboard owns the terminal. A helper that cannot start or dies
is dropped and the follower parses its blocks itself: slower, never different.
"""

from __future__ import annotations

import os
import pickle
import select
import struct
import subprocess
import sys
from collections import deque
from typing import BinaryIO

from loratui.ui.event_parser import ParsedBlock, parse_block

MAX_HELPERS = 3  # beyond this, reading the file and folding the results in dominate
FRAME_HEADER = struct.Struct("<Q")  # the byte length of the pickle that follows


def helper_count() -> int:
    """One helper per spare core, MAX_HELPERS at most (none on one core)."""
    return max(0, min((os.cpu_count() or 1) - 1, MAX_HELPERS))


class ParseHelper:
    """One helper process: byte ranges go in, parsed blocks come back in the same order."""

    def __init__(self):
        # Unbuffered pipes: `ready` asks the OS whether an answer has arrived, so no answer may
        # sit unseen in a Python buffer.
        self.process = subprocess.Popen([sys.executable, "-m", "loratui.ui.parse_helpers"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0)
        self.asked: deque[int] = deque()  # block indexes, oldest first

    def ask(self, index: int, path: str, start: int, end: int, latest_only: tuple[str, ...]) -> None:
        _write_frame(self.process.stdin, (path, start, end, latest_only))
        self.asked.append(index)

    def ready(self) -> bool:
        """Has the answer to the oldest question begun to arrive (or the helper ended)?"""
        return bool(select.select([self.process.stdout], [], [], 0)[0])

    def answer(self) -> tuple[int, ParsedBlock]:
        """The oldest question's block (waits for it); EOFError if the helper died (the question stays)."""
        parsed = _read_frame(self.process.stdout)
        if parsed is None:
            raise EOFError("the parse helper ended")
        return self.asked.popleft(), parsed

    def close(self) -> None:
        """End the helper (its stdin closes; a helper mid-block is killed rather than waited for)."""
        self.process.kill()
        self.process.stdin.close()
        self.process.stdout.close()
        self.process.wait()


def start_helpers(count: int) -> list[ParseHelper]:
    """Up to `count` helpers; fewer (maybe none) where processes cannot be started."""
    helpers = []
    for _ in range(count):
        try:
            helpers.append(ParseHelper())
        except OSError:
            break
    return helpers


def parse_range(path: str, start: int, end: int, latest_only: tuple[str, ...]) -> ParsedBlock:
    with open(path, "rb") as file:
        file.seek(start)
        block = file.read(end - start)
    return parse_block(block, latest_only=latest_only)


def serve(requests: BinaryIO, answers: BinaryIO) -> None:
    """The helper's loop: one parsed block per request, until its stdin closes."""
    while (request := _read_frame(requests)) is not None:
        _write_frame(answers, parse_range(*request))


def _write_frame(stream: BinaryIO, value) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(FRAME_HEADER.pack(len(data)) + data)
    stream.flush()


def _read_frame(stream: BinaryIO):
    """The next value, or None at the end of the stream (or a cut frame: the writer died)."""
    header = _read_exactly(stream, FRAME_HEADER.size)
    if header is None:
        return None
    data = _read_exactly(stream, FRAME_HEADER.unpack(header)[0])
    return None if data is None else pickle.loads(data)


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    chunks, missing = [], size
    while missing:
        chunk = stream.read(missing)
        if not chunk:
            return None
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
