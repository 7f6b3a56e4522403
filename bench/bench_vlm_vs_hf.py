"""A vision-language step: loratui's tokens/s over transformers.Trainer + peft's, and the share spent waiting for images.

Both sides train the same built-in tiny VLM (builtin:tiny-vlm, LLaVA layout) on
the same rows (builtin:tiny-shapes, read and tokenized by loratui's LLaVA family),
in the same order, with the same LoRA targets and fully trained projector, batch
size, learning rate, warmup and clipping, in fp32, one after the other in this
process:
- loratui's real trainer (train.Trainer, events written, checkpoints off, no monitor);
- transformers.Trainer + peft, its batches collated by the same family code with
  the images decoded on the training thread (the Trainer's default,
  dataloader_num_workers = 0).
A side's rate counts the real (non-padding) tokens of the steps after `--warmup`
over the wall time they took. The image-wait share is the time loratui's trainer
waited for the next batch's images (decoded one batch ahead on a worker thread)
over the steps' time. Targets (issue 14): tokens/s ratio >= 1.0, image wait <= 5%.

    python bench/bench_vlm_vs_hf.py [--steps 60] [--warmup 10] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import describe_machine  # noqa: E402


def loratui_side(work: Path, args) -> tuple[float, float]:
    """(tokens/s after warmup, image-wait share) of loratui's trainer."""
    from loratui.config import load_config, render_toml
    from loratui.events.bus import EventBus
    from loratui.events.jsonl import JsonlSink, read_events
    from loratui.run_dir import prepare_run_dir
    from loratui.train.trainer import Trainer

    config_file = work / "config.toml"
    config_file.write_text("")
    config = load_config(config_file, [
        'model.name_or_path="builtin:tiny-vlm"', 'data.path="builtin:tiny-shapes"', "train.precision=fp32",
        f"train.max_steps={args.steps}", f"train.batch_size={args.batch_size}", "train.learning_rate=0.005",
        "checkpoint.every_steps=100000", f'run.output_dir="{work}"', "run.name=loratui"])
    run_dir = prepare_run_dir(config, resume=False, config_text=render_toml(config))
    bus = EventBus()
    bus.add_sink(JsonlSink(run_dir.events))
    trainer = Trainer(config, run_dir, bus)
    try:
        assert trainer.run() == 0
    finally:
        bus.close()
    steps = [e for e in read_events(run_dir.events) if e["type"] == "step"]
    measured = steps[args.warmup:]
    seconds = measured[-1]["time"] - steps[args.warmup - 1]["time"]
    step_seconds = sum(e["step_time_s"] for e in steps)
    return sum(e["tokens"] for e in measured) / seconds, trainer.stream.wait_seconds / step_seconds


def hf_side(work: Path, args) -> float:
    """tokens/s after warmup of transformers.Trainer + peft on the same examples and collation."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from loratui.config.schema import Config
    from loratui.data.images import load_rgb
    from loratui.model.builtin_vlm import builtin_vlm_dir
    from loratui.model.families.llava import LlavaFamily
    from loratui.model.loading import add_lora

    config = Config()
    config.data.path = "builtin:tiny-shapes"
    family = LlavaFamily()
    path = str(builtin_vlm_dir("builtin:tiny-vlm"))
    processor = family.load_processor(path, trust_remote_code=False)
    examples, _ = family.build_examples(config.data, processor)
    # loratui's order, batch by batch, so both sides see the same micro-batches.
    stream = family.batches(examples, processor, batch_size=args.batch_size, seed=config.train.seed, shuffle=True,
                            rank=0, world_size=1)
    ordered = [examples[i] for epoch in range(2) for batch in stream._epoch_batches(epoch) for i in batch]
    stream.close()
    torch.manual_seed(config.train.seed)
    model = add_lora(family.load_model(path, torch.float32, trust_remote_code=False), config.lora,
                     adapter_dtype=torch.float32, **family.lora_targets(config.lora, config.vision))

    def collate(rows):
        return family.collate(processor, rows, [load_rgb(p) for row in rows for p in row.images])

    step_ends: list[float] = []

    class Timing(TrainerCallback):
        def on_step_end(self, *_args, **_kwargs):
            step_ends.append(time.perf_counter())

    tokens_per_step: list[int] = []

    class CountingTrainer(Trainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            tokens_per_step.append(int(inputs["attention_mask"].sum()))
            return super().training_step(model, inputs, num_items_in_batch)

    training_args = TrainingArguments(
        output_dir=str(work / "hf"), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        learning_rate=0.005, warmup_steps=config.train.warmup_steps, lr_scheduler_type="cosine",
        max_grad_norm=1.0, logging_steps=10_000, save_strategy="no", report_to=[], use_cpu=True,
        dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True, seed=config.train.seed)
    trainer = CountingTrainer(model=model, args=training_args, train_dataset=ordered, data_collator=collate,
                              callbacks=[Timing()])
    trainer._get_train_sampler = lambda *_: torch.utils.data.SequentialSampler(ordered)
    trainer.train()
    seconds = step_ends[-1] - step_ends[args.warmup - 1]
    return sum(tokens_per_step[args.warmup:args.steps]) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    print(describe_machine())
    with tempfile.TemporaryDirectory() as work:
        loratui_rate, wait_share = loratui_side(Path(work), args)
        hf_rate = hf_side(Path(work), args)
    print(f"{'side':<28}{'tokens/s':>10}")
    print(f"{'loratui':<28}{loratui_rate:>10.1f}")
    print(f"{'transformers.Trainer + peft':<28}{hf_rate:>10.1f}")
    print(f"ratio loratui / Trainer: {loratui_rate / hf_rate:.2f} (target >= 1.0)")
    print(f"image-wait share of loratui's step time: {wait_share:.1%} (target <= 5%)")


if __name__ == "__main__":
    main()
