"""The dashboard never imports torch, transformers or peft: its first frame must not wait for them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_ui_support import recorded_run

HEAVY = ("torch", "transformers", "peft", "accelerate", "loratui.train")

PROBE = """
import asyncio, json, sys
from loratui.ui.app import DashboardApp
from loratui.ui import launch  # the command line's entry points, too

async def main():
    app = DashboardApp(sys.argv[1])
    async with app.run_test(size=(120, 40)) as pilot:
        await asyncio.wait_for(app.caught_up.wait(), 20)
        app.redraw()
        await pilot.pause()
        drawn = app.view is not None and app.view.header.step > 0
    heavy = sorted(name for name in sys.modules if name.split(".")[0] in {HEAVY_ROOTS} or name.startswith("loratui.train"))
    print(json.dumps({"drawn": drawn, "heavy": heavy}))

asyncio.run(main())
"""


def test_dashboard_imports_no_torch(tmp_path):
    run_dir = recorded_run("healthy_fp16", tmp_path)
    roots = ", ".join(repr(name) for name in HEAVY if "." not in name)
    result = subprocess.run([sys.executable, "-c", PROBE.replace("{HEAVY_ROOTS}", "{" + roots + "}"), str(run_dir)],
                            capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["drawn"], "the dashboard drew no step"
    assert report["heavy"] == [], f"the dashboard imported {report['heavy']}"
