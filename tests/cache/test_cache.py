"""Latent and text caches: reuse, selective invalidation, resume, staleness, on-the-fly equivalence."""

from __future__ import annotations

import dataclasses
import os
import pickle

import pytest
import torch

from lumina2_train.cache import build_cache, entry_path, latent_key, text_key
from lumina2_train.cache.store import LATENTS, TEXTS, read_entry, write_entry
from lumina2_train.config import CacheConfig, DataConfig
from lumina2_train.data import prepare_pixels, scan_dataset
from lumina2_train.errors import CacheError, DatasetError
from lumina2_train.recipe import format_prompt, system_prompt_text

CFG = CacheConfig(encode_batch_size=3)


def files(root, kind):
    return sorted(p.name for p in (root / kind).rglob("*") if p.is_file())


def test_first_build_encodes_everything_second_loads_no_encoder(photo_data, encoders, new_encoders, tmp_path):
    dataset = scan_dataset(photo_data)
    cache = build_cache(dataset, encoders, CFG, root=tmp_path / "c", extra_prompts=["a validation prompt"])
    assert encoders.images == 10  # 5 items + their flips
    assert len(encoders.texts) == 5 + 1 + 1  # captions, the extra prompt, the dropped ""
    assert encoders.loads == {"text": 1, "vae": 1} and encoders.releases == 1
    assert len(files(tmp_path / "c", LATENTS)) == 10 and len(files(tmp_path / "c", TEXTS)) == 7
    again = new_encoders()
    second = build_cache(scan_dataset(photo_data), again, CFG, root=tmp_path / "c",
                         extra_prompts=["a validation prompt"])
    assert again.loads == {"text": 0, "vae": 0} and again.texts == [] and again.images == 0
    assert second == cache and second.fingerprint == cache.fingerprint


