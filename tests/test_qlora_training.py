"""QLoRA on CPU for real: the built-in model with a 4-bit (nf4) base through bitsandbytes' CPU backend.

It trains in fp32, bf16 and fp16 (a real GradScaler), its adapter reloads onto
a freshly quantized base and reproduces the trained logits, a stopped run
resumes exactly, a restart fp16 -> bf16 keeps the 4-bit base, and the fp16
overflow scenario on a 4-bit base raises its alert naming the module.
4-bit layers are slow on a CPU (every matmul dequantizes), so the default
suite keeps one run of three steps (setup, events, adapter reload) and the
learning, resume, restart and overflow runs are slow tests.
"""

import pytest
import torch

from helpers import StepHook, assert_exact_resume, command_at, make_config, ready_trainer, steps_of, train_in_process

NF4 = ['model.quantization="nf4"', "train.batch_size=4", "train.warmup_steps=2", "checkpoint.every_steps=4",
       "lora.dropout=0.1"]


def linear4bit_layers(model) -> dict:
    from loratui.model.quantization import import_bitsandbytes

    bnb = import_bitsandbytes()
    return {name: m for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}


def assert_loss_falls(events, steps: int) -> None:
    loss = [e["loss"] for e in steps_of(events)]
    assert len(loss) == steps
    third = steps // 3
    assert sum(loss[-third:]) / third < 0.85 * sum(loss[:third]) / third, loss


