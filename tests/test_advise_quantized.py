"""`loratui advise` when the full-precision base does not fit: a real 4-bit (nf4) trial, and memory for every trial.

The device is made up (`--device-memory`, as `loratui check` takes it): its size
is chosen from the memory planner's own estimates for this config, between the
4-bit base's estimate and the smallest full-precision one, so that only the
quantized base fits. Every trial still trains for real on the CPU; the nf4 trial
runs bitsandbytes' 4-bit layers here.
"""

import json

import pytest

from loratui.advise import trials
from loratui.advise.cli import advise_command
from loratui.advise.fit import DeviceBudget, TrialMemory
from loratui.advise.render import plain_text
from loratui.advise.trials import plan_trials
from loratui.cli import main
from loratui.config import load_config
from loratui.events.jsonl import read_events
from loratui.hardware import detect, resolve_precision
from loratui.model.memory_plan import GIB, MARGIN, MIB

CONFIG = '[run]\nname = "tight"\noutput_dir = "runs"\n[train]\nbatch_size = 2\n'
STEPS = 3


def estimate(config, precision: str, quantization: str) -> int:
    return TrialMemory(config, DeviceBudget(None, "unknown")).plan(precision, "fp32", quantization).estimate.total


@pytest.fixture(scope="module")
def tight(tmp_path_factory):
    """advise --json on a device between the nf4 estimate and the smallest full-precision one."""
    work = tmp_path_factory.mktemp("advise-tight")
    (work / "config.toml").write_text(CONFIG)
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.chdir(work)
    config = load_config("config.toml", [])
    compute = resolve_precision("auto", detect(config.train.device))
    quantized = estimate(config, compute, "nf4")
    smallest_full = min(estimate(config, p, "none") for p in ("fp32", "bf16", "fp16"))
    assert quantized < smallest_full  # the premise: 4-bit weights are what makes the difference
    device_gib = (quantized + smallest_full) / 2 / (1 - MARGIN) / GIB

    # What each trial trained on: 4-bit layers in its model or not (the reload is the point of the quantized trial).
    seen = []
    real_train = trials._train

    def train_and_look(trainer, record, *args):
        from bitsandbytes.nn import Linear4bit

        seen.append((record.plan.name, any(isinstance(m, Linear4bit) for m in trainer.model.modules())))
        return real_train(trainer, record, *args)

    monkeypatch.setattr(trials, "_train", train_and_look)
    capsys = _Capture()
    with capsys:
        code = advise_command("config.toml", [], steps=STEPS, as_json=True, device_memory_gib=device_gib)
    monkeypatch.undo()
    assert code == 0, capsys.err
    advice = json.loads(capsys.out)
    root = work / "runs" / "tight"
    return dict(advice=advice, seen=seen, compute=compute, quantized=quantized, smallest_full=smallest_full,
                device_gib=device_gib, root=root, events=read_events(root / "advise" / "events.jsonl"))


class _Capture:
    """stdout and stderr of the in-process command (a module fixture cannot use capsys)."""

    def __enter__(self):
        import io
        import sys

        self._saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = self._out, self._err = io.StringIO(), io.StringIO()
        return self

    def __exit__(self, *exc):
        import sys

        sys.stdout, sys.stderr = self._saved
        self.out, self.err = self._out.getvalue(), self._err.getvalue()


def test_only_the_quantized_base_fits_and_is_recommended(tight):
    advice = tight["advice"]
    name = f"{tight['compute']}-nf4"
    assert list(advice["trials"]) == ["bf16", "fp16", "fp32", name]
    assert (advice["recommended_trial"], advice["recommendation"], advice["quantization"]) == (
        name, tight["compute"], "nf4")
    first = advice["reasons"][0]
    assert first.startswith("only the quantized base fits") and 'model.quantization = "nf4"' in first
    assert f"estimated peak {tight['quantized'] / MIB:.1f} MiB" in first
    assert f"{advice['trials'][name]['peak_memory_mib']:.0f} MiB" in first
    assert advice["device_memory_mib"] == round(int(tight["device_gib"] * GIB) / MIB, 1)
    assert "--device-memory" in advice["device_memory"]


