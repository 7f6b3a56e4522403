"""run.report_to: step figures, health, GPU figures and alerts reach the trackers, read back from their files.

TensorBoard is tested on a real run (its event files read back with
EventAccumulator); wandb (offline), MLflow and trackio only where installed.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pytest

from helpers import steps_of
from test_integration_support import docs_snippet
from loratui.cli import main as loratui_main
from loratui.config import load_config, render_toml
from loratui.events.jsonl import read_events
from loratui.run_dir import prepare_run_dir
from loratui.trackers import TRACKERS, TrackerSink, unavailable_trackers
from loratui.entry import train_in_run_dir



def accumulator(directory: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    loaded = EventAccumulator(str(directory))
    loaded.Reload()
    return loaded


def texts(loaded, tag: str) -> list[tuple[int, str]]:
    return [(t.step, t.tensor_proto.string_val[0].decode()) for t in loaded.Tensors(f"{tag}/text_summary")]


# A run in events, as the trainer and the monitor publish them.
RUN = [
    {"type": "run_started", "step": 0, "precision": "fp16", "world_size": 2, "device": "cuda:0",
     "config": {"run": {"name": "tracked"}, "train": {"learning_rate": 2e-3, "max_steps": 8},
                "lora": {"target_modules": ["q_proj", "v_proj"]}}},
    {"type": "step", "step": 5, "loss": float("nan"), "grad_norm": float("inf"), "lr": 1e-3, "precision": "fp16",
     "scale": 32768.0, "skipped": True, "tokens_per_s": 900.0, "mem_allocated_mib": None, "attempt": 0},
    {"type": "alert", "step": 5, "kind": "overflow", "severity": "critical", "message": "fp16 overflow",
     "suggestion": "switch_precision", "evidence": {"skipped_recent": 3}},
    {"type": "health", "step": 5, "checks": {"stale_update": {"status": "ok", "value": 0.01, "summary": ""}}},
    {"type": "gpu", "step": 5, "devices": [{"index": 0, "name": "H100", "util_pct": 97, "mem_used_mib": 30512.0,
                                           "power_w": None}]},
    {"type": "step", "step": 6, "loss": 2.5, "grad_norm": 1.0, "lr": 1e-3, "precision": "fp16", "scale": 16384.0,
     "skipped": False, "attempt": 0},
    {"type": "alert_resolved", "step": 7, "kind": "overflow"},
    {"type": "run_finished", "step": 8, "reason": "completed"},
]


def replay(names: list[str], run_dir: Path) -> TrackerSink:
    sink = TrackerSink(names, run_dir, "tracked")
    for event in RUN:
        sink.write({"time": 0.0, "attempt": 0, **event})
    sink.close()
    return sink


def test_tensorboard_mirrors_a_real_run(tmp_path):
    rows = "".join(f'{{"text": "Question: What is {i} plus {i}? Answer: {2 * i}."}}\n' for i in range(32))
    (tmp_path / "rows.jsonl").write_text(rows)
    config_path = tmp_path / "config.toml"
    config_path.write_text(docs_snippet("report-to") + '\nname = "tracked"\n[data]\npath = "rows.jsonl"\n'
                           'format = "text"\n')
    config = load_config(config_path, ["train.precision=fp32", "train.max_steps=3", "train.batch_size=4",
                                       "train.warmup_steps=0"])
    assert config.run.report_to == ["tensorboard"]
    run_dir = prepare_run_dir(config, resume=False, config_text=render_toml(config))
    assert train_in_run_dir(run_dir, console=False) == 0
    steps = steps_of(read_events(run_dir.events))
    loaded = accumulator(run_dir.root / "tensorboard")
    assert [(s.step, s.value) for s in loaded.Scalars("train/loss")] == \
        [(e["step"], pytest.approx(e["loss"], rel=1e-6)) for e in steps]
    assert [s.value for s in loaded.Scalars("train/lr")] == [pytest.approx(e["lr"]) for e in steps]
    assert texts(loaded, "events") == [(3, "run finished at step 3: completed")]
    hparams = glob.glob(str(run_dir.root / "tensorboard" / "*" / "hparams.yml"))
    assert hparams and "train.learning_rate: 0.002" in Path(hparams[0]).read_text()


def test_alerts_health_and_gpu_figures_reach_tensorboard(tmp_path):
    replay(["tensorboard"], tmp_path)
    loaded = accumulator(tmp_path / "tensorboard")
    scalars = lambda tag: [(s.step, s.value) for s in loaded.Scalars(tag)]  # noqa: E731
    assert scalars("alerts/overflow") == [(5, 2.0), (7, 0.0)]
    assert texts(loaded, "alerts") == [(5, "[critical] overflow at step 5: fp16 overflow "
                                           "(suggested fix: switch_precision)")]
    assert scalars("train/skipped") == [(5, 1.0), (6, 0.0)]
    assert scalars("train/scale") == [(5, 32768.0), (6, 16384.0)]
    assert scalars("gpu0/util_pct") == [(5, 97.0)]
    assert scalars("health/checks/stale_update/value") == [(5, pytest.approx(0.01))]
    assert "train/mem_allocated_mib" not in loaded.Tags()["scalars"]  # null figures are left out


def test_a_failing_tracker_is_switched_off_and_training_goes_on(tmp_path, monkeypatch, capsys):
    from accelerate.tracking import TensorBoardTracker

    def broken(self, values, step=None, **kwargs):
        raise ConnectionError("tracker server went away")

    monkeypatch.setattr(TensorBoardTracker, "log", broken)
    sink = replay(["tensorboard"], tmp_path)
    assert sink.trackers == []
    assert capsys.readouterr().err.count("tracker tensorboard failed and is switched off") == 1


def test_a_tracker_that_is_not_installed_is_a_config_problem(tmp_path, capsys):
    missing = unavailable_trackers(TRACKERS)
    if not missing:
        pytest.skip("every tracker is installed here")
    config = tmp_path / "config.toml"
    config.write_text(f'[run]\nreport_to = ["{missing[0]}"]\n')
    assert loratui_main(["check", str(config)]) == 2
    assert f'run.report_to includes "{missing[0]}", which is not installed here' in capsys.readouterr().err


def wandb_records(path: Path):
    """The records of an offline wandb run file (a LevelDB-style log of protobuf records)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block, offset, payload = path.read_bytes(), 32768, 7, b""  # 7: the ':W&B' file header
    while offset + 7 <= len(data):
        if block - offset % block < 7:  # a block's tail too short for a record header is padding
            offset += block - offset % block
            continue
        length, kind = int.from_bytes(data[offset + 4:offset + 6], "little"), data[offset + 6]
        payload += data[offset + 7:offset + 7 + length]
        offset += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = Record()
            record.ParseFromString(payload)
            payload = b""
            yield record