def test_a_bf16_run_on_a_4bit_base_reports_it_and_its_adapter_reloads_onto_a_4bit_base(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from loratui.model.quantization import bnb_config, prepare_for_kbit_training

    config = make_config(tmp_path, NF4 + ["train.precision=bf16", "train.max_steps=3",
                                          f'run.output_dir="{tmp_path}"'])
    trainer = ready_trainer(config)
    model = trainer.unwrapped_model
    layers = linear4bit_layers(model)
    assert len(layers) == 28 and all(m.compute_dtype == torch.bfloat16 for m in layers.values())
    assert all(p.dtype == torch.float32 for p in trainer.params)  # adapters fp32, as asked by default
    reason, code = trainer.fit()
    trainer.finish("completed")
    trainer.bus.close()
    assert code == 0
    from loratui.events.jsonl import read_events

    events = read_events(trainer.run_dir.events)
    assert len(steps_of(events)) == 3
    started = next(e for e in events if e["type"] == "run_started")
    quant = started["quantization"]
    assert quant["method"] == "nf4" and quant["compute_dtype"] == "bf16" and quant["double_quant"] is True
    error = quant["dequantization_error"]
    assert error["modules"] == 28 and error["worst_module"].startswith("model.layers.") and 0 < error["mean"] < 0.5
    assert started["memory_estimate"]["quantization"] == "nf4"
    finished = next(e for e in events if e["type"] == "run_finished")
    assert finished["mem_estimate_mib"] == started["memory_estimate"]["total_mib"]
    assert finished["mem_peak_measured_mib"] > 0 and finished["mem_peak_measured_as"] == "process resident"

    batch = {k: v for k, v in trainer.stream.next_batch().items()}
    model.eval()
    with torch.no_grad(), trainer.precision.autocast():
        trained = model(**batch).logits.float()
    base = AutoModelForCausalLM.from_pretrained(trainer.model_path, dtype=torch.bfloat16, device_map={"": "cpu"},
                                                quantization_config=bnb_config("nf4", "bf16", double_quant=True))
    base = prepare_for_kbit_training(base, gradient_checkpointing=False)
    reloaded = PeftModel.from_pretrained(base, str(trainer.run_dir.adapter)).eval()
    assert len(linear4bit_layers(reloaded)) == 28
    with torch.no_grad(), trainer.precision.autocast():
        again = reloaded(**batch).logits.float()
    assert torch.equal(trained, again)
    base_only = reloaded.get_base_model()
    with torch.no_grad(), trainer.precision.autocast(), reloaded.disable_adapter():
        untrained = base_only(**batch).logits.float()
    assert not torch.allclose(untrained, trained, atol=1e-3)  # the adapter is what reproduces them


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_each_precision_learns_on_a_4bit_base_fp16_with_a_grad_scaler(tmp_path, precision):
    config = make_config(tmp_path, NF4 + [f"train.precision={precision}", "train.max_steps=24",
                                          f'run.output_dir="{tmp_path}"'])
    code, events, _ = train_in_process(config)
    assert code == 0
    assert_loss_falls(events, 24)
    steps = steps_of(events)
    if precision == "fp16":
        assert all(e["scale"] is not None for e in steps)  # a real GradScaler ran
    started = next(e for e in events if e["type"] == "run_started")
    assert started["precision"] == precision and started["quantization"]["compute_dtype"] == precision


@pytest.mark.slow
def test_a_stopped_qlora_run_resumes_exactly(tmp_path):
    out = f'run.output_dir="{tmp_path / "runs"}"'
    base = NF4 + ["train.precision=fp32", "train.max_steps=8"]
    code, full_events, full_dir = train_in_process(make_config(tmp_path, base + [out, "run.name=full"]))
    assert code == 0
    part = make_config(tmp_path, base + [out, "run.name=part"])
    code, _, part_dir = train_in_process(part, monitor=StepHook({5: command_at("stop")}))
    assert code == 0
    code, events, _ = train_in_process(part, resume=True)
    assert code == 0
    assert_exact_resume(full_events, full_dir, events, part_dir, [6, 7, 8])


@pytest.mark.slow
def test_a_restart_from_fp16_to_bf16_keeps_the_4bit_base(tmp_path):
    config = make_config(tmp_path, NF4 + ["train.precision=fp16", "train.max_steps=6",
                                          f'run.output_dir="{tmp_path}"'])
    seen = {}

    def remember(trainer):
        seen.update({name: m.compute_dtype for name, m in linear4bit_layers(trainer.unwrapped_model).items()})

    code, events, _ = train_in_process(config, monitor=StepHook({
        (0, 3): command_at("restart", precision="bf16"), (1, 5): remember}))
    assert code == 0
    restart = next(e for e in events if e["type"] == "restart")
    assert restart["precision"] == "bf16"
    assert [e["precision"] for e in steps_of(events, attempt=1)] and \
        all(e["precision"] == "bf16" for e in steps_of(events, attempt=1))
    assert len(seen) == 28 and set(seen.values()) == {torch.bfloat16}  # still 4-bit, now computing in bf16


@pytest.mark.slow
def test_the_fp16_overflow_scenario_on_a_4bit_base_names_the_module(tmp_path):
    from helpers import loratui_cli

    result = loratui_cli("demo", "--scenario", "fp16-overflow", "--headless", "--set", "train.max_steps=2",
                         "--set", "train.batch_size=2", "--set", 'model.quantization="nf4"', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ALERT [critical] overflow at step 1: fp16 overflows: model.layers.1.mlp.down_proj received" \
        in result.stdout


def test_the_probes_read_a_4bit_base_with_checkpointing_and_name_its_modules(tmp_path):
    """fp16 on nf4 with gradient checkpointing: headroom, underflow, fidelity and stale updates all measure
    (the fp32 reference dequantizes per matmul and runs without checkpointing) and name modules."""
    from helpers import ready_monitored_trainer
    from loratui.events.jsonl import read_events

    config = make_config(tmp_path, ['model.quantization="nf4"', "train.precision=fp16", "amp.init_scale=256",
                                    "train.gradient_checkpointing=true", "train.max_steps=2", "train.batch_size=2",
                                    f'run.output_dir="{tmp_path}"'])
    trainer = ready_monitored_trainer(config)
    trainer.fit()
    trainer.finish("completed")
    trainer.bus.close()
    probed = [e["checks"] for e in read_events(trainer.run_dir.events) if e["type"] == "health"]
    assert len(probed) == 2  # the first steps of an attempt are probed
    for checks in probed:
        assert {checks[name]["status"] for name in ("fp16_headroom", "underflow", "fidelity", "stale_update")} \
            == {"ok"}
        assert checks["fp16_headroom"]["module"] and checks["underflow"]["module"].startswith("model.layers.")
        assert checks["fidelity"]["value"] > 0.99  # fp16 against fp32 arithmetic on the same 4-bit weights


def test_a_vision_language_model_quantizes_its_language_model_only(tmp_path):
    """As MiniCPM-V-2_6-int4: the language model's linear layers are 4-bit, tower and projector keep their dtype."""
    config = make_config(tmp_path, ['model.name_or_path="builtin:tiny-vlm"', 'data.path="builtin:tiny-shapes"',
                                    'model.quantization="nf4"', "train.precision=bf16", "train.max_steps=1",
                                    "train.batch_size=2", f'run.output_dir="{tmp_path}"'])
    trainer = ready_trainer(config)
    model = trainer.unwrapped_model
    quantized = linear4bit_layers(model)
    assert quantized and all(trainer.family.part_of(name) == "language_model" for name in quantized)
    kept = {name: m for name, m in model.named_modules() if type(m) is torch.nn.Linear
            and trainer.family.part_of(name) in ("vision_tower", "projector") and "lora_" not in name}
    assert {trainer.family.part_of(name) for name in kept} == {"vision_tower", "projector"}
    assert all(m.weight.dtype in (torch.bfloat16, torch.float32) for m in kept.values())
    from loratui.events.jsonl import read_events

    started = next(e for e in read_events(trainer.run_dir.events) if e["type"] == "run_started")
    assert started["memory_estimate"]["parts_mib"]["vision tower"] > 0
    trainer.bus.close()
