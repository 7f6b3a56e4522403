"""The dashboard's key rules and fix suggestions, without Textual (ui/actions.py is UI-free)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loratui.ui import actions
from loratui.ui import run_model as states
from loratui.ui.run_files import CheckpointSummary

ROOT = Path(__file__).resolve().parent.parent


def test_actions_import_no_textual():
    probe = "import json, sys; import loratui.ui.actions; print(json.dumps(sorted(m for m in sys.modules " \
            "if m.split('.')[0] in ('textual', 'rich', 'torch'))))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize("state, alive, action, refused", [
    (states.RUNNING, True, "switch_precision", False),
    (states.RUNNING, True, "resume", True),
    (states.PAUSED, True, "resume", False),
    (states.PAUSED, True, "pause", True),
    (states.RESTARTING, True, "switch_precision", True),
    (states.RESTARTING, True, "rollback", True),
    (states.RESTARTING, True, "save", False),
    (states.STOPPING, True, "save", True),
    (states.FINISHED, False, "save", True),
    (states.FAILED, False, "lower_lr", True),
    (states.RUNNING, False, "lower_lr", True),
    (states.FINISHED, False, "help", False),
])
def test_why_not(state, alive, action, refused):
    reason = actions.why_not(action, state, alive)
    assert (reason is not None) == refused, reason


def test_suggest_precision_prefers_the_alert_then_advice_then_the_safer_neighbour():
    overflow = {"kind": "overflow", "step": 40, "fix": {"precision": "bf16"}}
    assert actions.suggest_precision(overflow, [], None, {}, "fp16") == ("bf16", "fixes the overflow")
    assert actions.suggest_precision(None, [overflow], None, {}, "fp16") == ("bf16", "fixes the overflow")
    assert actions.suggest_precision(None, [], {"recommendation": "fp32"}, {}, "fp16")[0] == "fp32"
    assert actions.suggest_precision(None, [], None, {"bf16": "emulated"}, "fp16")[0] == "bf16"
    assert actions.suggest_precision(None, [], None, {"bf16": "unsupported"}, "fp16")[0] == "fp32"
    assert actions.suggest_precision(None, [], None, {"bf16": "native"}, "fp32")[0] == "bf16"
    assert actions.suggest_precision(None, [], None, {}, "fp32") == (None, "")


def test_restart_point_and_description():
    newest = CheckpointSummary(40, Path("step-000040"), 2.0, "fp16", 1e-3, 0, None, None)
    assert actions.restart_point({"from_step": 20}, [newest]) == "step 20"
    assert actions.restart_point(None, [newest]) == "the newest checkpoint (step 40)"
    assert actions.restart_point(None, []) == "the newest checkpoint"
    assert actions.describe_restart({"precision": "bf16", "from_step": 20}) == "precision bf16, from step 20"
