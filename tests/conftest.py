"""Test-suite setup. Shared helpers live in tests/helpers.py.

Everything is offline and on CPU. The built-in model is built once per machine
(cached under LORATUI_CACHE or ~/.cache/loratui) and shared by all tests.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

# One compute thread per process, set before anything imports torch: the tiny model's steps
# are dominated by per-op overhead, not arithmetic, and tests often run two processes at once
# (a trainer and its reader, two ranks). Spinning OpenMP threads on 2 cores made runs up to
# 10x slower under that contention. Subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


@pytest.fixture
def utc(monkeypatch):
    """Clock times in the dashboard's rows read the same on every machine."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


@pytest.fixture
def live_run(tmp_path):
    """The recorded healthy fp16 run as it was at step 45: live, checkpoints 0, 20 and 40."""
    from test_ui_support import recorded_run

    return recorded_run("healthy_fp16", tmp_path, until_step=45)
