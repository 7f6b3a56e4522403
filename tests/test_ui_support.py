"""Shared helpers for the dashboard tests (no tests here): recorded runs copied into tmp dirs, waits, events."""

from __future__ import annotations

import asyncio
import functools
import html
import json
import re
import shutil
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"


def run_async(test):
    """Run an async test function in a fresh event loop (no pytest async plugin needed)."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return run


def recorded_run(name: str, target: Path, *, until_step: int | None = None) -> Path:
    """A copy of tests/data/ui_<name> as a run directory; `until_step` cuts it mid-run (still live).

    Checkpoints after the cut are left out, as they would not exist yet.
    """
    source = DATA / f"ui_{name}"
    run_dir = target / f"ui-{name.replace('_', '-')}"
    shutil.copytree(source, run_dir)
    if until_step is not None:
        kept = []
        for line in (source / "events.jsonl").read_text().splitlines(keepends=True):
            event = json.loads(line)
            if event["type"] in ("run_finished", "run_failed") or event.get("step", 0) > until_step:
                break
            kept.append(line)
        (run_dir / "events.jsonl").write_text("".join(kept))
        for checkpoint in (run_dir / "checkpoints").glob("step-*"):
            if int(checkpoint.name.removeprefix("step-")) > until_step:
                shutil.rmtree(checkpoint)
    (run_dir / "control.jsonl").touch()
    return run_dir


def append_event(run_dir: Path, event: dict) -> None:
    """Write an event as the trainer would (an acknowledgement, an alert)."""
    line = {"time": time.time(), "attempt": 0, **event}
    with open(run_dir / "events.jsonl", "a") as file:
        file.write(json.dumps(line) + "\n")


def screen_text(app) -> str:
    """The terminal's text as the user sees it, line by line (read from the app's SVG screenshot)."""
    svg = app.export_screenshot()
    lines: dict[int, dict[int, str]] = {}
    for x, length, line, text in re.findall(
            r'<text [^>]*x="([\d.]+)" y="[\d.]+" textLength="([\d.]+)" '
            r'clip-path="url\(#terminal-\d+-line-(\d+)\)">([^<]*)</text>', svg):
        text = html.unescape(text).replace("\xa0", " ")
        cell = float(length) / max(len(text), 1)
        lines.setdefault(int(line), {})[round(float(x) / cell)] = text
    out = []
    for number in sorted(lines):
        row = ""
        for column, text in sorted(lines[number].items()):
            row = row.ljust(column) + text
        out.append(row.rstrip())
    return "\n".join(out)


def commands(run_dir: Path) -> list[dict]:
    path = run_dir / "control.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


async def wait_for(pilot, condition, what: str, timeout: float = 10.0) -> None:
    """Poll `condition` while the app runs; fail with `what` if it never holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await pilot.pause(0.05)


async def caught_up(app, pilot) -> None:
    """The follower has read the whole log and the panels show it."""
    await asyncio.wait_for(app.caught_up.wait(), 20)
    app.redraw()
    await pilot.pause()


def overflow_alert(step: int) -> dict:
    """An `alert` event in the monitor's documented shape (docs/run-directory.md)."""
    return {"type": "alert", "step": step, "kind": "overflow", "severity": "critical",
            "message": "fp16 overflow: 3 of the last 5 steps had inf gradients after calibration",
            "suggestion": "switch_precision", "fix": {"precision": "bf16"},
            "explanation": "fp16 tops out at 65504; module model.layers.1.mlp.down_proj produced 1.2e+05, "
                           "so its gradients became inf and the steps were skipped.",
            "evidence": {"max_abs_activation": 120000.0, "module": "model.layers.1.mlp.down_proj",
                         "fp16_max": 65504.0, "skipped_recent": 3}}

