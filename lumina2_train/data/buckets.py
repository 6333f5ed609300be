"""Aspect buckets, resize and crop plans, and bucket-pure batches. Pure arithmetic, deterministic from a seed.

pixel_area: the bucket's area is about resolution² (1024 -> ~1 MP) at the image's aspect ratio.
shortest_side: the bucket's short side is `resolution`, the long side follows the aspect ratio.
Both round each side to the nearest multiple of bucket_step_px (16, 32 or 64; 16 = VAE /8 × patch 2).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..config import DatasetConfig


@dataclass(frozen=True)
class CropPlan:
    bucket: tuple[int, int]  # (width_px, height_px)
    downsample_px: tuple[int, int]  # size after the max_size_px downsample (the source size if none)
    resize_px: tuple[int, int]  # size the image is resized to before cropping
    crop: tuple[int, int, int, int]  # (left, top, right, bottom) in the resized image; right-left = bucket width


def _round_to(value: float, step: int) -> int:
    return max(step, int(math.floor(value / step + 0.5)) * step)


def downsample_size(size: tuple[int, int], ds: DatasetConfig) -> tuple[int, int]:
    """The size after the optional downsample of images whose long side exceeds max_size_px."""
    w, h = size
    if not ds.max_size_px or max(w, h) <= ds.max_size_px:
        return w, h
    scale = (ds.target_downsample_px or ds.max_size_px) / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def bucket_for(size: tuple[int, int], ds: DatasetConfig) -> tuple[int, int]:
    """The (width, height) bucket of an image of `size` px under the dataset's bucket settings."""
    w, h = size
    aspect = 1.0 if ds.crop_aspect == "square" else w / h
    step = ds.bucket_step_px
    if ds.resolution_type == "pixel_area":
        area = float(ds.resolution) ** 2
        return _round_to(math.sqrt(area * aspect), step), _round_to(math.sqrt(area / aspect), step)
    short = float(ds.resolution)
    if aspect >= 1.0:
        return _round_to(short * aspect, step), _round_to(short, step)
    return _round_to(short, step), _round_to(short / aspect, step)


def plan_crop(size: tuple[int, int], ds: DatasetConfig, rng: random.Random) -> CropPlan:
    """Where an image of `size` px goes: its bucket, the resize and the crop box.

    center/random: resize so the image covers the bucket (aspect kept), then crop the bucket out of it.
    none: resize straight to the bucket (the aspect ratio bends slightly, or fully with crop_aspect square).
    """
    dw, dh = downsample_size(size, ds)
    bw, bh = bucket_for((dw, dh), ds)
    if ds.crop_style == "none":
        return CropPlan((bw, bh), (dw, dh), (bw, bh), (0, 0, bw, bh))
    scale = max(bw / dw, bh / dh)
    rw, rh = max(bw, round(dw * scale)), max(bh, round(dh * scale))
    if ds.crop_style == "random":
        left, top = rng.randint(0, rw - bw), rng.randint(0, rh - bh)
    else:
        left, top = (rw - bw) // 2, (rh - bh) // 2
    return CropPlan((bw, bh), (dw, dh), (rw, rh), (left, top, left + bw, top + bh))


def plan_batches(buckets: Mapping[tuple[int, int], Sequence[int]], repeats: Sequence[int], batch_size: int, *,
                 seed: int, epoch: int = 0, drop_last: bool = False) -> list[list[int]]:
    """One epoch of batches of item indices; a batch never mixes buckets.

    Each item appears `repeats[i]` times. Order is shuffled within each bucket and across batches,
    reproducibly from (seed, epoch). A bucket's last batch may be short unless drop_last.
    """
    rng = random.Random(f"batches:{seed}:{epoch}")
    batches: list[list[int]] = []
    for bucket in sorted(buckets):
        pool = [i for i in buckets[bucket] for _ in range(repeats[i])]
        rng.shuffle(pool)
        for start in range(0, len(pool), batch_size):
            chunk = pool[start:start + batch_size]
            if len(chunk) == batch_size or not drop_last:
                batches.append(chunk)
    rng.shuffle(batches)
    return batches
