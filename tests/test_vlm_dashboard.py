"""A vision-language run on the dashboard and in headless lines: images/s beside tokens/s, image counts.

The events come from a real 3-step run of the built-in tiny VLM; the header is the
dashboard's own widget code, the line the headless console's.
"""

from __future__ import annotations

import io

from helpers import make_config, train_in_process
from test_ui_history import model_of

from loratui.events.console import ConsoleSink
from loratui.ui.widgets.run_header import RunHeader

VLM = ["model.name_or_path=\"builtin:tiny-vlm\"", "data.path=\"builtin:tiny-shapes\"", "train.batch_size=4",
       "train.max_steps=3", "monitor.probe_every=1000", "monitor.probe_first_steps=0"]


def test_images_per_second_beside_tokens_per_second_and_the_image_count(tmp_path):
    config = make_config(tmp_path, VLM + [f"run.output_dir=\"{tmp_path / 'runs'}\"", "run.name=vlm"])
    code, events, run_dir = train_in_process(config)
    assert code == 0, events[-1]
    view = model_of(run_dir.events).snapshot()
    last = [e for e in events if e["type"] == "step"][-1]
    assert view.header.images_per_s == last["images_per_s"] > 0
    second_line = "".join(text.plain for text, _ in RunHeader()._second_line(view.header))
    assert "tok/s" in second_line and "img/s" in second_line
    assert any("1024 images" in entry.text for entry in view.entries)  # the data event's count

    out = io.StringIO()
    console = ConsoleSink(log_every=1, max_steps=3, stream=out)
    console.write(last)
    assert f"img/s {last['images_per_s']:.1f}" in out.getvalue()


def test_a_text_run_shows_no_image_rate():
    out = io.StringIO()
    ConsoleSink(log_every=1, max_steps=1, stream=out).write(
        {"type": "step", "step": 1, "loss": 1.0, "grad_norm": 0.5, "lr": 1e-3, "precision": "fp32", "scale": None,
         "skipped": False, "tokens_per_s": 10.0, "mem_allocated_mib": None})
    assert "img/s" not in out.getvalue()
