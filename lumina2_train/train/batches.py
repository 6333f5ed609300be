"""Bucketed, seeded, resumable batch order. Batches never mix buckets; the order of epoch e depends only on
(seed, e), so a run resumed at (epoch, batch index) sees exactly the batches it would have seen.

With several processes (world size W) a step's batch is one *global* batch of W × batch_size samples from one
bucket, cut into W equal slices (`rank_slice`): every rank gets the same shape each step, and W processes ×
batch b see the samples, in the order, of one process × batch W·b (less the few that a bucket's last batch
cannot split evenly). With caption lengths given,
a bucket's samples are first cut into batches of one caption length (no padding mask in attention); only
the leftovers mix lengths.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

Bucket = tuple[int, int]  # (width_px, height_px)


@dataclass(frozen=True)
class DataPosition:
    epoch: int = 0
    batch: int = 0  # index of the next (global) batch within the epoch


class BucketBatches:
    """Each epoch: every item × its repeats, shuffled within its bucket, cut into batches; batches shuffled.

    `batch_size` is per process; `epoch()` lists global batches of `batch_size × world_size` indices (a
    bucket's last one may be smaller), and depends on the world size only through that product, so a
    checkpoint's position means the same batches on any number of processes. `iterate` trims each batch to a
    multiple of `world_size` (ranks need equal slices): up to `world_size − 1` samples of a bucket sit the
    epoch out, different ones each epoch. `caption_lengths` (index -> tokens) turns on grouping by length.
    """

    def __init__(self, buckets: dict[Bucket, list[int]], repeats: dict[int, int], batch_size: int, seed: int,
                 *, world_size: int = 1, caption_lengths: dict[int, int] | None = None):
        self.buckets = {k: list(v) for k, v in sorted(buckets.items())}
        self.repeats = repeats
        self.batch_size = batch_size
        self.world_size = world_size
        self.seed = seed
        self.caption_lengths = caption_lengths
        if not any(self.buckets.values()):
            raise ValueError("no samples to train on")

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def epoch(self, epoch: int) -> list[tuple[Bucket, list[int]]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        batches: list[tuple[Bucket, list[int]]] = []
        for bucket, items in self.buckets.items():
            pool = [i for i in items for _ in range(self.repeats.get(i, 1))]
            order = torch.randperm(len(pool), generator=gen).tolist()
            batches += [(bucket, b) for b in self._cut([pool[j] for j in order])]
        order = torch.randperm(len(batches), generator=gen).tolist()
        return [batches[j] for j in order]

    def _cut(self, pool: list[int]) -> list[list[int]]:
        """A bucket's shuffled pool -> global batches: equal caption lengths first, then the rest in pool order."""
        size, rest, out = self.global_batch_size, pool, []
        if self.caption_lengths is not None and size > 1:
            groups: dict[int, list[int]] = {}  # caption length -> pool positions (a repeated item is in twice)
            for pos, i in enumerate(pool):  # lengths in order of first appearance in the shuffled pool
                groups.setdefault(self.caption_lengths[i], []).append(pos)
            left: list[int] = []
            for same in groups.values():
                full = len(same) - len(same) % size
                out += [[pool[p] for p in same[s : s + size]] for s in range(0, full, size)]
                left += same[full:]
            rest = [pool[p] for p in sorted(left)]  # leftovers of every length, back in pool order
        return out + [rest[s : s + size] for s in range(0, len(rest), size)]

    def batches_per_epoch(self) -> int:
        return len(self.epoch(0))

    def iterate(self, start: DataPosition) -> Iterator[tuple[DataPosition, Bucket, list[int]]]:
        """Yield (position after this batch, bucket, global indices) forever, starting at `start`; each batch
        is trimmed to a multiple of the world size (a batch trimmed to nothing is skipped)."""
        epoch, index, w = start.epoch, start.batch, self.world_size
        while True:
            batches = self.epoch(epoch)
            if not any(len(b) >= w for _, b in batches):
                raise ValueError(f"no bucket holds {w} samples: nothing to split across {w} processes")
            for j in range(index, len(batches)):
                nxt = DataPosition(epoch, j + 1) if j + 1 < len(batches) else DataPosition(epoch + 1, 0)
                bucket, indices = batches[j]
                indices = indices[: len(indices) - len(indices) % w]
                if indices:
                    yield nxt, bucket, indices
            epoch, index = epoch + 1, 0


def rank_slice(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """(start, stop) of rank `rank`'s share of a global batch of n samples (n is a multiple of world_size)."""
    k = n // world_size
    return rank * k, (rank + 1) * k
