"""Packing in the real trainer: the monitor reads the same, and resume stays exact.

The probes (fp16 headroom, underflow, gradient fidelity, stale updates) run on
the micro-batch the trainer trained on; a packed micro-batch holds the same
examples as the padded one, so each reading must agree. LoRA dropout is off in
the comparison: dropout draws its masks per element, so two layouts draw
different masks and train on different noise.
"""

import math

import pytest

from helpers import (StepHook, assert_exact_resume, command_at, make_config, ready_monitored_trainer,
                     train_in_process)
from loratui.data.packing import Packer
from loratui.events.jsonl import read_events


def run_config(tmp_path, name, extra):
    return make_config(tmp_path, [f"run.output_dir=\"{tmp_path / 'runs'}\"", f"run.name={name}",
                                  "data.path=\"builtin:tiny-chat-longtail\"", "train.batch_size=4",
                                  "train.warmup_steps=0", "checkpoint.every_steps=100"] + extra)


def numbers(value, prefix=""):
    """Every number in a health check's figures, by dotted path."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return {}
    if isinstance(value, (int, float)):
        return {prefix: float(value)}
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(numbers(item, f"{prefix}.{key}" if prefix else key))
        return out
    if isinstance(value, list):
        out = {}
        for index, item in enumerate(value):
            out.update(numbers(item, f"{prefix}[{index}]"))
        return out
    return {}


PROBED = ("fp16_headroom", "underflow", "fidelity", "stale_update")
# The headroom check counts the batch's rows past its margin: rows are examples when padded and
# packed rows when packed (several examples each), so these two counts differ by construction.
ROW_COUNTS = {"fp16_headroom.rows", "fp16_headroom.rows_over"}


@pytest.mark.parametrize("precision", ["fp16", pytest.param("bf16", marks=pytest.mark.slow)])
def test_the_probes_read_the_same_on_packed_and_padded_batches(tmp_path, precision):
    readings = {}
    for packing in (True, False):
        config = run_config(tmp_path, f"packing-{packing}", [
            f"train.precision={precision}", "train.max_steps=2", "lora.dropout=0.0",
            f"data.packing={str(packing).lower()}", "data.group_by_length=false", "monitor.probe_first_steps=2",
            "monitor.probe_budget=1"])
        trainer = ready_monitored_trainer(config)
        assert isinstance(trainer.stream.collate, Packer) == packing
        try:
            assert trainer.fit()[0] == "completed"
        finally:
            trainer.bus.close()
            trainer.cleanup()
        events = read_events(trainer.run_dir.events)
        readings[packing] = {e["step"]: e["checks"] for e in events if e["type"] == "health"}
    assert sorted(readings[True]) == sorted(readings[False]) == [1, 2]
    compared = set()
    for step, packed_checks in readings[True].items():
        padded_checks = readings[False][step]
        for name in PROBED:
            if name not in padded_checks:
                continue
            assert packed_checks[name]["status"] == padded_checks[name]["status"], (step, name)
            packed_numbers = {k: v for k, v in numbers(packed_checks[name], name).items() if k not in ROW_COUNTS}
            padded_numbers = {k: v for k, v in numbers(padded_checks[name], name).items() if k not in ROW_COUNTS}
            assert packed_numbers.keys() == padded_numbers.keys(), (step, name)
            for key, value in padded_numbers.items():
                other = packed_numbers[key]
                # The layouts sum each gradient in a different order, so the fp16 arithmetic's own noise
                # differs a little: the fidelity figures (the size of that noise) within 10%, and a handful
                # of the ~10^5 fp16 elements land on the other side of the subnormal limit (shares within 1e-4).
                noise = name in ("fidelity", "underflow")
                same = math.isclose(other, value, rel_tol=0.1 if noise else 0.02, abs_tol=1e-4) or \
                    (math.isinf(value) and math.isinf(other))
                assert same, (step, name, key, other, value)
                compared.add(key)
    assert {"fp16_headroom.value", "fidelity.value", "stale_update.value"} <= compared, compared
    if precision == "fp16":
        assert "underflow.value" in compared, compared


class PackingSeen(StepHook):
    """StepHook that also notes whether the trainer's stream packs its batches."""

    def attach(self, trainer):
        self.packed = isinstance(trainer.stream.collate, Packer)


def test_exact_resume_with_packing(tmp_path):
    """Stopped at step 2 and resumed: steps 3-4 lose what the uninterrupted run lost, the adapter is equal."""
    extra = ["train.precision=fp32", "train.max_steps=4", "train.grad_accum=2", "lora.dropout=0.1"]
    watch = PackingSeen({})
    code, full_events, full_dir = train_in_process(run_config(tmp_path, "full", extra), monitor=watch)
    assert code == 0 and watch.packed
    part = run_config(tmp_path, "part", extra)
    stopper = PackingSeen({2: command_at("stop")})
    code, _, part_dir = train_in_process(part, monitor=stopper)
    assert code == 0 and stopper.packed
    resumed = PackingSeen({})
    code, events, _ = train_in_process(part, resume=True, monitor=resumed)
    assert code == 0 and resumed.packed
    assert_exact_resume(full_events, full_dir, events, part_dir, [3, 4])
