"""Bucketed, seeded, resumable batch order. Batches never mix buckets; the order of epoch e depends only on
(seed, e), so a run resumed at (epoch, batch index) sees exactly the batches it would have seen."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

Bucket = tuple[int, int]  # (width_px, height_px)


@dataclass(frozen=True)
class DataPosition:
    epoch: int = 0
    batch: int = 0  # index of the next batch within the epoch


class BucketBatches:
    """Each epoch: every item × its repeats, shuffled within its bucket, cut into batches; batches shuffled."""

    def __init__(self, buckets: dict[Bucket, list[int]], repeats: dict[int, int], batch_size: int, seed: int):
        self.buckets = {k: list(v) for k, v in sorted(buckets.items())}
        self.repeats = repeats
        self.batch_size = batch_size
        self.seed = seed
        if not any(self.buckets.values()):
            raise ValueError("no samples to train on")

    def epoch(self, epoch: int) -> list[tuple[Bucket, list[int]]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        batches: list[tuple[Bucket, list[int]]] = []
        for bucket, items in self.buckets.items():
            pool = [i for i in items for _ in range(self.repeats.get(i, 1))]
            order = torch.randperm(len(pool), generator=gen).tolist()
            pool = [pool[j] for j in order]
            batches += [(bucket, pool[s : s + self.batch_size]) for s in range(0, len(pool), self.batch_size)]
        order = torch.randperm(len(batches), generator=gen).tolist()
        return [batches[j] for j in order]

    def batches_per_epoch(self) -> int:
        return len(self.epoch(0))

    def iterate(self, start: DataPosition) -> Iterator[tuple[DataPosition, Bucket, list[int]]]:
        """Yield (position after this batch, bucket, indices) forever, starting at `start`."""
        epoch, index = start.epoch, start.batch
        while True:
            batches = self.epoch(epoch)
            for j in range(index, len(batches)):
                nxt = DataPosition(epoch, j + 1) if j + 1 < len(batches) else DataPosition(epoch + 1, 0)
                yield nxt, batches[j][0], batches[j][1]
            epoch, index = epoch + 1, 0