def test_each_trial_reports_its_memory_and_quantization(tight):
    for name, trial in tight["advice"]["trials"].items():
        quantization = "nf4" if name.endswith("-nf4") else "none"
        assert trial["quantization"] == quantization
        config = load_config(str(tight["root"].parent.parent / "config.toml"), [])
        assert trial["estimated_memory_mib"] == round(estimate(config, trial["precision"], quantization) / MIB, 1)
        assert trial["peak_memory_mib"] > 0 and trial["memory_measure"] == "process_peak_rss"
        assert trial["steps_done"] == STEPS and trial["error"] is None
        if quantization == "nf4":
            assert (trial["fits"], trial["verdict"], trial["reasons"]) == (True, "healthy", [])
        else:
            assert (trial["fits"], trial["verdict"]) == (False, "rejected")
            assert trial["reasons"][0].startswith("does not fit a ")


def test_the_quantized_trial_trains_a_4bit_base_from_the_same_start(tight):
    advice, name = tight["advice"], f"{tight['compute']}-nf4"
    # Both passes: every trial's model has 4-bit layers exactly when the trial is the quantized one, so
    # the base was reloaded quantized for it and unquantized again after it (the reverse pass starts with it).
    order = ["bf16", "fp16", "fp32", name]
    assert tight["seen"] == [(n, n == name) for n in order + order[::-1]]
    steps = {n: [e for e in tight["events"] if e["type"] == "step" and e["attempt"] == t["attempt"]]
             for n, t in advice["trials"].items()}
    assert [s["step"] for s in steps[name]] == list(range(1, STEPS + 1))
    assert [s["tokens"] for s in steps[name]] == [s["tokens"] for s in steps["bf16"]]  # the same batches


def test_the_table_shows_memory_fit_and_quantization(tight):
    text = plain_text(tight["advice"], tight["root"])
    assert f'recommendation: {tight["compute"]} with model.quantization = "nf4"' in text
    for label in ("base quantization", "estimated memory MiB", "fits the device", "peak memory MiB"):
        assert label in text
    row = next(line for line in text.splitlines() if line.startswith("fits the device"))
    assert row.split()[-4:] == ["NO", "NO", "NO", "yes"]


def test_no_quantized_trial_when_the_base_fits_or_is_quantized_already(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.toml").write_text(CONFIG)
    config = load_config("config.toml", [])
    roomy = TrialMemory(config, DeviceBudget(16 * GIB, "a 16 GiB device"))
    assert [p.name for p in plan_trials(config, roomy)] == ["bf16", "fp16", "fp32"]
    unknown = TrialMemory(config, DeviceBudget(None, "unknown"))
    assert [p.name for p in plan_trials(config, unknown)] == ["bf16", "fp16", "fp32"]
    tiny = DeviceBudget(1 * MIB, "a 1 MiB device")
    assert [p.name for p in plan_trials(config, TrialMemory(config, tiny), "fp16")][-1] == "fp16-nf4"
    quantized = load_config("config.toml", ['model.quantization="nf4"'])
    plans = plan_trials(quantized, TrialMemory(quantized, tiny))
    assert [p.name for p in plans] == ["bf16", "fp16", "fp32"] and {p.quantization for p in plans} == {"nf4"}


@pytest.mark.parametrize("size", ["0", "-4"])
def test_a_device_memory_that_is_no_size_is_bad_input(tmp_path, monkeypatch, capsys, size):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.toml").write_text(CONFIG)
    assert main(["advise", "config.toml", f"--device-memory={size}"]) == 2
    err = capsys.readouterr().err
    assert "--device-memory" in err and "positive number of GiB" in err and "Traceback" not in err


def test_a_run_told_of_a_quantized_choice_says_it_keeps_its_quantization(tight, tmp_path):
    from loratui.advise.advisor import DEFAULT_STEPS
    from loratui.advise.report import fingerprint, write_advice
    from loratui.advise.run import choose_precision_for_run
    from loratui.events.bus import CallbackSink, EventBus
    from loratui.run_dir import RunDir

    config = load_config(str(tight["root"].parent.parent / "config.toml"), [])
    run_dir = RunDir(tmp_path / "run")
    run_dir.root.mkdir()
    # The quantized advice, as if measured for this run's own trial length (so the run reuses it, measuring nothing).
    steps = min(DEFAULT_STEPS, config.train.max_steps)
    write_advice(run_dir.advice, {**tight["advice"],
                                  "fingerprint": fingerprint(config, detect(config.train.device), steps)})
    told = []
    bus = EventBus()
    bus.add_sink(CallbackSink(told.append))
    assert choose_precision_for_run(config, run_dir, bus) == tight["compute"]
    notices = [e["message"] for e in told if e["type"] == "notice"]
    assert any('model.quantization = "nf4"' in n and 'keeps model.quantization = "none"' in n for n in notices)
    assert not (run_dir.root / "advise").exists()  # reused: no trials ran
