"""The event bus and log: strict JSON lines, non-finite numbers as strings, whole lines, console lines,
and the fields of the trainer's run_started and step events."""

import io
import json
import math
import threading

import pytest

from helpers import make_config, steps_of, train_in_process
from loratui.config import render_toml
from loratui.events.bus import EventBus
from loratui.events.console import ConsoleSink
from loratui.events.encode import as_float, decode_event, encode_event
from loratui.events.jsonl import EventTailer, JsonlSink, read_events
from loratui.run_dir import prepare_run_dir
from loratui.train.trainer import Trainer


def test_non_finite_numbers_become_strings_and_parse_back():
    line = encode_event({"type": "step", "loss": math.nan, "grad_norm": math.inf, "nested": [-math.inf, 1.5]})
    assert "NaN" not in line and "Infinity" not in line
    event = decode_event(line)
    assert event["loss"] == "nan" and event["grad_norm"] == "inf" and event["nested"] == ["-inf", 1.5]
    assert math.isnan(as_float(event["loss"])) and as_float(event["nested"][0]) == -math.inf


def test_strict_parser_rejects_nan_literals():
    with pytest.raises(ValueError):
        decode_event('{"type": "step", "loss": NaN}')


def test_bus_stamps_and_fans_out_whole_lines_from_many_threads(tmp_path):
    path = tmp_path / "events.jsonl"
    bus = EventBus(attempt=3)
    bus.add_sink(JsonlSink(path))

    def publish(worker):
        for i in range(500):
            bus.publish("step", step=i, worker=worker, loss=0.5)

    threads = [threading.Thread(target=publish, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bus.close()
    events = read_events(path)
    assert len(events) == 2000
    assert all(e["attempt"] == 3 and e["type"] == "step" and "time" in e for e in events)
    for line in path.read_text().splitlines():
        json.loads(line)  # every line is whole


def test_tailer_holds_back_a_partial_line_until_it_is_complete(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"type": "a"}\n{"type": "b"')
    tailer = EventTailer(path)
    assert [e["type"] for e in tailer.read_new()] == ["a"]
    with open(path, "ab") as f:
        f.write(b', "x": 1}\n')
    assert tailer.read_new() == [{"type": "b", "x": 1}]
    assert tailer.offset == path.stat().st_size


def test_writer_after_a_torn_line_starts_on_a_fresh_line(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"type": "a"}\n{"type": "tor')
    sink = JsonlSink(path)
    sink.write({"type": "b"})
    sink.close()
    tailer = EventTailer(path)
    assert [e["type"] for e in tailer.read_new()] == ["a", "b"]
    assert tailer.bad_lines == 1


def test_console_prints_one_line_per_log_every_steps():
    out = io.StringIO()
    console = ConsoleSink(log_every=5, max_steps=12, stream=out)
    for step in range(1, 13):
        console.write({"type": "step", "step": step, "loss": 1.0 / step, "grad_norm": 0.5, "lr": 1e-3,
                       "precision": "fp16", "scale": 65536.0, "skipped": step == 3, "tokens_per_s": 1000.0,
                       "mem_allocated_mib": None})
    lines = out.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["5/12", "10/12", "12/12"]
    assert "\r" not in out.getvalue()
    assert lines[0] == ("step 5/12 loss 0.2 grad_norm 0.5 lr 1.000e-03 precision fp16 scale 65536 "
                        "skipped 1 tok/s 1000 mem -")


def test_console_says_how_many_rows_were_kept_skipped_and_dropped(tmp_path):
    rows = tmp_path / "rows.jsonl"
    good = [f'{{"text": "Question: What is {i} plus {i}? Answer: {2 * i}."}}\n' for i in range(6)]
    too_long = '{"text": "' + " ".join(["a long row that goes on"] * 20) + '"}\n'
    rows.write_text("".join(good) + "not json\n" + '{"text": ""}\n' + too_long)
    config = make_config(tmp_path, [f'data.path="{rows}"', 'data.format="text"', 'data.on_bad_row="skip"',
                                    'data.on_too_long="drop"', "data.max_length=32", "train.precision=fp32",
                                    f'run.output_dir="{tmp_path}"'])
    out = io.StringIO()
    bus = EventBus()
    bus.add_sink(ConsoleSink(log_every=10, max_steps=config.train.max_steps, stream=out))
    trainer = Trainer(config, prepare_run_dir(config, resume=False, config_text=render_toml(config)), bus)
    trainer.setup()
    trainer.cleanup()
    bus.close()
    data_lines = [line for line in out.getvalue().splitlines() if line.startswith("data: ")]
    assert len(data_lines) == 1
    line = data_lines[0]
    assert line.startswith("data: 6 examples from 9 rows; 2 bad rows skipped (1 "), line
    assert line.endswith("; 1 dropped as longer than max_length"), line


NONFINITE = ("nan", "inf", "-inf")


def has_kind(value, kind) -> bool:
    """kind: None, "number" (a float or a non-finite string), or a type matched exactly (True is no int)."""
    if kind is None:
        return value is None
    if kind == "number":
        return type(value) is float or value in NONFINITE
    return type(value) is kind


def assert_fields(event: dict, fields: dict) -> None:
    for name, kinds in fields.items():
        assert name in event, f"{event['type']} event has no {name}: {event}"
        assert any(has_kind(event[name], kind) for kind in kinds), \
            f"{event['type']}.{name} = {event[name]!r}, expected one of {kinds}"


COMMON_FIELDS = {"type": (str,), "time": (float,), "attempt": (int,), "step": (int,)}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_run_started_and_step_events_have_every_documented_field(tmp_path, precision):
    config = make_config(tmp_path, [f"train.precision={precision}", "train.max_steps=2", "train.batch_size=2",
                                    f'run.output_dir="{tmp_path}"'])
    code, events, _ = train_in_process(config)
    assert code == 0
    started = next(e for e in events if e["type"] == "run_started")
    assert_fields(started, {**COMMON_FIELDS, "precision": (str,), "requested_precision": (str,), "device": (str,),
                            "device_name": (str,), "world_size": (int,), "versions": (dict,),
                            "trainable_params": (int,), "total_params": (int,), "loss_scaling": (bool,),
                            "adapter_dtype": (str,), "max_steps": (int,), "capabilities": (dict,),
                            "resumed_from": (None,), "config": (dict,), "run_dir": (str,), "pid": (int,)})
    assert started["precision"] == started["requested_precision"] == precision
    assert started["device"] == "cpu" and started["world_size"] == 1 and started["attempt"] == 0
    assert set(started["versions"]) == {"loratui", "python", "torch", "transformers", "peft", "accelerate"}
    assert all(type(v) is str and v for v in started["versions"].values())
    assert 0 < started["trainable_params"] < started["total_params"]
    assert started["loss_scaling"] == (precision == "fp16")
    assert started["config"]["train"]["precision"] == precision and started["config"]["lora"]["r"] == config.lora.r
    steps = steps_of(events)
    assert [e["step"] for e in steps] == [1, 2]
    for step in steps:
        assert_fields(step, {**COMMON_FIELDS, "loss": ("number",), "grad_norm": ("number",), "lr": (float,),
                             "precision": (str,), "scale": (float,) if precision == "fp16" else (None,),
                             "skipped": (bool,), "nonfinite_grads": (int,), "tokens": (int,),
                             "tokens_per_s": (float,), "step_time_s": (float,), "epoch": (int,),
                             # Memory figures come from CUDA's allocator: null on CPU.
                             "mem_allocated_mib": (None,), "mem_reserved_mib": (None,), "mem_peak_mib": (None,)})
        assert step["precision"] == precision and step["attempt"] == 0
        assert step["tokens"] > 0 and step["tokens_per_s"] > 0 and step["step_time_s"] > 0
