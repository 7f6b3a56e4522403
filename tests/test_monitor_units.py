"""The monitor's parts on synthetic inputs: detectors, episodes, fp32 arithmetic, peaks, gradients, staleness."""

import math
import random

import pytest
import torch

from loratui.monitor.activations import FP16_MAX, ActivationPeaks, display_name
from loratui.monitor.alerts import Alert, AlertBook
from loratui.monitor.detectors import LossSpikes, LossTrend, ScaleWatch, SkipWatch
from loratui.monitor.diagnosis import row_losses
from loratui.monitor.fp32_math import fp32_math
from loratui.monitor.gradients import compare_gradients
from loratui.monitor.schedule import ProbeSchedule
from loratui.monitor.staleness import UpdateWatch


def alert(kind, step=1):
    return Alert(kind, "warning", "m", "none", {}, "e", {}, step)


class Recorder:
    def __init__(self):
        self.events = []

    def __call__(self, type, **fields):
        self.events.append({"type": type, **fields})
        return fields


def test_one_alert_per_episode_resolved_only_by_the_signal_that_opened_it():
    published = Recorder()
    book = AlertBook(publish=published)
    for step in range(1, 4):
        book.bad("overflow", "skips", lambda: alert("overflow", step), healthy_needed=2)
    book.healthy("overflow", "probe:headroom", 4)  # another signal's health says nothing about this one
    book.healthy("overflow", "skips", 5)
    book.bad("overflow", "skips", lambda: alert("overflow", 6), healthy_needed=2)  # the streak starts over
    book.healthy("overflow", "skips", 7)
    assert book.is_open("overflow")
    book.healthy("overflow", "skips", 8)
    assert [e["type"] for e in published.events] == ["alert", "alert_resolved"]
    assert published.events[1]["step"] == 8 and published.events[1]["opened_at"] == 1


def test_resolve_all_at_a_restart():
    published = Recorder()
    book = AlertBook(publish=published)
    book.bad("divergence", "trend", lambda: alert("divergence"), healthy_needed=10)
    book.bad("loss_spike", "loss", lambda: alert("loss_spike"), healthy_needed=10)
    book.resolve_all(40, "restart")
    assert book.open_kinds() == []
    assert sorted(e["kind"] for e in published.events if e["type"] == "alert_resolved") == ["divergence",
                                                                                             "loss_spike"]


def noisy_falling_losses(steps, seed, start=6.0, end=2.0, noise=0.15):
    """A fine-tuning loss curve with step-to-step noise like the tiny model's at batch size 4 (~7%)."""
    rng = random.Random(seed)
    return [end + (start - end) * math.exp(-step / 60) + rng.gauss(0, noise) for step in range(steps)]


@pytest.mark.parametrize("seed", range(5))
def test_no_spike_or_divergence_in_a_noisy_falling_loss(seed):
    spikes, trend = LossSpikes(sigma=6, window=50), LossTrend(window=5, rise=0.25)
    for step, loss in enumerate(noisy_falling_losses(300, seed), start=1):
        for reading in (spikes.observe(loss), trend.observe(step, loss, 1e-3)):
            assert reading is None or not reading.bad, (step, reading)


def test_a_spike_is_one_step_above_mean_plus_six_sigma():
    spikes = LossSpikes(sigma=6, window=50)
    losses = noisy_falling_losses(100, 1) + [15.0] + noisy_falling_losses(5, 2, start=2.5, end=2.5)
    bad = [step for step, loss in enumerate(losses, start=1) if (r := spikes.observe(loss)) and r.bad]
    assert bad == [101]
    assert spikes.observe(float("nan")) is None  # non-finite losses are not spikes and not statistics


def test_divergence_is_caught_within_a_few_steps_of_the_turn():
    trend = LossTrend(window=5, rise=0.25)
    falling = noisy_falling_losses(40, 3, noise=0.2)
    rising = [falling[-1] + 0.5 * k for k in range(1, 20)]
    first_bad = None
    for step, loss in enumerate(falling + rising, start=1):
        reading = trend.observe(step, loss, 0.01)
        if reading and reading.bad:
            first_bad = step
            break
    assert first_bad is not None and first_bad - len(falling) <= 5
    assert reading.details["lowest_at_step"] <= len(falling) + 1


