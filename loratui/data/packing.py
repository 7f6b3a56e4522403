"""Padding-free micro-batches: a micro-batch's examples packed into rows, each example attending only to itself.

The batching rule: a packed micro-batch holds exactly the examples its padded
twin would hold (the stream's order, seed and resume position are untouched),
so the loss, the mean over the micro-batch's supervised tokens, is the same
number. Within the micro-batch the examples go longest first into the shortest
row so far (LPT, a balanced best-fit). How many rows: the count whose estimated
cost, rows x width x (1 + width / span), is least, with no row longer
than data.max_length. Attention is quadratic in a row's width (the mask zeroes
the products between examples, the kernel still computes them), so one row per
micro-batch can cost more than the padding saved; one row per example is the
padded batch's own cost, so packing never costs more by this estimate. A small
model (short span) gets several short rows, a large one a few long ones. The span is
attention_span (a count of multiply-adds) times FUSED_ATTENTION_SPEEDUP (measured).

Each example keeps its own positions (position_ids restart at 0) and an explicit
block-diagonal causal 4D mask keeps its attention inside it. Measured with
transformers 5.25 on the built-in model (tests/test_packing_model.py): with that
mask packed logits match unpacked ones to 2e-6 under SDPA (a boolean mask) and
eager attention (an additive float mask: a boolean one is *added* as 0/1 there
and is wrong by up to 5). transformers also finds packed examples from
position_ids alone, but only without a 2D mask and a KV cache, and by reading
the positions on the host in every forward (a device sync on CUDA); the explicit
mask needs neither. Other attention implementations (flash-attention, flex) are
not packed here: their batches are padded, grouped by length.

The first token of each example is labelled IGNORE_INDEX: the model's loss
predicts token t+1 from token t along the row, and the first token of an
example must not be predicted from the last token of the one before it (in a
padded row nothing predicts a row's first token either).
"""

from __future__ import annotations

from dataclasses import dataclass

from loratui.data.dataset import IGNORE_INDEX, Example

# Attention implementations whose packed rows are exact with our 4D mask, and the mask each needs.
PACKED_MASK_KINDS = {"sdpa": "bool", "eager": "additive"}
# Packed rows are padded to a multiple of this many tokens where kernels are chosen and compiled
# per shape: half precision (oneDNN's bf16 and AMX kernels on CPU: about 30 ms for each width it
# has not seen, measured on the built-in model) and any CUDA device (cuBLAS heuristics,
# tensor-core tiles). A width that changes with every micro-batch pays that again and again,
# while widths on a grid of 16 repeat and fill whole tiles; the cost is a few pad tokens per row,
# which attend only to themselves. fp32 on a CPU takes any width at the same speed, so its rows
# stay as long as their longest (the grid cost its chat throughput 8%: bench_throughput_vs_hf.py).
ROW_WIDTH_MULTIPLE = 16
# The row-count choice weighs attention at a quarter of its multiply-adds against the linear
# layers' (attention_span times this). Measured on the built-in model, packing's own gain over
# padded batches (bench_throughput_vs_hf.py's interleaved figure) at 1x, 4x and 8x: chat fp32
# 1.164, 1.203, 1.201; chat bf16 1.084, 1.180; long tail fp32 1.927, 1.946; long tail bf16
# 1.761, 2.045, 2.075. The pure count overrates attention's cost (most likely because SDPA's
# one fused kernel does its multiply-adds faster than the many small projections around it), so
# it made rows too short and left 8% padding between them (3% now, chat fp32). For a 7B-class
# model the span is so long that either way a row is one long pack.
FUSED_ATTENTION_SPEEDUP = 4.0


class PackedBatch(dict):
    """A packed micro-batch: the model's keyword arguments, and how many of its tokens are real.

    Its padding (the tail of a shorter row) is a block of its own in the 4D mask, which
    cannot be told apart from an example by the tensors alone, so the count travels here.
    """

    def __init__(self, tensors: dict, real_tokens: int):
        super().__init__(tensors)
        self.real_tokens = real_tokens


def packing_mask_kind(model) -> str | None:
    """The 4D mask kind a model needs for packed rows, or None where it cannot take them (pad instead)."""
    config = getattr(model, "config", None)
    return PACKED_MASK_KINDS.get(getattr(config, "_attn_implementation", None))


def balanced_rows(lengths: list[int], rows: int) -> list[list[int]]:
    """Indices of `lengths` in `rows` rows: longest first, each into the shortest row so far (LPT).

    Ties go to the earlier example and the earlier row, so the rows are a pure function of the lengths.
    """
    packed: list[list[int]] = [[] for _ in range(rows)]
    load = [0] * rows
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        shortest = min(range(rows), key=lambda r: load[r])
        packed[shortest].append(index)
        load[shortest] += lengths[index]
    return packed


def choose_rows(lengths: list[int], *, max_length: int, attention_span: float) -> list[list[int]]:
    """The packing of one micro-batch that costs least: rows x width x (1 + width / attention_span).

    Every row count from one up to one row per example is tried (one row per
    example is the padded batch's own cost, so packing never costs more by this
    estimate); a row longer than max_length is not allowed.
    """
    best, best_cost = None, None
    for count in range(1, len(lengths) + 1):
        rows = balanced_rows(lengths, count)
        width = max(sum(lengths[i] for i in row) for row in rows)
        if width > max(max_length, max(lengths)):
            continue
        cost = count * width * (1 + width / attention_span)
        if best_cost is None or cost < best_cost:
            best, best_cost = rows, cost
    return best


