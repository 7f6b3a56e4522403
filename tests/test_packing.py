"""Packing and length-aware batching on their own (no model): which examples go where, and the tensors built."""

import random

import pytest
import torch

from loratui.data.batching import length_grouped_batches
from loratui.data.dataset import IGNORE_INDEX, BatchStream, Example
from loratui.data.packing import (ROW_WIDTH_MULTIPLE, Packer, PackedBatch, attention_span, balanced_rows,
                                  choose_rows, row_width_multiple)


def examples_of(lengths, seed=0):
    rng = random.Random(seed)
    out = []
    for length in lengths:
        ids = [rng.randrange(5, 500) for _ in range(length)]
        labels = [IGNORE_INDEX] * (length // 3) + ids[length // 3:]
        out.append(Example(ids, labels))
    return out


@pytest.mark.parametrize("seed", range(20))
def test_rows_hold_every_example_once_within_max_length(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(2, 256) for _ in range(rng.randint(1, 16))]
    for span in (50.0, 360.0, 25_000.0):
        rows = choose_rows(lengths, max_length=256, attention_span=span)
        assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
        width = max(sum(lengths[i] for i in row) for row in rows)
        assert width <= 256
        padded_cost = len(lengths) * max(lengths) * (1 + max(lengths) / span)
        assert len(rows) * width * (1 + width / span) <= padded_cost


def test_row_count_follows_the_attention_cost():
    """A model whose attention is cheap gets few long rows; one whose attention is dear gets short ones."""
    lengths = [31, 40, 45, 52, 58, 63, 70, 71]
    cheap = choose_rows(lengths, max_length=1024, attention_span=25_000.0)
    dear = choose_rows(lengths, max_length=1024, attention_span=20.0)
    assert len(cheap) == 1
    # Attention dearer than any padding: rows no wider than the longest example (31 + 40 share one).
    assert max(sum(lengths[i] for i in row) for row in dear) == 71 and len(dear) == 7
    capped = choose_rows(lengths, max_length=200, attention_span=25_000.0)
    assert len(capped) > 1 and max(sum(lengths[i] for i in row) for row in capped) <= 200


def test_balanced_rows_fill_the_shortest_row_longest_first():
    assert balanced_rows([5, 9, 3, 7], 2) == [[1, 2], [3, 0]]  # 9+3 and 7+5


def test_attention_span_of_the_builtin_shape():
    from loratui.model.builtin import MODEL_SHAPE
    from transformers import LlamaConfig

    config = LlamaConfig(**MODEL_SHAPE)
    hidden, heads, kv = MODEL_SHAPE["hidden_size"], MODEL_SHAPE["num_attention_heads"], MODEL_SHAPE[
        "num_key_value_heads"]
    head_dim = hidden // heads
    linear = 2 * hidden * hidden + 2 * hidden * kv * head_dim + 3 * hidden * MODEL_SHAPE["intermediate_size"]
    assert attention_span(config) == linear / (2 * hidden)


def test_packed_batch_tensors():
    examples = examples_of([6, 4, 3, 9, 2])
    batch = Packer(pad_id=0, mask_kind="bool", max_length=64, attention_span=20.0)(examples)
    assert isinstance(batch, PackedBatch) and batch.real_tokens == 24
    rows, width = batch["input_ids"].shape
    assert batch["attention_mask"].shape == (rows, 1, width, width)
    found = []
    for r in range(rows):
        positions = batch["position_ids"][r].tolist()
        starts = [i for i, p in enumerate(positions) if p == 0] + [width]
        mask = batch["attention_mask"][r, 0]
        for start, end in zip(starts, starts[1:]):
            ids = batch["input_ids"][r, start:end].tolist()
            match = [e for e in examples if e.input_ids == ids]
            block = mask[start:end, start:end]
            assert torch.equal(block, torch.ones_like(block).tril())  # causal within the block
            assert not mask[start:end, :start].any() and not mask[start:end, end:].any()  # nothing outside it
            assert positions[start:end] == list(range(end - start))
            if match:
                found.append(match[0])
                labels = batch["labels"][r, start:end].tolist()
                assert labels == [IGNORE_INDEX] + match[0].labels[1:]
            else:  # the padding tail: ignored by the loss
                assert set(batch["labels"][r, start:end].tolist()) == {IGNORE_INDEX} and end == width
    assert sorted(map(id, found)) == sorted(map(id, examples))


@pytest.mark.parametrize("seed", range(10))
def test_packed_widths_sit_on_a_grid_and_never_pass_max_length(seed):
    """Widths repeat (kernels are compiled per shape) and a rounded row is never longer than data.max_length."""
    rng = random.Random(seed)
    examples = examples_of([rng.randint(2, 100) for _ in range(8)], seed)
    for max_length in (100, 128, 1024):
        batch = Packer(0, "bool", max_length, 360.0, ROW_WIDTH_MULTIPLE)(examples)
        width = batch["input_ids"].shape[1]
        longest = max(len(e.input_ids) for e in examples)
        assert width % ROW_WIDTH_MULTIPLE == 0 or width == max_length
        assert longest <= width <= max(max_length, longest)
        assert batch.real_tokens == sum(len(e.input_ids) for e in examples)
        assert Packer(0, "bool", max_length, 360.0)(examples)["input_ids"].shape[1] == longest_row(examples, 360.0,
                                                                                                  max_length)


def longest_row(examples, span, max_length):
    lengths = [len(e.input_ids) for e in examples]
    return max(sum(lengths[i] for i in row) for row in choose_rows(lengths, max_length=max_length,
                                                                    attention_span=span))


def test_the_grid_is_for_half_precision_and_cuda():
    from types import SimpleNamespace

    assert row_width_multiple(SimpleNamespace(dtype=torch.bfloat16, device=torch.device("cpu"))) == 16
    assert row_width_multiple(SimpleNamespace(dtype=torch.float16, device=torch.device("cpu"))) == 16
    assert row_width_multiple(SimpleNamespace(dtype=torch.float32, device=torch.device("cpu"))) == 1
    assert row_width_multiple(SimpleNamespace(dtype=torch.float32, device=torch.device("cuda", 0))) == 16


def test_additive_mask_for_eager():
    examples = examples_of([5, 3])
    bool_batch = Packer(0, "bool", 64, 1e9)(examples)
    additive = Packer(0, "additive", 64, 1e9)(examples)["attention_mask"]
    assert additive.dtype == torch.float32
    assert torch.equal(additive == 0, bool_batch["attention_mask"])
    assert (additive[~bool_batch["attention_mask"]] == torch.finfo(torch.float32).min).all()


def lengths_stream(lengths, batch_size, **kwargs):
    return BatchStream(examples_of(lengths), batch_size, pad_id=0, **kwargs)


def epoch_batches(stream, epoch):
    return [sorted(batch) for batch in stream._epoch_batches(epoch)]


def test_length_grouping_pads_less_and_keeps_every_example():
    rng = random.Random(1)
    lengths = [int(rng.lognormvariate(3.5, 0.8)) + 2 for _ in range(1000)]
    plain = lengths_stream(lengths, 8, seed=3, shuffle=True)
    grouped = lengths_stream(lengths, 8, seed=3, shuffle=True, group_by_length=True)

    def padded_tokens(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    for epoch in range(2):
        assert sorted(i for b in grouped._epoch_batches(epoch) for i in b) == list(range(1000))
        assert len(grouped._epoch_batches(epoch)) == len(plain._epoch_batches(epoch))
        assert padded_tokens(grouped._epoch_batches(epoch)) < 0.7 * padded_tokens(plain._epoch_batches(epoch))


def test_length_grouping_stays_random_across_epochs_and_seeds():
    rng = random.Random(2)
    lengths = [rng.randint(2, 200) for _ in range(600)]
    stream = lengths_stream(lengths, 4, seed=5, shuffle=True, group_by_length=True)
    again = lengths_stream(lengths, 4, seed=5, shuffle=True, group_by_length=True)
    other_seed = lengths_stream(lengths, 4, seed=6, shuffle=True, group_by_length=True)
    first, second = epoch_batches(stream, 0), epoch_batches(stream, 1)
    assert first == epoch_batches(again, 0)  # a pure function of (seed, epoch): exact resume
    assert first != second and first != epoch_batches(other_seed, 0)
    assert len({tuple(b) for b in first} & {tuple(b) for b in second}) < len(first) // 4
    # The long batches are not all at the front: the batch order is shuffled too.
    longest = [max(lengths[i] for i in b) for b in stream._epoch_batches(0)]
    half = len(longest) // 2
    assert abs(sum(longest[:half]) - sum(longest[half:])) < 0.2 * sum(longest)


def test_length_grouping_without_shuffle_is_fixed():
    lengths = [3, 9, 4, 8, 1, 7]
    batches = length_grouped_batches(list(range(6)), lengths, 2, None)
    assert batches == [[1, 3], [5, 2], [0, 4]]


def test_the_stream_packs_the_same_examples_it_would_pad():
    lengths = [random.Random(i).randint(2, 90) for i in range(50)]
    padded = lengths_stream(lengths, 6, seed=1, shuffle=True)
    packed = lengths_stream(lengths, 6, seed=1, shuffle=True)
    packed.collate = Packer(0, "bool", 128, 360.0)
    for _ in range(20):  # past the end of the first epoch
        a, b = padded.next_batch(), packed.next_batch()
        assert b.real_tokens == int(a["attention_mask"].sum())
        assert sorted(a["input_ids"][a["input_ids"] != 0].tolist()) == \
            sorted(b["input_ids"][b["input_ids"] != 0].tolist())
        assert padded.position == packed.position
    replica = packed.unpacked()
    assert replica.position == packed.position and "position_ids" not in replica.next_batch()
    assert "position_ids" in packed.next_batch()


def test_the_shipped_long_tail_data_is_what_its_generator_writes():
    from loratui.data.builtin_data import builtin_dataset_path
    from loratui.data.builtin_longtail import NAME, render

    assert builtin_dataset_path(NAME).read_text(encoding="utf-8") == render()
