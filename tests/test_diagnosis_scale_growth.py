"""A loss scale that grows back into overflow right after each backoff (amp.growth_interval far too short) is
flagged within 5 steps of the first skip, with its cause and a fix that trains; a healthy scaler's calibration
and its rare later skips never are."""

import torch

from helpers import make_config, steps_of
from loratui.monitor.detectors import ScaleRegrowth
from test_monitor_support import PersonAtTheKeys, finite, of_type, train_monitored


def scaler_steps(steps: int, *, growth_interval: int, init_scale: float = 2.0 ** 16, big_batches=()):
    """(step, loss, skipped, scale) from a real GradScaler on a real fp16 autocast backward.

    The gradient flowing back into the fp16 output is the scale itself, so every scale above fp16's 65504
    overflows: 2^16 does, 2^15 fits. A batch in `big_batches` has inputs 4x larger, so its weight gradient
    overflows at 2^15 too: a rare overflow after calibration.
    """
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.0)  # the same weights every step: only the scale moves
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=growth_interval)
    for step in range(1, steps + 1):
        scale = scaler.get_scale()
        x = torch.full((1, 4), 4.0 if step in big_batches else 1.0)
        with torch.autocast("cpu", dtype=torch.float16):
            out = layer(x)
        loss = out.float().sum()
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        skipped = not all(torch.isfinite(p.grad).all() for p in layer.parameters())
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        yield step, loss.item(), skipped, scale


def watch(steps, *, quick: int = 10, counted: int = 0):
    regrowth = ScaleRegrowth(quick=quick)
    regrowth.reset(applies=True, clean_steps_counted=counted)
    return [(step, skipped, regrowth.observe(step, loss, skipped, scale)) for step, loss, skipped, scale in steps]


def test_a_scale_growing_back_into_overflow_is_flagged_within_5_steps_of_the_first_skip():
    readings = watch(scaler_steps(12, growth_interval=1))
    first_skip = next(step for step, skipped, _ in readings if skipped)
    flagged = next(step for step, _, reading in readings if reading is not None and reading.bad)
    assert flagged - first_skip <= 5
    details = next(r for _, _, r in readings if r is not None and r.bad).details
    assert details["steps_before_growth"] == 1  # growth_interval = 1, measured from the scale alone
    assert len(details["overflow_steps"]) == 2 and details["overflow_scales"][0] == 2.0 ** 16


def test_while_the_pattern_lasts_the_skip_check_says_so_not_calibrating():
    regrowth = ScaleRegrowth(quick=10)
    regrowth.reset(applies=True)
    for step, loss, skipped, scale in scaler_steps(5, growth_interval=1):
        regrowth.observe(step, loss, skipped, scale)
    assert regrowth.check["status"] == "alert" and regrowth.check["value"] == 0.5


def test_calibration_and_rare_skips_of_a_healthy_scaler_are_not_flagged():
    # Calibration from 2^20 (five skips in a row at falling scales), then two rare overflows at 2^15.
    readings = watch(scaler_steps(300, growth_interval=2000, init_scale=2.0 ** 20, big_batches=(100, 200)))
    assert sum(skipped for _, skipped, _ in readings) == 7
    assert not any(reading is not None and reading.bad for _, _, reading in readings)
    # A scaler that grows back after 20 clean steps skips about 5% of steps: below skip_rate_max's 10%.
    readings = watch(scaler_steps(200, growth_interval=20))
    assert sum(skipped for _, skipped, _ in readings) > 5
    assert not any(reading is not None and reading.bad for _, _, reading in readings)


def test_clean_steps_a_restored_scaler_had_counted_are_not_mistaken_for_a_quick_growth():
    # A checkpoint taken 1999 clean steps into the level: the growth one step later is the 2000th, not the first.
    steps = [(1, 5.0, False, 1024.0), (2, 5.0, True, 2048.0), (3, 5.0, False, 1024.0), (4, 5.0, True, 2048.0)]
    assert not any(r is not None and r.bad for _, _, r in watch(steps, counted=1999))
    assert watch(steps, counted=0)[-1][2].bad  # the same figures from a fresh scaler: growth after 1 step, twice


def test_the_real_trainer_flags_it_and_bf16_trains_without_a_skip(tmp_path):
    """amp.growth_interval = 1 with the default calibration: the alert, its cause and the fix a person applies."""
    config = make_config(tmp_path, ["train.precision=fp16", "amp.growth_interval=1", "train.batch_size=2",
                                    "train.max_steps=14", "checkpoint.every_steps=1000", "monitor.probe_first_steps=6",
                                    f'run.output_dir="{tmp_path}"'])
    person = PersonAtTheKeys()
    code, events, _ = train_monitored(config, on_event=person)
    assert code == 0
    alert = person.applied
    assert alert is not None, [(e["kind"], e["step"]) for e in of_type(events, "alert")]
    first_skip = next(e["step"] for e in steps_of(events, attempt=0) if e["skipped"])
    assert alert["kind"] == "overflow" and alert["step"] - first_skip <= 5
    assert alert["suggestion"] == "switch_precision" and alert["fix"]["precision"] in ("bf16", "fp32")
    assert "growth interval is too short" in alert["explanation"]
    assert alert["evidence"]["growth_interval"] == 1
    # The health panel agrees: its skip check is an alert, not "calibrating: skips expected".
    health = next(e for e in of_type(events, "health", attempt=0) if e["step"] == alert["step"])
    assert health["checks"]["skip_rate"]["status"] == "alert"
    after = steps_of(events, attempt=1)
    assert after and all(e["precision"] == alert["fix"]["precision"] for e in after)
    assert not any(e["skipped"] for e in after) and all(finite(e["loss"]) for e in after)
    assert not of_type(events, "alert", attempt=1)

