"""events.jsonl under writers killed mid-line, read by a tailer at the same time.

A small writer process forks a child per kill. Each child appends events
through the real JsonlSink (some of them 32 KiB, so a SIGKILL can cut the
write itself, which Linux then leaves short), and dies by SIGKILL: either at a
random moment from the parent, or right after writing a random prefix of a
line itself. Meanwhile this process tails the file with the real EventTailer.
The tailer must never yield a partial line, must always stand just after a
newline, and must end with exactly the whole lines a strict parser finds in
the file, in order. Forking the writer from a small process keeps 1,000
kills quick (a fork of a process holding torch costs ~30 ms).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import pytest

from loratui.events.encode import decode_event
from loratui.events.jsonl import EventTailer, JsonlSink
from test_reliability_support import seeded_random, torture_count

WRITER = r"""
import json, os, random, signal, sys, time
from loratui.events.encode import encode_event
from loratui.events.jsonl import JsonlSink

path, kills, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)


def event(writer, seq, big):
    payload = "x" * (32768 if big else rng.randint(0, 200))
    # Non-finite floats go in as floats; the sink must write them as strings.
    return {"type": "probe", "writer": writer, "seq": seq, "loss": float("nan"), "scale": float("inf"),
            "payload": payload, "size": len(payload), "last": True}


mid_line = self_cut_count = 0
for number in range(kills):
    whole, big, self_cut = rng.randint(0, 4), rng.random() < 0.3, rng.random() < 0.5
    cut_at, delay = rng.random(), rng.uniform(0, 0.004)
    pid = os.fork()
    if pid == 0:
        sink = JsonlSink(path)
        for seq in range(whole):
            sink.write(event(number, seq, big))
        if self_cut:
            line = (encode_event(event(number, whole, big)) + "\n").encode()
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            os.write(fd, line[:max(1, int(cut_at * (len(line) - 1)))])  # never the newline itself
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(1)  # the parent's SIGKILL lands during the writes above or here
        os._exit(0)
    if not self_cut:
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    self_cut_count += self_cut
    with open(path, "rb") as file:
        file.seek(0, os.SEEK_END)
        if file.tell():
            file.seek(-1, os.SEEK_END)
            mid_line += file.read(1) != b"\n"
print(json.dumps({"kills": kills, "mid_line": mid_line, "self_cut": self_cut_count}))
"""


def assert_whole(event: dict) -> None:
    """A yielded event is a complete probe line: everything up to its last key, payload intact."""
    assert event["type"] == "probe" and event["last"] is True, event
    assert len(event["payload"]) == event["size"], "a cut payload was yielded"
    assert event["loss"] == "nan" and event["scale"] == "inf"


def strict_lines(data: bytes) -> tuple[list[dict], int]:
    """Every whole line that parses as strict JSON, and how many do not (fragments left by kills)."""
    good, fragments = [], 0
    for raw in data.split(b"\n")[:-1]:
        if not raw:
            continue
        try:
            good.append(json.loads(raw, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name))))
        except ValueError:
            fragments += 1
    return good, fragments


@pytest.mark.slow
def test_writers_killed_mid_line_never_show_through_the_tailer(tmp_path):
    kills = torture_count(1000, 10000)
    rng = seeded_random("event log kills")
    path = tmp_path / "events.jsonl"
    path.touch()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(kills), str(rng.randrange(2**31))],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tailer = EventTailer(path)
    seen: list[dict] = []
    reads = 0

    def read() -> None:
        nonlocal reads
        for event in tailer.read_new():
            assert_whole(event)
            seen.append(event)
        reads += 1
        if tailer.offset:
            with open(path, "rb") as file:
                file.seek(tailer.offset - 1)
                assert file.read(1) == b"\n", f"the tailer stands mid-line at byte {tailer.offset}"

    while writer.poll() is None:
        read()
        time.sleep(rng.uniform(0, 0.002))
    out, err = writer.communicate()
    assert writer.returncode == 0, err
    report = json.loads(out)

    # A healthy writer carries on after the last kill; its first line must start clean.
    sink = JsonlSink(path)
    sink.write({"type": "probe", "writer": -1, "seq": 0, "loss": math.nan, "scale": math.inf, "payload": "",
                "size": 0, "last": True})
    sink.close()
    read()

    data = path.read_bytes()
    good, fragments = strict_lines(data)
    print(f"{kills} writers killed, {report['mid_line']} of them mid-line ({report['self_cut']} cut "
          f"deliberately), {fragments} fragments in the log, {len(good)} whole lines, {reads} tailer reads")
    assert report["mid_line"] >= report["self_cut"] > 0
    assert fragments <= report["mid_line"]
    assert tailer.offset == len(data) and data.endswith(b"\n")
    assert seen == good, "the tailer must yield exactly the log's whole lines, in order, once"
    assert tailer.bad_lines == fragments
    assert seen[-1]["writer"] == -1


def test_the_strict_decoder_rejects_bare_non_finite_literals():
    for literal in ("NaN", "Infinity", "-Infinity"):
        with pytest.raises(ValueError):
            decode_event('{"type": "step", "loss": %s}' % literal)
    assert decode_event('{"type": "step", "loss": "nan"}')["loss"] == "nan"