@pytest.mark.slow
def test_handle_api(photo_data, encoders, tmp_path):
    dataset = scan_dataset(photo_data)
    cache = build_cache(dataset, encoders, CFG, root=tmp_path / "c", extra_prompts=["neg", ""])
    assert len(cache) == 5 and cache.repeats(0) == 1 and all(cache.can_flip(i) for i in range(5))
    assert cache.system_prompt == system_prompt_text("superior")
    assert sorted(i for idx in cache.buckets().values() for i in idx) == list(range(5))
    for bucket, idx in cache.buckets().items():
        for i in idx:
            s = cache.sample(i, flip=i % 2 == 1)
            assert s.latent.shape == (16, bucket[1] // 8, bucket[0] // 8) and s.latent.dtype == torch.float32
            assert s.cap_feats.ndim == 2 and s.cap_feats.shape[1] == 32 and s.mask is None
            assert s.caption == dataset.items[i].caption and s.loss_weight == 1.0 and not s.is_regularisation
            assert cache.caption_length(i) == s.cap_feats.shape[0]  # from the entry's header alone
    assert cache.empty_prompt_features().shape == (1, 32)  # "" is BOS only: no system prompt
    assert cache.prompt_features("").shape[0] > 10  # a conditioned empty caption keeps the system prompt
    assert cache.prompt_features("neg").shape[1] == 32
    with pytest.raises(KeyError, match="'never cached'"):
        cache.prompt_features("never cached")


def test_cached_features_are_what_the_encoders_give(photo_data, encoders, tmp_path):
    dataset = scan_dataset(photo_data)
    cache = build_cache(dataset, encoders, CFG, root=tmp_path / "c")
    item = dataset.items[2]
    vae, text = encoders.inner.latent_encoder(), encoders.inner.text_encoder()
    assert torch.equal(cache.sample(2).latent, vae.encode(prepare_pixels(item)[None])[0])
    assert torch.equal(cache.sample(2, flip=True).latent, vae.encode(prepare_pixels(item, flip=True)[None])[0])
    direct = text.encode([format_prompt(item.caption, cache.system_prompt)], 256)[0]
    torch.testing.assert_close(cache.sample(2).cap_feats, direct, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_changed_caption_reencodes_only_that_caption(photo_data, photo_folder, encoders, new_encoders, tmp_path):
    build_cache(scan_dataset(photo_data), encoders, CFG, root=tmp_path / "c")
    (photo_folder / "img3.txt").write_text("an entirely new caption")
    again = new_encoders()
    cache = build_cache(scan_dataset(photo_data), again, CFG, root=tmp_path / "c")
    assert again.texts == [format_prompt("an entirely new caption", cache.system_prompt)]
    assert again.images == 0 and again.loads["vae"] == 0
    assert cache.sample(3).caption == "an entirely new caption"


@pytest.mark.slow
def test_changed_crop_reencodes_only_that_latent(photo_data, encoders, new_encoders, tmp_path):
    dataset = scan_dataset(photo_data)
    build_cache(dataset, encoders, CFG, root=tmp_path / "c")
    items = list(dataset.items)
    i = next(n for n, it in enumerate(items) if it.resize_px[1] > it.bucket[1])  # room to move the crop down
    top = 0 if items[i].crop[1] else 1
    items[i] = dataclasses.replace(items[i], crop=(0, top, items[i].bucket[0], top + items[i].bucket[1]))
    moved = dataclasses.replace(dataset, items=tuple(items))
    again = new_encoders()
    cache = build_cache(moved, again, CFG, root=tmp_path / "c")
    assert again.images == 2 and again.texts == [] and again.loads["text"] == 0  # that latent and its flip
    assert torch.equal(cache.sample(i).latent, again.inner.latent_encoder().encode(prepare_pixels(items[i])[None])[0])


@pytest.mark.slow
def test_changed_image_system_prompt_or_encoder(photo_data, photo_folder, write_image, encoders, new_encoders,
                                                tmp_path, tiny_encoder_dir):
    build_cache(scan_dataset(photo_data), encoders, CFG, root=tmp_path / "c")
    write_image(photo_folder / "img4.png", (64, 64), caption="photo number 4, tag a, tag b", seed=123)
    again = new_encoders()
    build_cache(scan_dataset(photo_data), again, CFG, root=tmp_path / "c")
    assert again.images == 2 and again.texts == []
    other_prompt = new_encoders()
    build_cache(scan_dataset(photo_data), other_prompt, dataclasses.replace(CFG, system_prompt="base"),
                root=tmp_path / "c")
    assert other_prompt.images == 0 and len(other_prompt.texts) == 5  # "" is shared: no system prompt in it
    from lumina2_train.encoders.hf import HFEncoders
    from lumina2_train.tiny.vae import save_tiny_vae

    other_vae_dir = save_tiny_vae(tmp_path / "other", seed=1)
    other_vae = HFEncoders.from_paths(str(tiny_encoder_dir), str(other_vae_dir))
    assert other_vae.vae_identity != encoders.vae_identity and other_vae.text_identity == encoders.text_identity
    build_cache(scan_dataset(photo_data), other_vae, CFG, root=tmp_path / "c")
    assert other_vae.loads == {"text": 0, "vae": 1}


@pytest.mark.slow
def test_interrupted_pass_resumes_where_it_stopped(photo_data, encoders, new_encoders, tmp_path):
    dataset = scan_dataset(photo_data)

    def stop_after_four(done, total):
        if done >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_cache(dataset, encoders, dataclasses.replace(CFG, vae_batch_size=2), root=tmp_path / "c",
                    progress=stop_after_four)
    assert encoders.images == 4 and encoders.releases == 1  # released even when interrupted
    assert len(files(tmp_path / "c", LATENTS)) == 4
    assert not [p for p in (tmp_path / "c").rglob("*.tmp")]  # no partial entry left behind
    seen = []
    again = new_encoders()
    cache = build_cache(dataset, again, CFG, root=tmp_path / "c", progress=lambda d, t: seen.append((d, t)))
    assert again.images == 6 and len(again.texts) == 6 and seen[-1] == (12, 12)
    assert all(cache.sample(i).latent.shape[0] == 16 for i in range(len(cache)))


@pytest.mark.slow
def test_stale_or_foreign_entries_are_never_used(photo_data, encoders, new_encoders, tmp_path):
    dataset = scan_dataset(photo_data)
    cache = build_cache(dataset, encoders, CFG, root=tmp_path / "c")
    key0, key1 = cache.latent_keys[0][0], cache.latent_keys[1][0]
    path0, path1 = entry_path(cache.root, LATENTS, key0), entry_path(cache.root, LATENTS, key1)
    path0.write_bytes(path1.read_bytes())  # a copied file under the wrong name
    with pytest.raises(CacheError, match="belongs to another key"):
        cache.sample(0)
    path1.write_bytes(b"\x00" * 20)  # a broken file
    with pytest.raises(CacheError, match="cannot be read"):
        cache.sample(1)
    again = new_encoders()
    fixed = build_cache(dataset, again, CFG, root=tmp_path / "c")
    assert again.images == 2 and again.texts == []  # both rebuilt, nothing else
    direct = again.inner.latent_encoder().encode(prepare_pixels(dataset.items[0])[None])[0]
    assert torch.equal(fixed.sample(0).latent, direct)
    assert read_entry(path0, key0)[1]["key"] == key0


@pytest.mark.slow
@pytest.mark.parametrize("vae_batch_size", [1])
def test_cache_equals_on_the_fly_bit_for_bit(photo_folder, make_dataset, encoders, new_encoders, tmp_path,
                                             vae_batch_size):
    data = DataConfig(datasets=(make_dataset(photo_folder, flip=True, crop_style="random"),
                                make_dataset(photo_folder, crop_style="center", crop_aspect="square",
                                             repeats=2)), seed=11)
    cfg = dataclasses.replace(CFG, vae_batch_size=vae_batch_size)
    cached = build_cache(scan_dataset(data), encoders, cfg, root=tmp_path / "a")
    live_encoders = new_encoders()
    live = build_cache(scan_dataset(data), live_encoders, dataclasses.replace(cfg, vae_cache_disable=True),
                       root=tmp_path / "b")
    assert live_encoders.images == 0 and not (tmp_path / "b" / LATENTS).exists()  # no latent cached
    assert cached.buckets() == live.buckets() and [cached.repeats(i) for i in range(10)] == [live.repeats(i)
                                                                                           for i in range(10)]
    for i in range(len(cached)):
        for flip in ([False, True] if cached.can_flip(i) else [False]):
            a, b = cached.sample(i, flip=flip), live.sample(i, flip=flip)
            assert torch.equal(a.latent, b.latent), (i, flip)
            assert torch.equal(a.cap_feats, b.cap_feats) and a.caption == b.caption
    assert live_encoders.images == 15  # encoded during sampling: 10 items + 5 flips


def test_flip_only_where_enabled(photo_folder, make_dataset, encoders, tmp_path):
    data = DataConfig(datasets=(make_dataset(photo_folder),))
    cache = build_cache(scan_dataset(data), encoders, CFG, root=tmp_path / "c")
    assert encoders.images == 5 and not cache.can_flip(0)
    with pytest.raises(CacheError, match="no flipped latent"):
        cache.sample(0, flip=True)


def test_handle_is_small_picklable_and_lazy(photo_data, encoders, tmp_path):
    cache = build_cache(scan_dataset(photo_data), encoders, CFG, root=tmp_path / "c")
    blob = pickle.dumps(cache)
    assert len(blob) < 20_000 and pickle.loads(blob) == cache  # holds keys and paths, not tensors
    entry_path(cache.root, LATENTS, cache.latent_keys[4][0]).unlink()
    cache.sample(0)  # entries load one at a time: a missing one only fails when asked for
    with pytest.raises(CacheError):
        cache.sample(4)


def test_unusable_dataset_fails_before_any_encoder_loads(photo_folder, make_dataset, write_image, encoders,
                                                         tmp_path):
    write_image(photo_folder / "nocap.png", caption=None)
    dataset = scan_dataset(DataConfig(datasets=(make_dataset(photo_folder),)))
    with pytest.raises(DatasetError, match="nocap.png"):
        build_cache(dataset, encoders, CFG, root=tmp_path / "c")
    assert encoders.loads == {"text": 0, "vae": 0}


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import lumina2_train.cache.store as store

    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "save_file", disk_full)
    target = tmp_path / "x" / "ab" / "abc.safetensors"
    with pytest.raises(CacheError, match=r"No space left on device.*Free disk space"):
        write_entry(target, {"t": torch.zeros(2)}, {"key": "abc"})
    assert [p.name for p in target.parent.iterdir()] == []


def test_lossless_bfloat16_storage(tmp_path):
    exact = torch.randn(64).to(torch.bfloat16).float()
    fine = torch.randn(64)
    write_entry(tmp_path / "e.safetensors", {"exact": exact, "fine": fine}, {"key": "k"})
    from safetensors import safe_open

    with safe_open(str(tmp_path / "e.safetensors"), "pt") as f:
        assert f.get_slice("exact").get_dtype() == "BF16" and f.get_slice("fine").get_dtype() == "F32"
    tensors, _ = read_entry(tmp_path / "e.safetensors", "k")
    assert torch.equal(tensors["exact"], exact) and torch.equal(tensors["fine"], fine)


def test_keys_cover_what_changes_the_entry(photo_data):
    item = scan_dataset(photo_data).items[0]
    base = latent_key(item, False, "vae")
    for change in (dict(crop=(1, 0, 1 + item.bucket[0], item.bucket[1])), dict(image_fingerprint="0" * 16),
                   dict(background="black"), dict(resize_px=(999, 999)), dict(bucket=(16, 16))):
        assert latent_key(dataclasses.replace(item, **change), False, "vae") != base, change
    assert latent_key(item, True, "vae") != base and latent_key(item, False, "vae2") != base
    assert latent_key(dataclasses.replace(item, caption="other", repeats=9), False, "vae") == base
    assert text_key("p", "t", 256) not in (text_key("p ", "t", 256), text_key("p", "t2", 256), text_key("p", "t", 128))


@pytest.mark.slow
def test_leftovers_of_a_killed_run_are_removed_and_partial_entries_never_trusted(photo_data, encoders, new_encoders,
                                                                                 tmp_path):
    import subprocess
    import sys

    from lumina2_train.storage.locks import owner_token

    dataset = scan_dataset(photo_data)
    cache = build_cache(dataset, encoders, CFG, root=tmp_path / "c")
    path = entry_path(cache.root, LATENTS, cache.latent_keys[0][0])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = path.with_name(f".{path.name}.l2t-{dead}_1-abcd1234.tmp")  # a killed writer's temporary file
    live = path.with_name(f".{path.name}.l2t-{owner_token(os.getppid())}-abcd1234.tmp")  # a live writer's
    foreign = [path.with_name("notes.tmp"), path.with_name(".x.l2t-notapid.tmp"), path.with_name("keep.safetensors")]
    for p in (stale, live, *foreign):
        p.write_bytes(b"half")
    path.write_bytes(path.read_bytes()[:-7])  # a truncated entry under its final name (written by hand)
    again = new_encoders()
    build_cache(dataset, again, CFG, root=tmp_path / "c")
    assert not stale.exists() and live.exists() and all(p.read_bytes() == b"half" for p in foreign)
    assert again.images == 1  # the truncated entry was not trusted: encoded again
    assert read_entry(path, cache.latent_keys[0][0])[0]["latent"].shape[0] == 16


def test_an_empty_validation_negative_needs_no_system_prompt_entry(photo_data, encoders, tmp_path):
    """The run's cache holds "" (dropped caption) for an empty negative, never "SYSTEM <Prompt Start> "."""
    from lumina2_train.comfyui.data import validation_prompts
    from lumina2_train.config import ValidationConfig
    from lumina2_train.train.validation import negative_features

    v = ValidationConfig(prompts=("a validation prompt",), negative_prompt="")
    cache = build_cache(scan_dataset(photo_data), encoders, CFG, root=tmp_path / "c", extra_prompts=validation_prompts(v))
    joined = format_prompt("", cache.system_prompt)
    assert joined not in encoders.texts and "" in encoders.texts
    direct = encoders.inner.text_encoder().encode([""], 256)[0]
    torch.testing.assert_close(negative_features(cache, v.negative_prompt), direct, rtol=0, atol=1e-5)
    assert validation_prompts(dataclasses.replace(v, negative_prompt="blurry")) == ["a validation prompt", "blurry"]
