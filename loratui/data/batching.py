"""Length-aware batching for padded micro-batches: similar lengths together, the order still random.

Where batches are padded (packing off, or a model that cannot take packed rows)
each row is padded to its batch's longest, so a batch of mixed lengths computes
mostly padding. Grouping, as transformers' LengthGroupedSampler does: cut the
epoch's shuffled order into groups of GROUP_BATCHES batches, sort each group by
length, cut it into batches, and shuffle the batches. Which examples meet in a
group still changes every epoch with the shuffle, and the batch order is drawn
from the same (seed, epoch) generator, so the epoch's batches remain a pure
function of (seed, epoch): exact resume needs only the position.
"""

from __future__ import annotations

# Batches per sorted group: larger groups pad less, smaller ones keep batches more mixed.
GROUP_BATCHES = 64


def length_grouped_batches(order: list[int], lengths: list[int], batch_size: int, generator) -> list[list[int]]:
    """`order` (the epoch's shuffled indices) cut into batches of similar lengths, in a random batch order.

    Without a generator (shuffle off) the batches stay in their groups' order, longest first.
    """
    import torch

    group = batch_size * GROUP_BATCHES
    batches = []
    for start in range(0, len(order), group):
        by_length = sorted(order[start:start + group], key=lambda i: -lengths[i])
        batches += [by_length[i:i + batch_size] for i in range(0, len(by_length), batch_size)]
    if generator is None:
        return batches
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
