"""The measured peak on a CPU never counts from memory the process has already given back.

A long-lived process (a notebook, this test run, the advisor's trials) can
hold memory when the baseline is read and free it while the model loads; the
peak must still count what training holds (at least the model's tensors),
not come out as nothing.
"""

import sys

import pytest
import torch

from loratui.train.memory import PeakMemory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")


def test_memory_freed_after_the_baseline_does_not_hide_the_models_own_tensors():
    held = torch.ones(64 << 20, dtype=torch.float32)  # 256 MiB, resident before the baseline is read
    peak = PeakMemory(torch.device("cpu"))
    del held  # given back to the system while "the model loads"
    model = torch.nn.Linear(2048, 4096)  # 32 MiB of weights
    peak.model_loaded(model)
    model_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / (1 << 20)
    measured = peak.outcome(None)["mem_peak_measured_mib"]
    assert measured >= 0.9 * model_mib, (measured, model_mib)
    assert measured < 256  # and the freed block is not counted as training's

