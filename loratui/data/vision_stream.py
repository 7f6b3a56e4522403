"""Batches of vision examples whose images are decoded off the training thread, one batch ahead.

The order of batches is BatchStream's (a pure function of seed and epoch, so a
checkpoint's position is all exact resume needs). While the trainer runs a step,
one worker thread reads and decodes the next batch's images and runs the family's
image processor (Pillow and the processor release the GIL in their heavy parts).
Only the batches in flight hold pixels: memory is bounded by the batch size and
the pixel budget, never by the data set. `wait_seconds` is the time the trainer
spent waiting for images, for the image-wait share.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from loratui.data.dataset import BatchStream, DataPosition
from loratui.data.images import load_rgb
from loratui.data.vision_rows import VisionExample

Collate = Callable[[list[VisionExample], list], dict]


class VisionBatchStream(BatchStream):
    def __init__(self, examples: list[VisionExample], batch_size: int, *, collate: Collate, seed: int,
                 shuffle: bool, pad_id: int, rank: int = 0, world_size: int = 1):
        super().__init__(examples, batch_size, seed=seed, shuffle=shuffle, pad_id=pad_id, rank=rank,
                         world_size=world_size)
        self.family_collate = collate
        self.wait_seconds = 0.0
        self.images_served = 0
        self._images_reported = 0
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loratui-images")
        self._ahead: tuple[DataPosition, Future] | None = None

    def next_batch(self) -> dict:
        position = self._normalised(self.position)
        if self._ahead is not None and self._ahead[0] == position:
            future = self._ahead[1]
        else:  # first batch, or the position was moved (resume, restart): start over from here
            future = self._worker.submit(self._build, position)
        started = time.perf_counter()
        batch, images = future.result()
        self.wait_seconds += time.perf_counter() - started
        self.images_served += images
        self.position = DataPosition(position.epoch, position.batch + 1)
        following = self._normalised(self.position)
        self._ahead = (following, self._worker.submit(self._build, following))
        return batch

    def take_images_served(self) -> int:
        """Images served since the last call (a step's images, read when its event is published)."""
        images, self._images_reported = self.images_served - self._images_reported, self.images_served
        return images

    def _normalised(self, position: DataPosition) -> DataPosition:
        if position.batch >= self.batches_per_epoch:
            return DataPosition(position.epoch + 1, 0)
        return position

    def _build(self, position: DataPosition) -> tuple[dict, int]:
        examples = [self.examples[i] for i in self._epoch_batches(position.epoch)[position.batch]]
        images = [load_rgb(path) for example in examples for path in example.images]
        return self.family_collate(examples, images), len(images)

    def close(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)
