"""Masked loss: masks from the alpha channel or a mask folder, cropped like the pixels, used by the loss."""

import numpy as np
import pytest
import torch
from PIL import Image

from lumina2_train.config import DataConfig
from lumina2_train.data import scan_dataset
from lumina2_train.data.images import prepare_mask
from lumina2_train.errors import DatasetError
from lumina2_train.recipe import TimestepSampling
from lumina2_train.train.step import Batch, micro_step_loss


def _half_transparent(path, size=(64, 64)):
    arr = np.full((size[1], size[0], 4), 200, dtype=np.uint8)
    arr[..., 3] = 255
    arr[:, : size[0] // 2, 3] = 0  # left half transparent
    Image.fromarray(arr, "RGBA").save(path)
    path.with_suffix(".txt").write_text("a half", encoding="utf-8")


def test_alpha_mask_follows_the_crop_and_the_flip(tmp_path, make_dataset):
    _half_transparent(tmp_path / "a.png")
    item = scan_dataset(DataConfig(datasets=(make_dataset(tmp_path, mask_strategy="alpha"),))).items[0]
    mask = prepare_mask(item, (8, 8))
    assert mask.shape == (1, 8, 8)
    assert mask[0, :, :4].max() == 0.0 and mask[0, :, 4:].min() == 1.0
    assert torch.equal(prepare_mask(item, (8, 8), flip=True), mask.flip(-1))


def test_mask_folder_matches_by_relative_stem_and_checks_size(tmp_path, write_image, make_dataset):
    images, masks = tmp_path / "img", tmp_path / "masks"
    write_image(images / "sub" / "x.jpg", size=(64, 64))
    write_image(images / "y.png", size=(64, 64))
    masks.mkdir()
    (masks / "sub").mkdir()
    Image.fromarray(np.tile(np.array([0, 255], dtype=np.uint8).repeat(32), (64, 1)), "L").save(masks / "sub" / "x.png")
    Image.new("L", (32, 32), 255).save(masks / "y.png")  # wrong size
    ds = make_dataset(images, mask_strategy="folder", mask_folder=str(masks))
    handle = scan_dataset(DataConfig(datasets=(ds,)))
    (item,) = handle.items
    assert item.mask_source == "file" and item.mask_path.endswith("sub/x.png") and item.mask_fingerprint
    m = prepare_mask(item, (8, 8))
    assert m[0, :, :4].max() == 0.0 and m[0, :, 4:].min() == 1.0
    skipped = [s for d in handle.report.datasets for s in d.skipped]
    assert any("is 32x32 px but the image is 64x64" in s.reason for s in skipped)
    with pytest.raises(DatasetError, match="mask"):
        handle.require_usable()
    lenient = scan_dataset(DataConfig(datasets=(make_dataset(images, mask_strategy="folder",
                                                             mask_folder=str(masks), missing_mask="skip"),)))
    lenient.require_usable()


def test_the_loss_ignores_masked_out_latents():
    gen = torch.Generator().manual_seed(0)
    lat = torch.randn(1, 16, 4, 4, generator=gen)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2] = 1.0
    other = lat.clone()
    other[..., 2:] += 5.0  # change only where the mask is 0

    class Zero:
        velocity = staticmethod(lambda x, s, f, m, a: torch.zeros_like(x))

    def run(latents, masks):
        batch = Batch(latents, torch.zeros(1, 3, 8), None, torch.ones(1), masks, (32, 32))
        return micro_step_loss(Zero(), None, batch, TimestepSampling(), weighting="none", gamma=5.0,
                               gen=torch.Generator().manual_seed(2), device="cpu", dtype=torch.float32)[0]

    assert run(lat, mask) == run(other, mask)
    assert run(lat, None) != run(other, None)


def test_regularisation_weight_scales_the_loss():
    class Zero:
        velocity = staticmethod(lambda x, s, f, m, a: torch.zeros_like(x))

    lat = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(0))

    def run(weights):
        batch = Batch(lat, torch.zeros(2, 3, 8), None, torch.tensor(weights), None, (32, 32))
        return micro_step_loss(Zero(), None, batch, TimestepSampling(), weighting="none", gamma=5.0,
                               gen=torch.Generator().manual_seed(2), device="cpu", dtype=torch.float32)[0]

    full, half = run([1.0, 1.0]), run([1.0, 0.5])
    assert half < full
    assert run([0.5, 0.5]) == pytest.approx(0.5 * full.item())


@pytest.mark.slow
def test_cache_samples_carry_the_mask(tmp_path, make_dataset, tiny_encoder_dir):
    from lumina2_train.cache import build_cache
    from lumina2_train.config import CacheConfig
    from lumina2_train.encoders.hf import HFEncoders

    _half_transparent(tmp_path / "a.png")
    handle = scan_dataset(DataConfig(datasets=(make_dataset(tmp_path, mask_strategy="alpha", flip=True),)))
    enc = HFEncoders.from_paths(str(tiny_encoder_dir), str(tiny_encoder_dir))
    cache = build_cache(handle, enc, CacheConfig(), root=tmp_path / "cache")
    s, f = cache.sample(0), cache.sample(0, flip=True)
    assert s.mask.shape == (1, *s.latent.shape[-2:])
    assert s.mask[0, :, 0].max() == 0.0 and torch.equal(f.mask, s.mask.flip(-1))
