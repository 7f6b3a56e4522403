"""Shared fixtures: configs for the built-in tiny model, run directories, event readers.

Everything is offline and on CPU. The built-in model is built once per machine
(cached under LORATUI_CACHE or ~/.cache/loratui) and shared by all tests.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


@pytest.fixture
def write_config(tmp_path):
    """Write a TOML config into tmp_path; returns its path. Runs land in tmp_path/runs."""

    def write(text: str = "", name: str = "config.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture
def fast_overrides():
    """Overrides for short, fast fp32 CPU runs of the built-in model."""
    return ["train.precision=fp32", "train.max_steps=6", "train.warmup_steps=0", "train.batch_size=4",
            "checkpoint.every_steps=3", "monitor.log_every=1"]
