"""The built-in tiny model is built offline and deterministically, and loads like any HF directory."""

import shutil

import torch
from safetensors.torch import load_file

from helpers import make_config, steps_of, train_in_process
from loratui.model.builtin import build_tiny_llama, builtin_model_dir


def test_same_seed_same_weights(tmp_path):
    cached = builtin_model_dir("builtin:tiny-llama")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    build_tiny_llama(fresh)
    a, b = load_file(str(cached / "model.safetensors")), load_file(str(fresh / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (cached / "tokenizer.json").read_text() == (fresh / "tokenizer.json").read_text()
    parameters = sum(t.numel() for t in a.values())
    assert 100_000 < parameters < 1_000_000


def test_a_saved_model_directory_trains_through_the_general_path(tmp_path):
    # Copy the built model to an ordinary directory and point name_or_path at it, as a user would.
    local = tmp_path / "my-model"
    shutil.copytree(builtin_model_dir("builtin:tiny-llama"), local)
    cfg = make_config(tmp_path, ["train.precision=fp32", "train.max_steps=3", "train.batch_size=2",
                                 "train.warmup_steps=0"],
                      text='[model]\nname_or_path = "my-model"  # relative to the config file\n')
    assert cfg.model.name_or_path == str(local)
    code, events, run_dir = train_in_process(cfg)
    assert code == 0 and len(steps_of(events)) == 3


def test_final_adapter_loads_with_peft_and_reproduces_the_logits(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from loratui.train import trainer as trainer_module

    captured = {}
    original_finish = trainer_module.Trainer.finish

    def finish_and_capture(self, reason, failed=False):
        original_finish(self, reason, failed)
        captured["model"] = self.unwrapped_model
        captured["batch"] = self.stream.next_batch()

    trainer_module.Trainer.finish = finish_and_capture
    try:
        cfg = make_config(tmp_path, ["train.precision=fp32", "train.max_steps=5", "train.batch_size=2",
                                     "train.warmup_steps=0", f"run.output_dir=\"{tmp_path}\""])
        code, _events, run_dir = train_in_process(cfg)
    finally:
        trainer_module.Trainer.finish = original_finish
    assert code == 0
    trained = captured["model"].eval()
    base = AutoModelForCausalLM.from_pretrained(builtin_model_dir("builtin:tiny-llama"), dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, run_dir.adapter).eval()
    batch = captured["batch"]
    with torch.no_grad():
        expected = trained(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        actual = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(expected, actual, atol=1e-5)
    # ...and the adapter really changed the model (B starts at zero, so it must have trained).
    lora_b = [v for k, v in load_file(str(run_dir.adapter / "adapter_model.safetensors")).items() if "lora_B" in k]
    assert any(t.abs().max() > 0 for t in lora_b)