def test_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    replay(["wandb"], tmp_path)
    [run_file] = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    rows = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            for record in wandb_records(Path(run_file)) if record.WhichOneof("record_type") == "history"]
    assert [(r["train/step"], r["train/scale"]) for r in rows if "train/scale" in r] == [(5, 32768), (6, 16384)]
    assert [r["alerts/overflow"] for r in rows if "alerts/overflow" in r] == [2, 0]
    assert any(r.get("alerts", "").startswith("[critical] overflow at step 5") for r in rows)


def test_mlflow(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")  # the local store; mlflow-skinny alone needs a tracking server
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    replay(["mlflow"], tmp_path)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("loratui").experiment_id])
    assert run.info.run_name == "tracked" and run.data.params["train.learning_rate"] == "0.002"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/scale")] == \
        [(5, 32768.0), (6, 16384.0)]
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "alerts/overflow")] == \
        [(5, 2.0), (7, 0.0)]


def test_trackio(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))  # read when trackio is imported
    pytest.importorskip("trackio")
    from trackio.sqlite_storage import SQLiteStorage

    replay(["trackio"], tmp_path)
    logs = SQLiteStorage.get_logs("loratui", "tracked")
    assert [(row["train/step"], row["train/scale"]) for row in logs if "train/scale" in row] == \
        [(5, 32768.0), (6, 16384.0)]
    assert [row["alerts/overflow"] for row in logs if "alerts/overflow" in row] == [2, 0]