def test_skips_while_the_scale_calibrates_are_not_overflow():
    watch = SkipWatch(window=50, rate_max=0.1, consecutive_max=5)
    watch.reset(kind="overflow", calibration_steps=10)
    readings = [watch.observe(step, 5.0, True, 2.0 ** (16 - step), 3) for step in range(1, 11)]
    assert readings == [None] * 10
    assert watch.check["summary"].startswith("calibrating")
    for step in range(11, 15):
        assert not watch.observe(step, 5.0, True, 8.0, 3).bad
    reading = watch.observe(15, 5.0, True, 8.0, 3)
    assert reading.bad and reading.kind == "overflow"  # five in a row after calibration
    assert reading.details["first_skipped_step"] == 11  # calibration's skips are not in the window
    # A NaN loss is the forward's fault, not a gradient overflow.
    assert watch.observe(16, float("nan"), True, 8.0, 9).details["consecutive_skips"] == 0


def test_without_a_loss_scaler_every_skip_counts_from_the_first_step():
    watch = SkipWatch(window=50, rate_max=0.1, consecutive_max=5)
    watch.reset(kind="nonfinite_grads", calibration_steps=0)
    readings = [watch.observe(step, 5.0, True, None, 1) for step in range(1, 6)]
    assert [r.bad for r in readings] == [False] * 4 + [True]
    assert readings[-1].kind == "nonfinite_grads" and readings[-1].details["scale"] is None
    assert "non-finite gradients" in watch.check["summary"]


def test_skip_rate_over_the_window():
    watch = SkipWatch(window=20, rate_max=0.1, consecutive_max=5)
    watch.reset(kind="overflow", calibration_steps=0)
    readings = [watch.observe(step, 4.0, step % 6 == 0, 1024.0, 0) for step in range(1, 41)]
    assert not any(r.bad for r in readings[:19])  # a rate over fewer than 20 steps is not judged
    assert readings[-1].bad and readings[-1].details["skip_rate"] > 0.1
    assert readings[-1].details["first_skipped_step"] == 24  # the oldest skip still in the 20-step window


def test_scale_below_one_is_collapse():
    watch = ScaleWatch()
    watch.reset(applies=True)
    assert not watch.observe(2.0).bad
    reading = watch.observe(0.5)
    assert reading.bad and reading.details == {"scale": 0.5, "highest_scale": 2.0}


def test_fp32_math_computes_half_precision_weights_in_fp32():
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 16).to(torch.float16)
    x = (torch.randn(4, 16) * 3000).half()  # x @ W overflows fp16
    with fp32_math():
        out = layer(x)
        cast = out.to(torch.float16)  # model code casting back to the weights' dtype stays fp32
    expected = x.float() @ layer.weight.float().t() + layer.bias.float()
    assert out.dtype == torch.float32 and cast.dtype == torch.float32
    assert torch.allclose(out, expected, rtol=1e-5, atol=1e-2)
    with torch.autocast("cpu", dtype=torch.float16):
        assert not torch.isfinite(layer(x) * 100).all()


def test_fp32_math_gradients_match_fp32_and_keep_weights_in_half_precision_for_backward():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU(), torch.nn.Linear(8, 2)).to(torch.bfloat16)
    reference = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
    reference.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    x = torch.randn(4, 8, requires_grad=True)
    with fp32_math() as math_mode:
        loss = model(x).square().sum()
        saved = math_mode.pack(math_mode.upcast(model[0].weight).t())  # what autograd keeps of a weight
    assert saved[0] is model[0].weight  # the bf16 original, not an fp32 copy
    (grad,) = torch.autograd.grad(loss, [x])
    (expected,) = torch.autograd.grad(reference(x).square().sum(), [x])
    assert torch.allclose(grad, expected, rtol=1e-5, atol=1e-6)


class TwoStep(torch.nn.Module):
    """Like Llama's MLP: the big value is made between modules, so only `second`'s input shows it."""

    def __init__(self):
        super().__init__()
        self.first = torch.nn.Linear(4, 4)
        self.second = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.second(self.first(x) * 1e6)


