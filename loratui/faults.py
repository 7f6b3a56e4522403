"""Test-only fault injection, switched on by environment variables the tests set.

Reliability tests must kill the trainer *inside* a checkpoint save and crash it
*inside* a training step, and the advisor's tests must fail a trial while it
reloads the base model in another dtype (out of memory, in real life); these
hooks make those moments reachable in the real program. Unset (always, outside
tests) they cost one dict lookup at import.
"""

from __future__ import annotations

import os
import time

_FAIL_AT_STEP = int(os.environ.get("LORATUI_TEST_FAIL_AT_STEP", "0") or 0)
_SLOW_CHECKPOINT_S = float(os.environ.get("LORATUI_TEST_SLOW_CHECKPOINT", "0") or 0)
_FAIL_LOADING = os.environ.get("LORATUI_TEST_FAIL_LOADING", "")  # a torch dtype: float16, bfloat16, float32


class InjectedFault(RuntimeError):
    """The exception a test asked for."""


def maybe_fail(step: int) -> None:
    if _FAIL_AT_STEP and step == _FAIL_AT_STEP:
        raise InjectedFault(f"injected failure in training step {step} (LORATUI_TEST_FAIL_AT_STEP)")


def maybe_fail_loading(dtype) -> None:
    if _FAIL_LOADING and str(dtype) == f"torch.{_FAIL_LOADING}":
        raise InjectedFault(f"injected failure loading the model in {_FAIL_LOADING} (LORATUI_TEST_FAIL_LOADING)")


def slow_checkpoint_hook():
    if not _SLOW_CHECKPOINT_S:
        return None
    return lambda: time.sleep(_SLOW_CHECKPOINT_S)
