"""Test-suite setup. Shared helpers live in tests/helpers.py.

Everything is offline and on CPU. The built-in model is built once per machine
(cached under LORATUI_CACHE or ~/.cache/loratui) and shared by all tests.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# One compute thread per process, set before anything imports torch: the tiny model's steps
# are dominated by per-op overhead, not arithmetic, and tests often run two processes at once
# (a trainer and its reader, two ranks). Spinning OpenMP threads on 2 cores made runs up to
# 10x slower under that contention. Subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
