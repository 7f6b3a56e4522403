"""The three data formats put the loss on the right tokens; the bundled data is learnable."""

import json
import statistics

import pytest

from helpers import make_config, steps_of, train_in_process
from loratui.data.dataset import IGNORE_INDEX, BatchStream, load_examples
from loratui.model.builtin import builtin_model_dir
from loratui.model.loading import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(builtin_model_dir("builtin:tiny-llama")), trust_remote_code=False)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def learned_text(tokenizer, example):
    return tokenizer.decode([t for t, label in zip(example.input_ids, example.labels) if label != IGNORE_INDEX])


def load(path, fmt, tokenizer, **kw):
    options = dict(max_length=256, on_too_long="truncate", on_bad_row="error") | kw
    return load_examples(path, fmt, tokenizer, **options)


def test_text_learns_every_token(tmp_path, tokenizer):
    (example,), _ = load(write_jsonl(tmp_path / "t.jsonl", [{"text": "The sky is blue."}]), "text", tokenizer)
    assert example.labels == example.input_ids
    assert example.input_ids[-1] == tokenizer.eos_token_id


def test_prompt_completion_learns_the_completion_only(tmp_path, tokenizer):
    rows = [{"prompt": "Question: What colour is the sky?\nAnswer:", "completion": " The sky is blue."}]
    (example,), _ = load(write_jsonl(tmp_path / "pc.jsonl", rows), "prompt_completion", tokenizer)
    assert learned_text(tokenizer, example) == " The sky is blue.<|endoftext|>"
    assert example.labels[0] == IGNORE_INDEX


def test_messages_learn_assistant_turns_only(tmp_path, tokenizer):
    rows = [{"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "What is 1 plus 2?"},
                          {"role": "assistant", "content": "1 plus 2 is 3."},
                          {"role": "user", "content": "Spell cat."},
                          {"role": "assistant", "content": "c-a-t."}]}]
    (example,), _ = load(write_jsonl(tmp_path / "m.jsonl", rows), "messages", tokenizer)
    learned = learned_text(tokenizer, example)
    assert "1 plus 2 is 3." in learned and "c-a-t." in learned
    assert "Be brief" not in learned and "What is" not in learned and "Spell" not in learned


def test_too_long_rows_are_truncated_dropped_or_refused_with_counts(tmp_path, tokenizer):
    long_row = {"text": "one two three four five six seven eight nine ten " * 20}
    path = write_jsonl(tmp_path / "long.jsonl", [{"text": "short"}, long_row, long_row])
    examples, report = load(path, "text", tokenizer, max_length=16, on_too_long="truncate")
    assert report.truncated == 2 and len(examples) == 3 and all(len(e.input_ids) <= 16 for e in examples)
    examples, report = load(path, "text", tokenizer, max_length=16, on_too_long="drop")
    assert report.dropped_too_long == 2 and len(examples) == 1
    from loratui.errors import UserInputError

    with pytest.raises(UserInputError, match=r"long\.jsonl:2: .*longer than data.max_length = 16"):
        load(path, "text", tokenizer, max_length=16, on_too_long="error")


def test_batch_order_is_a_function_of_seed_and_epoch(tokenizer):
    examples, _ = load("builtin:tiny-text", "text", tokenizer)

    def first_batches(seed, n=3):
        stream = BatchStream(examples, 4, seed=seed, shuffle=True, pad_id=0)
        return [stream.next_batch()["input_ids"].tolist() for _ in range(n)]

    assert first_batches(1) == first_batches(1)
    assert first_batches(1) != first_batches(2)


def test_loss_falls_on_the_bundled_data(tmp_path):
    """Mean loss of the last 10 of 200 fp32 steps is at most 70% of the first 10 (demo defaults)."""
    cfg = make_config(tmp_path, ["train.precision=fp32", "train.max_steps=200", "checkpoint.every_steps=1000",
                                 f"run.output_dir=\"{tmp_path}\""])
    code, events, _ = train_in_process(cfg)
    assert code == 0
    losses = [e["loss"] for e in steps_of(events)]
    assert len(losses) == 200
    first, last = statistics.mean(losses[:10]), statistics.mean(losses[-10:])
    assert last <= 0.7 * first, (first, last)
