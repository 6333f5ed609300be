"""Caches keyed by prompt family: Z-Image prompts in Qwen3's chat template, keys that never meet Lumina2's."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lumina2_train import recipe
from lumina2_train.cache import build_cache, text_key
from lumina2_train.cache.handle import family_text_key
from lumina2_train.config import CacheConfig
from lumina2_train.data import scan_dataset
from lumina2_train.encoders.hf import HFEncoders
from lumina2_train.errors import ModelError

from .conftest import CountingEncoders

CFG = CacheConfig(encode_batch_size=3)  # system_prompt 'superior' (the default): a Lumina2 prefix


@pytest.fixture(scope="module")
def qwen3_root(tmp_path_factory):
    from lumina2_train.tiny.qwen3 import save_tiny_qwen3

    root = tmp_path_factory.mktemp("tiny_qwen3")
    save_tiny_qwen3(root, seed=0)
    return root


@pytest.fixture
def zimage_encoders(qwen3_root, tiny_encoder_dir):
    return CountingEncoders(HFEncoders.from_paths(str(qwen3_root), str(tiny_encoder_dir)))


def test_lumina2_and_zimage_text_keys_differ_and_lumina2_keys_stay():
    prompt, identity = "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n", "same-encoder"
    lumina2 = family_text_key(prompt, identity, 256, recipe.LUMINA2)
    zimage = family_text_key(prompt, identity, 256, recipe.ZIMAGE)
    assert lumina2 != zimage
    assert lumina2 == text_key(prompt, identity, 256)  # caches made before families keep their entries


def test_zimage_cache_holds_templated_prompts_and_its_dropped_prompt(photo_data, zimage_encoders, tmp_path):
    dataset = scan_dataset(photo_data)
    cache = build_cache(dataset, zimage_encoders, CFG, root=tmp_path / "c", extra_prompts=["a validation prompt"],
                        family=zimage_encoders.inner.text_family)
    assert cache.family == recipe.ZIMAGE and cache.system_prompt == ""  # 'superior' is not Z-Image's
    template = recipe.ZIMAGE_PROMPT_TEMPLATE
    expected = {template.format(i.caption) for i in dataset.items} | {template.format("a validation prompt"),
                                                                      template.format("")}
    assert set(zimage_encoders.texts) == expected
    text = zimage_encoders.inner.text_encoder()
    torch.testing.assert_close(cache.empty_prompt_features(), text.encode([recipe.dropped_prompt("zimage")], 256)[0],
                               rtol=0, atol=1e-5)
    direct = text.encode([template.format(dataset.items[1].caption)], 256)[0]
    torch.testing.assert_close(cache.sample(1).cap_feats, direct, rtol=0, atol=1e-5)
    assert cache.caption_length(1) == direct.shape[0]
    # the same entries read as Lumina2 prompts would be another family's features: they are not found
    as_lumina2 = dataclasses.replace(cache, family=recipe.LUMINA2)
    with pytest.raises(KeyError, match="has no cached text features"):
        as_lumina2.prompt_features(dataset.items[1].caption)


def test_both_families_share_a_root_without_mixing(photo_data, encoders, zimage_encoders, tmp_path):
    dataset = scan_dataset(photo_data)
    lumina = build_cache(dataset, encoders, CFG, root=tmp_path / "c")
    zimage = build_cache(dataset, zimage_encoders, CFG, root=tmp_path / "c", family=recipe.ZIMAGE)
    assert lumina.family == recipe.LUMINA2 and lumina.fingerprint != zimage.fingerprint
    assert zimage_encoders.loads["text"] == 1  # nothing of Lumina2's counted as a hit
    assert lumina.sample(0).cap_feats.shape[1] == zimage.sample(0).cap_feats.shape[1] == 32
    assert not torch.equal(lumina.empty_prompt_features(), zimage.empty_prompt_features()[:1])
    with pytest.raises(ModelError, match=r"model.transformer: a zimage model, but the text cache holds lumina2"):
        lumina.require_family(recipe.ZIMAGE, "model.transformer")
    zimage.require_family(recipe.ZIMAGE, "model.transformer")


def test_captions_keep_each_familys_length_unless_the_setting_says(tmp_path, write_image, make_dataset,
                                                                    zimage_encoders, encoders):
    """cache.max_caption_tokens left at 256 keeps Z-Image captions to 512 tokens (its pipeline's limit), Lumina2's
    to 256; a value the user set is kept for both."""
    from lumina2_train.config import DataConfig

    long_caption = " ".join(f"tag{i % 7} photo number {i}" for i in range(120))  # several hundred tokens
    write_image(tmp_path / "long" / "img0.png", (64, 64), caption=long_caption, seed=0)
    dataset = scan_dataset(DataConfig(datasets=(make_dataset(tmp_path / "long"),)))
    lengths = {}
    for label, enc, family, cfg in (
            ("zimage", zimage_encoders, recipe.ZIMAGE, CFG), ("lumina2", encoders, recipe.LUMINA2, CFG),
            ("zimage-100", zimage_encoders, recipe.ZIMAGE, dataclasses.replace(CFG, max_caption_tokens=100))):
        cache = build_cache(dataset, enc, cfg, root=tmp_path / label, family=family)
        lengths[label] = (cache.caption_length(0), cache.max_tokens)
    assert lengths["zimage"][1] == 512 and 256 < lengths["zimage"][0] <= 512
    assert lengths["lumina2"] == (256, 256)
    assert lengths["zimage-100"] == (100, 100)