def test_activation_peaks_see_module_inputs_per_row():
    torch.manual_seed(0)
    model = TwoStep()
    torch.nn.init.zeros_(model.first.bias)
    x = torch.zeros(3, 4)
    x[1] = 1.0  # only row 1 grows large
    recorder = ActivationPeaks(model)
    with recorder.record(batch_size=3):
        model(x)
    peaks = recorder.peaks()
    first = peaks.first_over(FP16_MAX)
    assert (first.module, first.where) == ("second", "input")
    assert peaks.rows_over(FP16_MAX) == [1]
    assert not any(True for _ in model.first._forward_hooks)  # hooks exist only while recording


def test_display_names_are_the_base_models():
    assert display_name("base_model.model.model.layers.1.mlp.down_proj.base_layer") == "model.layers.1.mlp.down_proj"
    assert display_name("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default") == \
        "model.layers.0.self_attn.q_proj"


def test_gradient_comparison_unscales_and_counts_fp16_underflow():
    reference = [torch.tensor([1e-3, 2e-3, 0.0, 4e-3]), torch.tensor([1e-6, 1e-2])]
    scale, accum = 1024.0, 2
    run = [(r * scale / accum).half().float() for r in reference]  # what an fp16 backward delivers
    result = compare_gradients(run, reference, ["a", "b"], scale=scale, accum=accum, count_underflow=True)
    assert result.cosine == pytest.approx(1.0, abs=1e-6) and result.relative_error < 1e-3
    # 1e-6 * 1024 / 2 = 5.1e-4 is a normal fp16 number; without the scale it would be subnormal.
    assert result.underflowed == 0 and result.compared == 5
    unscaled = [(r / accum).half().float() for r in reference]
    result = compare_gradients(unscaled, reference, ["a", "b"], scale=1.0, accum=accum, count_underflow=True)
    assert result.underflowed == 1 and result.worst_module == "b"  # 5e-4, 1e-3 and 2e-3 are fine; 5e-7 is not
    broken = compare_gradients([run[0] * float("inf"), run[1]], reference, ["a", "b"], scale=scale, accum=accum,
                               count_underflow=True)
    assert broken.cosine is None


@pytest.mark.parametrize("dtype, lr, stale", [(torch.bfloat16, 1e-5, True), (torch.float32, 1e-5, False),
                                              (torch.bfloat16, 1e-2, False)])
def test_stale_updates_are_updates_that_rounding_swallowed(dtype, lr, stale):
    torch.manual_seed(0)
    weight = torch.nn.Parameter((torch.rand(64, 64) * 0.5 + 0.5).to(dtype))  # |w| ~ 0.75: bf16 step ~ 4e-3
    optimizer = torch.optim.AdamW([weight], lr=lr, weight_decay=0.0)
    watch = UpdateWatch()
    weight.grad = torch.randn_like(weight)
    watch.before(optimizer, [weight])
    optimizer.step()  # AdamW's first step moves every element by lr exactly
    assert watch.after(optimizer, [weight], ["w"])
    figures = watch.figures()
    assert figures.intended == 64 * 64
    assert (figures.share > 0.9) if stale else (figures.share < 0.05)


def test_row_losses_average_like_the_models_loss():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.tensor([[1, 2, 3, 4, 5], [-100, -100, 7, 8, -100]])
    per_row = row_losses(logits, labels)
    flat = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1))
    counts = torch.tensor([4.0, 2.0])
    assert torch.allclose((per_row * counts).sum() / counts.sum(), flat)


def probed_steps(schedule, step_seconds, probe_seconds, last, first=1):
    """The steps a ProbeSchedule probes from `first` to `last`, each of `step_seconds`, a probe adding `probe_seconds`."""
    probed = []
    for step in range(first, last + 1):
        due = schedule.due(step)
        probed += [step] if due else []
        schedule.observe(step, step_seconds + (probe_seconds if due else 0.0), probe_seconds if due else None)
    return probed


def test_cheap_probes_keep_their_cadence():
    schedule = ProbeSchedule(every=50, first_steps=3, budget=0.02)
    # A probe worth half a step over 50 steps is 1%: within the budget.
    assert probed_steps(schedule, 0.1, 0.05, 300) == [1, 2, 3, 50, 100, 150, 200, 250, 300]


def test_a_probe_dearer_than_its_budget_moves_the_next_to_a_later_multiple():
    schedule = ProbeSchedule(every=50, first_steps=3, budget=0.02)
    # A probe worth 3 steps needs 150 steps to stay within 2%: every third multiple of 50.
    assert probed_steps(schedule, 0.1, 0.3, 500) == [1, 2, 3, 50, 200, 350, 500]


