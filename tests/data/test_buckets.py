"""Aspect buckets, resize/crop plans and bucket-pure batches."""

from __future__ import annotations

import math
import random

import pytest

from lumina2_train.config import DataConfig, DatasetConfig
from lumina2_train.data import bucket_for, plan_batches, plan_crop, scan_dataset

SIZES = [(1024, 1024), (1920, 1080), (1080, 1920), (3000, 2000), (800, 600), (513, 1537), (4000, 1000)]


@pytest.mark.parametrize("step", [16, 32, 64])
@pytest.mark.parametrize("mode", ["pixel_area", "shortest_side"])
def test_bucket_sides_are_multiples_of_the_step(step, mode):
    ds = DatasetConfig(path="x", resolution=1024, resolution_type=mode, bucket_step_px=step)
    for size in SIZES:
        w, h = bucket_for(size, ds)
        assert w % step == 0 and h % step == 0 and w >= step and h >= step


def test_pixel_area_keeps_area_and_aspect():
    ds = DatasetConfig(path="x", resolution=1024)
    for size in SIZES:
        w, h = bucket_for(size, ds)
        assert abs(w * h / 1024**2 - 1) < 0.06, (size, w, h)
        assert abs(math.log((w / h) / (size[0] / size[1]))) < 0.05, (size, w, h)
    assert bucket_for((1000, 1000), ds) == (1024, 1024)


def test_shortest_side_mode():
    ds = DatasetConfig(path="x", resolution=512, resolution_type="shortest_side")
    assert bucket_for((1920, 1080), ds) == (912, 512)
    assert bucket_for((1080, 1920), ds) == (512, 912)


def test_square_crop_aspect():
    ds = DatasetConfig(path="x", resolution=512, crop_aspect="square")
    assert {bucket_for(s, ds) for s in SIZES} == {(512, 512)}


def test_center_crop_is_centred_and_covers_the_bucket():
    ds = DatasetConfig(path="x", resolution=512, crop_aspect="square")
    plan = plan_crop((2000, 1000), ds, random.Random(0))
    assert plan.bucket == (512, 512) and plan.resize_px == (1024, 512)
    assert plan.crop == (256, 0, 768, 512)


def test_random_crop_is_reproducible_from_the_seed():
    ds = DatasetConfig(path="x", resolution=512, crop_aspect="square", crop_style="random")
    crops = [plan_crop((2000, 1000), ds, random.Random(f"crop:{s}")).crop for s in range(8)]
    assert crops == [plan_crop((2000, 1000), ds, random.Random(f"crop:{s}")).crop for s in range(8)]
    assert len(set(crops)) > 1
    for left, top, right, bottom in crops:
        assert right - left == 512 and bottom - top == 512 and 0 <= left <= 512 and top == 0


def test_crop_style_none_resizes_to_the_bucket():
    ds = DatasetConfig(path="x", resolution=512, crop_aspect="square", crop_style="none")
    plan = plan_crop((2000, 1000), ds, random.Random(0))
    assert plan.resize_px == plan.bucket == (512, 512) and plan.crop == (0, 0, 512, 512)


def test_max_size_downsamples_first():
    ds = DatasetConfig(path="x", resolution=512, max_size_px=2048, target_downsample_px=1024)
    plan = plan_crop((4000, 3000), ds, random.Random(0))
    assert plan.downsample_px == (1024, 768)
    assert plan_crop((2000, 1500), ds, random.Random(0)).downsample_px == (2000, 1500)


def test_scan_assignments_reproducible_from_seed(tmp_path, write_image, make_dataset):
    for i in range(6):
        write_image(tmp_path / f"{i}.png", (96 + 8 * i, 48), seed=i)
    cfg = make_dataset(tmp_path, crop_style="random", crop_aspect="square")
    a = scan_dataset(DataConfig(datasets=(cfg,), seed=7)).items
    b = scan_dataset(DataConfig(datasets=(cfg,), seed=7)).items
    c = scan_dataset(DataConfig(datasets=(cfg,), seed=8)).items
    assert [i.crop for i in a] == [i.crop for i in b]
    assert [i.crop for i in a] != [i.crop for i in c]
    assert all(i.bucket == (64, 64) for i in a)


def test_batches_never_mix_buckets_and_honour_repeats():
    buckets = {(64, 64): [0, 1, 2], (96, 48): [3, 4], (48, 96): [5]}
    repeats = [1, 1, 1, 3, 3, 2]
    batches = plan_batches(buckets, repeats, 2, seed=0)
    owner = {i: b for b, idx in buckets.items() for i in idx}
    for batch in batches:
        assert len({owner[i] for i in batch}) == 1
    flat = sorted(i for b in batches for i in b)
    assert flat == sorted(i for i, r in enumerate(repeats) for _ in range(r))
    assert plan_batches(buckets, repeats, 2, seed=0) == batches
    assert plan_batches(buckets, repeats, 2, seed=0, epoch=1) != batches
    assert all(len(b) == 2 for b in plan_batches(buckets, repeats, 2, seed=0, drop_last=True))
