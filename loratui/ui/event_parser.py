"""Turns a block of events.jsonl bytes into step columns plus the other events, fast.

A long run's log is mostly `step` lines (a million of them is about 350 MB),
and `json.loads` on each costs seconds. Step lines are written by one encoder
with a fixed key order, so a regular expression pulls the charted fields out
of a whole block at C speed, and the numbers become numpy arrays. Any block
whose step lines do not all match (another key order, a hand-edited line) is
parsed line by line with the strict decoder instead: slower, never wrong.
Every other line is decoded in full, in order (other event types are rare).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from loratui.events.encode import decode_event

TAIL = 64
STEP_PREFIX = b'{"type":"step"'
# Loose value patterns ([^,]*) are the fast ones; quoted "nan"/"inf" and null are
# sorted out in the conversion, which tries the plain-number path first.
# The time is not captured: only the last TAIL rows need it (STEP_TIME reads those).
STEP_LINE = re.compile(
    rb'\{"type":"step","time":[^,]*,"attempt":(\d+),"step":(\d+),"loss":([^,]*),"grad_norm":([^,]*),'
    rb'"lr":[^,]*,"precision":[^,]*,"scale":([^,]*),"skipped":(.)')
STEP_TIME = re.compile(rb'\{"type":"step","time":([^,]*),')
STEP_RATE = re.compile(rb'"tokens_per_s":([^,}]*)')
# Every line that does not open like an encoder-written step line (searched in "\n" + block, so
# the first line is found too; a leading newline is a fast literal to scan for).
OTHER_LINE = re.compile(rb'\n(?!\{"type":"step")([^\n]+)')


@dataclass
class StepColumns:
    """One array per charted field, a row per step event, in file order."""

    tail_time: np.ndarray  # times of the last TAIL rows only (the ETA needs no more)
    tail_rate: np.ndarray  # tokens_per_s of the same rows (nan where missing): the header's smoothed rate
    attempt: np.ndarray
    step: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray
    scale: np.ndarray  # nan where the step had no loss scale
    skipped: np.ndarray  # bool

    def __len__(self) -> int:
        return len(self.step)


@dataclass
class ParsedBlock:
    steps: StepColumns | None
    others: list[dict] = field(default_factory=list)  # non-step events, in file order
    last_step: dict | None = None  # the newest step event, decoded in full (header figures)
    steps_after_others: bool = False  # did a step line follow the last other event?
    bad_lines: int = 0


def parse_block(block: bytes, *, latest_only: tuple[str, ...] = ()) -> ParsedBlock:
    """Parse whole lines (the block ends with a newline or is empty).

    Of the `latest_only` types (events superseded by the next of their type), only
    the block's last event of each type is decoded: in a long log the health
    events alone are most of the decoding work, and all but one per block would
    be dropped anyway.
    """
    rows = STEP_LINE.findall(block)
    if len(rows) != block.count(STEP_PREFIX):
        return _parse_line_by_line(block)
    lines = [(match.start(), match.group(1)) for match in OTHER_LINE.finditer(b"\n" + block)]
    superseded = _superseded(lines, latest_only) if latest_only else set()
    others, bad = [], 0
    last_other_at = -1
    for number, (at, raw) in enumerate(lines):
        if number in superseded or not raw.strip():
            continue
        try:
            event = decode_event(raw)
        except ValueError:
            bad += 1
            continue
        if event.get("type") == "step":  # a step line in another layout (hand-written, another writer)
            return _parse_line_by_line(block)
        others.append(event)
        last_other_at = at
    last_step_at = block.rfind(STEP_PREFIX)
    last_step = None
    if last_step_at >= 0:
        try:
            last_step = decode_event(block[last_step_at:block.index(b"\n", last_step_at)])
        except ValueError:
            bad += 1
    return ParsedBlock(_columns(rows, *_tail(block, min(len(rows), TAIL))) if rows else None, others,
                       last_step, last_step_at > last_other_at, bad)


def _superseded(lines: list[tuple[int, bytes]], types: tuple[str, ...]) -> set[int]:
    """Numbers of the lines that a later valid line of the same type (one of `types`) supersedes.

    The type is read from the line's opening, as the encoder writes it; a line that
    does not open that way is decoded like any other. Going back from the end, the
    first line of a type that decodes is the one kept, so a damaged last line does
    not hide the one before it.
    """
    wanted = {f'{{"type":"{kind}",'.encode() for kind in types}
    kept: set[bytes] = set()
    superseded = set()
    for number in range(len(lines) - 1, -1, -1):
        raw = lines[number][1]
        opening = raw[:raw.find(b",") + 1]
        if opening not in wanted:
            continue
        if opening in kept:
            superseded.add(number)
            continue
        try:
            decode_event(raw)
        except ValueError:
            continue
        kept.add(opening)
    return superseded


def _columns(rows: list[tuple[bytes, ...]], tail_time: np.ndarray, tail_rate: np.ndarray) -> StepColumns:
    attempt, step, loss, grad_norm, scale, skipped = zip(*rows)
    n = len(rows)
    return StepColumns(tail_time=tail_time, tail_rate=tail_rate, attempt=_ints(attempt, n), step=_ints(step, n),
                       loss=_floats(loss, n), grad_norm=_floats(grad_norm, n), scale=_few_floats(scale, n),
                       skipped=np.frombuffer(b"".join(skipped), np.uint8) == ord("t"))


def _tail(block: bytes, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The times and tokens_per_s of the block's last `count` step lines, oldest first."""
    starts, end = [], len(block)
    for _ in range(count):
        end = block.rfind(STEP_PREFIX, 0, end)
        starts.append(end)
    starts.reverse()
    times = _floats(tuple(STEP_TIME.match(block, at).group(1) for at in starts), count)
    rates = []
    for at in starts:
        found = STEP_RATE.search(block, at, block.find(b"\n", at))  # within its own line only
        rates.append(found.group(1) if found else b"null")
    return times, _floats(tuple(rates), count)


