"""The memory estimate against the measured peak of real runs (`loratui run --headless`), within 25%.

A model large enough for its tensors to dominate the process (about 40M
parameters, built from a seeded config with the built-in tokenizer, nothing
downloaded) trains two steps in several configurations; each run's
`run_finished` sets the planner's estimate beside the process's measured peak
(resident memory above its level before the model loaded, counted once loading
is done). glibc is told to give large blocks back to the system as soon as they
are freed (MALLOC_MMAP_THRESHOLD_), so the resident peak follows the tensors
alive at once, as CUDA's allocated-memory peak does, rather than the order in
which its heap happened to be reused.
"""

import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT

CONFIGS = {
    "fp32": ["train.precision=\"fp32\"", "train.batch_size=2"],
    "bf16": ["train.precision=\"bf16\"", "train.batch_size=2"],
    "nf4-fp16": ["train.precision=\"fp16\"", "train.batch_size=2", "model.quantization=\"nf4\""],
    "nf4-bf16-checkpointing": ["train.precision=\"bf16\"", "train.batch_size=4", "model.quantization=\"nf4\"",
                               "train.gradient_checkpointing=true"],
}


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from loratui.model.loading import load_tokenizer, resolve_model_path

    root = tmp_path_factory.mktemp("planned")
    tokenizer = load_tokenizer(resolve_model_path("builtin:tiny-llama"), trust_remote_code=False)
    config = LlamaConfig(hidden_size=768, intermediate_size=2048, num_hidden_layers=6, num_attention_heads=12,
                         num_key_value_heads=6, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None, tie_word_embeddings=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    assert 35e6 < sum(p.numel() for p in model.parameters()) < 45e6
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    # Rows longer than max_length: every micro-batch is full.
    rows = [{"text": " ".join(f"word{(i * 7 + row) % 97}" for i in range(400))} for row in range(16)]
    (root / "long.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


# The default suite measures one configuration (fp32, the quickest; its time budget);
# `make torture` (LORATUI_TORTURE=full) all four, the quantized bases included.
FULL = os.environ.get("LORATUI_TORTURE") == "full"
DEFAULT_SUITE = ("fp32",)


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param(name, marks=[] if name in DEFAULT_SUITE or FULL else pytest.mark.skip(
    reason="runs under `make torture` (LORATUI_TORTURE=full)")) for name in CONFIGS])
def test_the_estimate_is_within_a_quarter_of_the_measured_peak(model_and_data, tmp_path, name):
    root = model_and_data
    config = tmp_path / "config.toml"
    config.write_text(f'[run]\noutput_dir = "{tmp_path}"\nname = "{name}"\n'
                      f'[model]\nname_or_path = "{root / "model"}"\n'
                      f'[data]\npath = "{root / "long.jsonl"}"\nformat = "text"\nmax_length = 256\n'
                      f'[train]\nmax_steps = 2\n[checkpoint]\nevery_steps = 100\n')
    args = [a for override in CONFIGS[name] for a in ("--set", override)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "loratui", "run", str(config), "--headless", *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    events = [json.loads(line) for line in (tmp_path / name / "events.jsonl").read_text().splitlines()]
    finished = next(e for e in events if e["type"] == "run_finished")
    estimate, measured = finished["mem_estimate_mib"], finished["mem_peak_measured_mib"]
    assert finished["mem_peak_measured_as"] == "process resident"
    assert abs(estimate - measured) <= 0.25 * measured, (name, estimate, measured)
