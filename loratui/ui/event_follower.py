"""Reads events.jsonl as it grows, in blocks of whole lines, and folds them into a RunModel.

Used from a worker thread: a block is parsed outside the lock and applied
under it, so the UI thread never waits on the parsing. A file that shrinks
(replaced or truncated by hand) is read again from the start.

A long history (a million steps is about 350 MB) takes seconds to parse, so
it is read coarse to fine instead of front to back: the first block (the
run's config and size) and the newest (the header, the latest events) first,
then blocks spread evenly over the whole run, filling in between. Step buckets do not depend on reading order, so the
charts show the whole run almost at once and sharpen as blocks arrive; the
other events of every block are kept and folded in file order at the end.
Spare cores parse blocks too, in helper processes (parse_helpers.py).
"""

from __future__ import annotations

import os
import pickle
from collections import deque
from pathlib import Path

from loratui.ui.event_parser import ParsedBlock, parse_block
from loratui.ui.parse_helpers import ParseHelper, helper_count, start_helpers
from loratui.ui.run_model import RunModel

BLOCK_BYTES = 4 << 20  # a block parses in a few tens of milliseconds: the UI thread stays responsive
LARGE_LOG = 16 * BLOCK_BYTES  # from this size on, a first read goes coarse to fine
LATEST_ONLY = ("health", "gpu", "phase")  # superseded by their next event: a block keeps its last one


class EventFollower:
    def __init__(self, path: Path, model: RunModel):
        self.path = Path(path)
        self.model = model
        self.offset = 0  # bytes consumed, always just after a newline
        self.caught_up = False  # has it reached the end of the file once?
        self._coarse: CoarseToFine | None = None

    def read_block(self) -> int:
        """Read and apply at most one block; returns the bytes consumed (0: nothing new yet)."""
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            self.caught_up = True
            return 0
        if self._coarse is None and self.offset == 0 and not self.caught_up and size >= LARGE_LOG:
            self._coarse = CoarseToFine(self.path, size)
        if self._coarse is not None:
            return self._read_coarse_block()
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

    def _read_coarse_block(self) -> int:
        coarse = self._coarse
        index, parsed, size = coarse.next_block()
        with self.model.lock:
            if index in (0, len(coarse.blocks) - 1):
                self.model.apply(parsed)  # a first picture: the run's setup, then its latest state
            elif parsed.steps is not None and len(parsed.steps):
                columns = parsed.steps
                self.model.history.add_steps(columns.attempt, columns.step, columns.loss, columns.grad_norm,
                                             columns.scale, columns.skipped)
            coarse.done += 1
            self.model.reading = coarse.done / len(coarse.blocks)
            self.model.version += 1
            if coarse.done == len(coarse.blocks):
                self._fold_in_order(coarse)
        return size

    def _fold_in_order(self, coarse: "CoarseToFine") -> None:
        """Every block is in the buckets: now the events, in file order (the caller holds the lock)."""
        self.model.reset(keep_history=True)
        for others in coarse.others:
            self.model.apply_events(others)
        self.model.apply_newest_steps(coarse.newest)
        self.model.reading = None
        self.offset = coarse.end
        self.caught_up = True
        self._coarse = None
        coarse.close()

    def _restart(self) -> None:
        self.offset = 0
        with self.model.lock:
            self.model.reset()


class CoarseToFine:
    """A plan to read a large log: its blocks, an order that covers the whole run early, and helpers.

    The follower's thread parses the first block and the newest itself (they come
    first, while the helper processes start); then each helper keeps two blocks
    in hand, and the thread parses the next block in the order whenever no
    helper has an answer ready.
    """

    def __init__(self, path: Path, size: int):
        self.path = path
        self.blocks = _blocks(path, size)
        self.end = self.blocks[-1][1]
        last = len(self.blocks) - 1
        rest = sorted(range(1, last), key=lambda i: _bit_reversed(i, max(last - 1, 1).bit_length()))
        self.order = [0, last, *rest]
        self.others: list[list[dict]] = [[] for _ in self.blocks]
        self.newest: ParsedBlock | None = None
        self.done = 0  # blocks applied
        self.waiting = deque(self.order)  # blocks nobody has taken yet
        self.helpers: list[ParseHelper] = start_helpers(helper_count()) if len(self.order) > 4 else []

    def next_block(self) -> tuple[int, ParsedBlock, int]:
        """(index, parsed block, its bytes) of a block not returned before."""
        self._hand_out()
        helper = next((h for h in self.helpers if h.asked and h.ready()), None)
        if helper is None and not self.waiting:
            helper = next(h for h in self.helpers if h.asked)  # only helpers hold blocks now: wait for one
        if helper is None:
            index = self.waiting.popleft()
            parsed = self._parse(index)
        else:
            try:
                index, parsed = helper.answer()
            except (EOFError, OSError, ValueError, pickle.UnpicklingError):  # it died, or sent garbage
                self._retire(helper)
                index = self.waiting.popleft()
                parsed = self._parse(index)
        self.others[index] = _latest_only(parsed.others)
        if index == len(self.blocks) - 1:
            self.newest = parsed
        start, end = self.blocks[index]
        return index, parsed, end - start

    def _hand_out(self) -> None:
        if len(self.waiting) > len(self.order) - 2:  # the first and the newest block are the thread's
            return
        for helper in list(self.helpers):
            while len(helper.asked) < 2 and self.waiting:
                index = self.waiting.popleft()
                start, end = self.blocks[index]
                try:
                    helper.ask(index, str(self.path), start, end, LATEST_ONLY)
                except OSError:  # the helper is gone
                    self.waiting.appendleft(index)
                    self._retire(helper)
                    break

    def _retire(self, helper: ParseHelper) -> None:
        """Stop a helper that failed; the blocks it held go back to the front of the queue."""
        self.helpers.remove(helper)
        self.waiting.extendleft(reversed(helper.asked))
        helper.close()

    def _parse(self, index: int) -> ParsedBlock:
        start, end = self.blocks[index]
        with open(self.path, "rb") as file:
            file.seek(start)
            block = file.read(end - start)
        return parse_block(block, latest_only=LATEST_ONLY)

    def close(self) -> None:
        for helper in self.helpers:
            helper.close()
        self.helpers = []


def _blocks(path: Path, size: int) -> list[tuple[int, int]]:
    """Byte ranges of about BLOCK_BYTES, each ending just after a newline (the last whole line)."""
    bounds = [0]
    with open(path, "rb") as file:
        for target in range(BLOCK_BYTES, size, BLOCK_BYTES):
            if target <= bounds[-1]:
                continue
            file.seek(target)
            window = file.read(1 << 16)
            newline = window.find(b"\n")
            if newline >= 0 and target + newline + 1 < size:
                bounds.append(target + newline + 1)
        file.seek(max(0, size - (1 << 16)))
        tail = file.read()
    end = size - (len(tail) - tail.rfind(b"\n") - 1)  # a line still being written waits for the follower
    if end <= bounds[-1]:
        bounds.pop()
    return [(start, stop) for start, stop in zip(bounds, bounds[1:] + [end])]


def _latest_only(events: list[dict]) -> list[dict]:
    """A block's events, keeping only the last of each kind that the next one supersedes."""
    last_of = {event.get("type"): i for i, event in enumerate(events) if event.get("type") in LATEST_ONLY}
    return [e for i, e in enumerate(events) if e.get("type") not in LATEST_ONLY or last_of[e.get("type")] == i]


def _bit_reversed(value: int, bits: int) -> int:
    return int(format(value, f"0{bits}b")[::-1], 2)