def _floats(texts: tuple[bytes, ...], n: int) -> np.ndarray:
    try:
        return np.fromiter(map(float, texts), np.float64, n)
    except ValueError:  # a quoted "nan"/"inf" or a null among them
        return np.fromiter(map(_lenient_float, texts), np.float64, n)


def _few_floats(texts: tuple[bytes, ...], n: int) -> np.ndarray:
    """A column with few distinct values (the loss scale): convert each distinct value once."""
    distinct = set(texts)
    if len(distinct) > 64:
        return _floats(texts, n)
    value_of = {text: _lenient_float(text) for text in distinct}
    return np.fromiter(map(value_of.__getitem__, texts), np.float64, n)


def _ints(texts: tuple[bytes, ...], n: int) -> np.ndarray:
    first, last = int(texts[0]), int(texts[-1])
    if last - first == n - 1 and len(set(texts)) == n:
        return np.arange(first, last + 1, dtype=np.int64)  # consecutive steps: no per-row parse
    if first == last and len(set(texts)) == 1:
        return np.full(n, first, np.int64)  # one attempt throughout
    return np.fromiter(map(int, texts), np.int64, n)


def _lenient_float(text: bytes) -> float:
    text = text.strip(b'"')
    return float("nan") if text == b"null" or not text else float(text)


def _parse_line_by_line(block: bytes) -> ParsedBlock:
    steps: list[dict] = []
    others: list[dict] = []
    bad = 0
    steps_after = False
    for raw in block.split(b"\n"):
        if not raw.strip():
            continue
        try:
            event = decode_event(raw)
        except ValueError:
            bad += 1
            continue
        if event.get("type") == "step":
            if _is_complete_step(event):
                steps.append(event)
                steps_after = True
            else:
                bad += 1
        else:
            others.append(event)
            steps_after = False
    columns = None
    if steps:
        def floats(name: str) -> np.ndarray:
            return np.array([_as_float(e.get(name)) for e in steps], np.float64)

        columns = StepColumns(tail_time=floats("time")[-TAIL:], tail_rate=floats("tokens_per_s")[-TAIL:], attempt=np.array([e.get("attempt", 0) for e in steps], np.int64),
                              step=np.array([e["step"] for e in steps], np.int64), loss=floats("loss"),
                              grad_norm=floats("grad_norm"), scale=floats("scale"),
                              skipped=np.array([bool(e.get("skipped")) for e in steps], np.bool_))
    return ParsedBlock(columns, others, steps[-1] if steps else None, steps_after, bad)


def _is_complete_step(event: dict) -> bool:
    return isinstance(event.get("step"), int) and "loss" in event


def _as_float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