def test_a_restart_probes_its_first_steps_and_goes_on_from_the_next_multiple():
    schedule = ProbeSchedule(every=50, first_steps=2, budget=0.02)
    probed_steps(schedule, 0.1, 0.01, 60)
    schedule.start_attempt(20)  # back to the checkpoint at step 20
    assert probed_steps(schedule, 0.1, 0.01, 120, first=21) == [21, 22, 50, 100]


def test_start_of_attempt_probes_are_outside_the_budget():
    schedule = ProbeSchedule(every=10, first_steps=3, budget=0.01)
    # Three costly probes at the start, nothing unprobed yet to compare with: the first multiple stays due.
    assert probed_steps(schedule, 0.1, 1.0, 10) == [1, 2, 3, 10]


def test_a_budget_of_one_keeps_the_cadence_whatever_a_probe_costs():
    schedule = ProbeSchedule(every=10, first_steps=1, budget=1.0)
    # A probe worth 20 steps (a stall on a busy machine, say) would otherwise push the next one out.
    assert probed_steps(schedule, 0.1, 2.0, 40) == [1, 10, 20, 30, 40]


# The loss of the tiny vision-language model after the vlm-fp16-overflow scenario's fix (bf16, batch 4, steps 1 to
# 60 of the fixed attempt, on an AMD EPYC): it settles near 0.2 with steps from 0.16 to 0.47.
SMALL_NOISY_LOSS = [1.093, 1.514, 0.601, 0.41, 0.398, 0.439, 0.386, 0.279, 0.326, 0.472, 0.367, 0.671, 0.383, 0.28,
                    0.343, 0.362, 0.271, 0.327, 0.356, 0.308, 0.279, 0.344, 0.31, 0.25, 0.301, 0.207, 0.284, 0.392,
                    0.288, 0.36, 0.223, 0.175, 0.218, 0.205, 0.244, 0.237, 0.215, 0.198, 0.255, 0.334, 0.43, 0.197,
                    0.191, 0.246, 0.163, 0.207, 0.378, 0.322, 0.259, 0.228, 0.234, 0.158, 0.173, 0.214, 0.192, 0.173,
                    0.163, 0.171, 0.174, 0.192]


class RiseOnly(LossTrend):
    NOISE_MARGIN = 0.0  # the rule before the noise margin: 25% over the lowest median, nothing else


def first_divergence(trend: LossTrend, losses: list[float]) -> int | None:
    for step, loss in enumerate(losses, start=1):
        reading = trend.observe(step, loss, 1e-3)
        if reading is not None and reading.bad:
            return step
    return None


def small_noisy_losses(steps: int, seed: int, noise: float = 0.06) -> list[float]:
    """A loss that falls to 0.2 and stays there, its steps scattered by `noise` (30% of it at 0.06)."""
    rng = random.Random(seed)
    return [max(0.01, 0.2 + 1.0 * math.exp(-step / 30) + rng.gauss(0, noise)) for step in range(steps)]


def test_a_small_loss_whose_steps_scatter_by_a_third_is_not_diverging():
    assert first_divergence(LossTrend(window=5, rise=0.25), SMALL_NOISY_LOSS) is None
    assert first_divergence(RiseOnly(window=5, rise=0.25), SMALL_NOISY_LOSS) is not None  # it raised one
    alarms = [first_divergence(LossTrend(window=5, rise=0.25), small_noisy_losses(300, seed)) for seed in range(20)]
    before = [first_divergence(RiseOnly(window=5, rise=0.25), small_noisy_losses(300, seed)) for seed in range(20)]
    assert sum(step is not None for step in before) == 20
    assert sum(step is not None for step in alarms) <= 2  # the lowest of 300 noisy medians still sits low


def test_a_turn_in_a_noisy_small_loss_is_still_caught():
    for seed in range(5):
        losses = small_noisy_losses(100, seed) + [0.2 + 0.03 * k for k in range(1, 40)]  # +15% of the level a step
        step = first_divergence(LossTrend(window=5, rise=0.25), losses)
        assert step is not None and 100 < step <= 115, (seed, step)
