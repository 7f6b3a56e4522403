"""One training run with `transformers.Trainer` + peft, set up as loratui sets up its own: the anchor.

Run by bench/bench_throughput_vs_hf.py in a fresh process. It trains the model
loratui's config names (builtin:tiny-llama) with the same LoRA settings,
learning rate, schedule, warmup, clipping, batch size and seed, on the same
rows tokenized by loratui's own loader, in the same order: the batches are
read off loratui's BatchStream, so both trainers see the same examples in
every micro-batch. The base model is loaded in the precision's dtype and
`TrainingArguments` turns on its autocast, as an HF user would. Everything
else is the Trainer's default (its fused AdamW, its logging cadence, SDPA
attention); checkpoints are off, as in the benchmark's loratui runs.

Two collators, as an HF user would pick them:
- `padding`: each batch right-padded to its longest row with an attention
  mask (the default padding collators, DataCollatorForSeq2Seq and the like).
- `flattening`: transformers' own padding-free `DataCollatorWithFlattening`:
  the batch's rows concatenated into one row with position_ids restarting per
  row and no attention mask (transformers then keeps the rows apart by their
  positions).

Writes JSON to --out: the wall clock at the end of every optimizer step, the
real (non-padding) tokens of every step and the token positions the model
computed (padding included). fp16 is not offered: on CPU the Trainer's
accelerate ignores it (no autocast, no loss scaler), so there is no HF fp16
run to compare with loratui's.

    python bench/hf_trainer_run.py --precision fp32 --steps 80 --data builtin:tiny-chat \
        --collator padding --out result.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from torch.utils.data import SequentialSampler  # noqa: E402
from transformers import (AutoModelForCausalLM, DataCollatorWithFlattening, Trainer, TrainerCallback,  # noqa: E402
                          TrainingArguments)

from loratui.config import load_config  # noqa: E402
from loratui.data.dataset import BatchStream, Example, collate, load_examples  # noqa: E402
from loratui.model.loading import load_tokenizer, resolve_model_path  # noqa: E402
from loratui.precision_facts import DTYPES  # noqa: E402


class StepClock(TrainerCallback):
    def __init__(self):
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


class InOrder(Trainer):
    """The dataset is already in loratui's batch order: read it front to back."""

    def _get_train_sampler(self, train_dataset=None):
        return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)


def loratui_batches(config, tokenizer, steps: int) -> tuple[list[Example], list[int]]:
    """The rows of loratui's first `steps` batches in order, and each batch's tokens."""
    data = config.data
    examples, _ = load_examples(data.path, data.format, tokenizer, max_length=data.max_length,
                                on_too_long=data.on_too_long, on_bad_row=data.on_bad_row)
    stream = BatchStream(examples, config.train.batch_size, seed=config.train.seed, shuffle=data.shuffle,
                         pad_id=tokenizer.pad_token_id)
    rows, tokens = [], []
    for _ in range(steps):
        batch = stream.next_batch()
        if len(batch["input_ids"]) != config.train.batch_size:
            raise SystemExit("a short last batch: use a batch size that divides the data set")
        for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
            length = int(mask.sum())
            rows.append(Example(ids[:length].tolist(), labels[:length].tolist()))
        tokens.append(int(batch["attention_mask"].sum()))
    return rows, tokens


class PositionCount:
    """Wraps a collator; counts the token positions of every batch it builds (padding included)."""

    def __init__(self, collator):
        self.collator = collator
        self.positions: list[int] = []

    def __call__(self, features):
        batch = self.collator(features)
        self.positions.append(batch["input_ids"].numel())
        return batch


def make_collator(name: str, pad_id: int):
    if name == "padding":
        return lambda features: collate([Example(f["input_ids"], f["labels"]) for f in features], pad_id)
    return DataCollatorWithFlattening()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=("fp32", "bf16"), required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--data", default="builtin:tiny-chat", help="data.path (messages rows)")
    parser.add_argument("--collator", choices=("padding", "flattening"), default="padding")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loratui-bench-hf-") as tmp:
        empty = Path(tmp) / "config.toml"
        empty.write_text("")
        config = load_config(empty, [f"train.batch_size={args.batch_size}", f"train.max_steps={args.steps}",
                                     f'data.path="{args.data}"'])
        result = train(config, args.precision, args.collator, Path(tmp))
    Path(args.out).write_text(json.dumps(result))


def train(config, precision: str, collator_name: str, work: Path) -> dict:
    model_path = resolve_model_path(config.model.name_or_path)
    tokenizer = load_tokenizer(model_path, trust_remote_code=False)
    rows, tokens = loratui_batches(config, tokenizer, config.train.max_steps)
    train, lora = config.train, config.lora
    arguments = TrainingArguments(
        output_dir=str(work / "out"), per_device_train_batch_size=train.batch_size, max_steps=train.max_steps,
        learning_rate=train.learning_rate, lr_scheduler_type=train.lr_scheduler, warmup_steps=train.warmup_steps,
        max_grad_norm=train.max_grad_norm, weight_decay=train.weight_decay, seed=train.seed,
        bf16=precision == "bf16", use_cpu=not torch.cuda.is_available(), save_strategy="no", report_to="none",
        remove_unused_columns=False, disable_tqdm=True)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, DTYPES[precision]))
    torch.manual_seed(train.seed)
    model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                             target_modules=lora.target_modules, task_type="CAUSAL_LM"))
    model.config.use_cache = False
    clock = StepClock()
    dataset = [{"input_ids": row.input_ids, "labels": row.labels} for row in rows]
    collator = PositionCount(make_collator(collator_name, tokenizer.pad_token_id))
    trainer = InOrder(model=model, args=arguments, train_dataset=dataset, callbacks=[clock], data_collator=collator)
    trainer.train()
    return {"step_ends": clock.ends, "tokens": tokens, "positions": collator.positions[:len(tokens)],
            "optimizer": str(arguments.optim), "torch_threads": torch.get_num_threads()}


if __name__ == "__main__":
    main()