def attention_span(model_config) -> float:
    """The row length at which a layer's attention costs as much as its linear layers, per token.

    Packed attention computes every query against every key of its row (the mask
    only zeroes the products between examples), so a token's attention cost grows
    with the row's width while its projections and MLP do not. Multiply-adds per
    token: projections and MLP, against 2 x heads x head_dim per key (scores and
    the weighted sum). A tiny model (hidden 64) reaches parity at about 360 keys,
    a 7B Llama at about 25,000: the smaller the model, the shorter its packed rows.
    """
    hidden = model_config.hidden_size
    heads = model_config.num_attention_heads
    head_dim = getattr(model_config, "head_dim", None) or hidden // heads
    kv_heads = getattr(model_config, "num_key_value_heads", None) or heads
    intermediate = getattr(model_config, "intermediate_size", None) or 4 * hidden
    linear = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + 3 * hidden * intermediate
    return linear / (2 * heads * head_dim)


@dataclass
class Packer:
    """Collates a micro-batch's examples into packed rows (see the module docstring)."""

    pad_id: int
    mask_kind: str  # "bool" (SDPA) or "additive" (eager)
    max_length: int
    attention_span: float
    width_multiple: int = 1  # rows are padded to a multiple of this (row_width_multiple)

    def __call__(self, examples: list[Example]) -> dict:
        """input_ids, labels, position_ids and a block-diagonal causal 4D attention_mask.

        Rows are as long as the longest row, rounded up to width_multiple; the rest of a
        shorter row is one block of padding that attends only to itself and is ignored by the loss.
        """
        import torch

        lengths = [len(e.input_ids) for e in examples]
        rows = choose_rows(lengths, max_length=self.max_length, attention_span=self.attention_span)
        width = row_width(max(sum(lengths[i] for i in row) for row in rows), self.max_length, self.width_multiple)
        # Built as Python lists and turned into tensors once: per-example tensor slicing cost
        # about 0.8 ms per micro-batch, 2% of a small model's step.
        input_ids, labels, position_ids, block = [], [], [], []
        for row in rows:
            row_ids, row_labels, row_positions, row_block = [], [], [], []
            for number, index in enumerate(row):
                example, start = examples[index], len(row_ids)
                row_ids += example.input_ids
                row_labels += example.labels
                if lengths[index]:
                    row_labels[start] = IGNORE_INDEX  # not predicted from the example before it
                row_positions += range(lengths[index])
                row_block += [number] * lengths[index]
            tail = width - len(row_ids)
            input_ids.append(row_ids + [self.pad_id] * tail)
            labels.append(row_labels + [IGNORE_INDEX] * tail)
            position_ids.append(row_positions + list(range(tail)))
            block.append(row_block + [len(row)] * tail)
        input_ids, labels, position_ids, block = (torch.tensor(rows_of, dtype=torch.long) for rows_of in
                                                  (input_ids, labels, position_ids, block))
        causal = torch.ones((width, width), dtype=torch.bool).tril()
        allowed = (block[:, :, None] == block[:, None, :]) & causal
        return PackedBatch({"input_ids": input_ids, "labels": labels, "position_ids": position_ids,
                            "attention_mask": block_mask(allowed, self.mask_kind)}, real_tokens=sum(lengths))


def row_width(longest: int, max_length: int, multiple: int) -> int:
    """The packed rows' width: the longest row rounded up to `multiple`, not past max_length
    (unless the longest row itself is longer: a single example that was not truncated)."""
    rounded = -(-longest // multiple) * multiple
    return max(longest, min(rounded, max_length))


def row_width_multiple(model) -> int:
    """ROW_WIDTH_MULTIPLE for a model in half precision or on CUDA, else 1 (fp32 on a CPU).

    Read from the model the run loaded (its base weights are in the run's precision); a restart
    into another precision keeps the stream's choice, which only costs a little speed.
    """
    import torch

    dtype, device = getattr(model, "dtype", None), getattr(model, "device", None)
    half = dtype in (torch.bfloat16, torch.float16)
    return ROW_WIDTH_MULTIPLE if half or getattr(device, "type", None) == "cuda" else 1


def block_mask(allowed, mask_kind: str):
    """(rows, 1, width, width): a boolean mask for SDPA, an additive one (0 or the float minimum) for eager."""
    import torch

    allowed = allowed[:, None]
    if mask_kind == "bool":
        return allowed
    if mask_kind == "additive":
        return torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    raise ValueError(f"unknown packed mask kind {mask_kind!r}")


def setup_packing(stream, model, data_config) -> str | None:
    """Pack the stream's micro-batches where data.packing asks and the model can; else pad them.

    Padded batches are grouped by length when data.group_by_length is on. Returns
    a notice for the run's log when packing was asked for but the model cannot
    take packed rows, else None. Call it before the first batch is drawn.
    """
    mask_kind = packing_mask_kind(model)
    if data_config.packing and mask_kind is not None:
        stream.collate = Packer(stream.pad_id, mask_kind, data_config.max_length,
                                attention_span(model.config) * FUSED_ATTENTION_SPEEDUP, row_width_multiple(model))
        stream.group_by_length = False
        return None
    stream.collate = stream.padded_collate
    stream.group_by_length = data_config.group_by_length
    if data_config.packing:
        implementation = getattr(model.config, "_attn_implementation", None)
        return (f"data.packing: batches are padded, not packed: the model's attention ({implementation}) has no "
                f"packed path here (sdpa and eager do)")
    return None
