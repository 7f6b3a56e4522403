"""Render the screenshots the README and docs/ show (screenshots/*.svg, and .png where a converter exists).

The real dashboard app is fed recorded real runs (tests/data/ui_*, made by
scripts/record_event_logs.py), driven with Textual's pilot and exported as
SVG. PNG copies are made with rsvg-convert, cairosvg or inkscape, whichever
is installed; without one there are only SVGs. A missing recording is an
error (exit 1, before anything is rendered), and so is a recording without
the alert its screenshot opens: the docs would show stale pictures.

    python scripts/render_screenshots.py      (or: make screenshots)
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
OUT = ROOT / "screenshots"
SIZE = (160, 48)
RUN_LIST = "run list"  # not one recording: all of them, as a folder of runs
# name: (recording, options for render)
SCREENSHOTS = {
    "healthy-fp16": ("healthy_fp16", {"until_step": 45}),
    "overflow-alert": ("fp16_overflow", {"open_alert": True}),
    "precision-dialog": ("healthy_fp16", {"until_step": 45, "keys": ("p",)}),
    "after-switch-to-bf16": ("restart_bf16", {"until_step": 50}),
    # What users of TensorBoard and W&B look for: smoothing, a window with a cursor, the logs, a folder of runs.
    "smoothing": ("restart_bf16", {"keys": ("m", "m")}),
    "zoomed-window": ("healthy_fp16", {"keys": ("z", "c", "shift+left", "shift+left")}),
    "log-view": ("fp16_overflow", {"keys": ("slash", *"alert", "enter")}),
    "run-list": (RUN_LIST, {}),
}


class CannotRender(Exception):
    """A screenshot's recording is missing or lacks what the screenshot shows."""


def missing_recordings() -> list[str]:
    from test_ui_support import DATA

    return sorted({f"tests/data/ui_{recording}" for recording, _ in SCREENSHOTS.values()
                   if recording != RUN_LIST and not (DATA / f"ui_{recording}" / "events.jsonl").is_file()})


def save_svg(name: str, svg: str) -> Path:
    path = OUT / f"{name}.svg"
    path.write_text(svg)
    print(f"{path.relative_to(ROOT)}")
    return path


async def render_run_list(name: str) -> Path:
    """`loratui watch runs/` on a folder holding every recording, newest first."""
    from test_ui_support import DATA, recorded_run

    from loratui.ui.run_list import find_runs
    from loratui.ui.screens.run_list import RunListApp

    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        recordings = sorted(path.name.removeprefix("ui_") for path in DATA.glob("ui_*"))
        for recording in recordings:
            run = recorded_run(recording, runs)
            # Written when it was recorded (its last event): the same picture at every rendering.
            last = json.loads((run / "events.jsonl").read_text().splitlines()[-1])["time"]
            os.utime(run / "events.jsonl", (last, last))
        app = RunListApp(Path("runs"), find_runs(runs))
        async with app.run_test(size=(120, 16)) as pilot:
            while len(app.summaries) < len(recordings):
                await pilot.pause(0.1)
            await pilot.pause(0.3)
            svg = app.export_screenshot(title=f"loratui · {name.replace('-', ' ')}")
    return save_svg(name, svg)


async def render(name: str, recording: str, *, until_step: int | None = None, keys: tuple[str, ...] = (),
                 open_alert: bool = False) -> Path:
    from test_ui_support import caught_up, recorded_run

    from loratui.ui.app import DashboardApp

    with tempfile.TemporaryDirectory() as tmp:
        app = DashboardApp(recorded_run(recording, Path(tmp), until_step=until_step))
        async with app.run_test(size=SIZE) as pilot:
            await caught_up(app, pilot)
            await pilot.pause(0.3)
            if open_alert:
                alerts = [entry.alert for entry in app.view.entries if entry.alert]
                if not alerts:
                    raise CannotRender(f"{name}: the recording tests/data/ui_{recording} holds no alert")
                app.show_alert(alerts[0])
            for key in keys:
                await pilot.press(key)
            await pilot.pause(0.3)
            svg = app.export_screenshot(title=f"loratui · {name.replace('-', ' ')}")
    return save_svg(name, svg)


def to_png(svg: Path) -> Path | None:
    png = svg.with_suffix(".png")
    if shutil.which("rsvg-convert"):
        subprocess.run(["rsvg-convert", str(svg), "-o", str(png)], check=True)
    elif shutil.which("inkscape"):
        subprocess.run(["inkscape", str(svg), "--export-filename", str(png)], check=True, capture_output=True)
    else:
        try:
            import cairosvg
        except ImportError:
            return None
        cairosvg.svg2png(url=str(svg), write_to=str(png))
    return png


async def main() -> int:
    os.environ["TZ"] = "UTC"  # event times show as UTC clock times: the same picture anywhere
    time.tzset()
    missing = missing_recordings()
    if missing:
        print(f"render_screenshots: missing recordings: {', '.join(missing)}; make them with "
              f"`python scripts/record_event_logs.py`", file=sys.stderr)
        return 1
    OUT.mkdir(exist_ok=True)
    try:
        rendered = [await (render_run_list(name) if recording == RUN_LIST else render(name, recording, **options))
                    for name, (recording, options) in SCREENSHOTS.items()]
    except CannotRender as exc:
        print(f"render_screenshots: {exc}", file=sys.stderr)
        return 1
    pngs = [to_png(svg) for svg in rendered]
    if pngs[0] is None:
        print("no SVG converter (rsvg-convert, inkscape or cairosvg): SVG only")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
