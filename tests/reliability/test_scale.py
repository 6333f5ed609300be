"""Scale of inputs (issue 9, item 8): scan time and memory stay bounded; a 10,000-entry cache opens lazily.

The 100,000-file scan is a benchmark (`python -m lumina2_train.bench.scale`, docs/benchmarks.md "Scale"); it
runs here only with LUMINA2T_SCALE_FILES=100000 set, as it spends about a minute writing files.
"""

from __future__ import annotations

import dataclasses
import os
import time

import pytest
import torch
from safetensors.torch import save_file

from lumina2_train.bench.scale import run_scale
from lumina2_train.cache import build_cache, entry_path, latent_key, store, text_key
from lumina2_train.config import CacheConfig, DataConfig
from lumina2_train.data import DataItem, DatasetHandle
from lumina2_train.data.report import DatasetReport, ScanReport
from lumina2_train.recipe import format_prompt, system_prompt_text


@pytest.mark.slow
def test_scan_of_thousands_of_files_is_bounded(tmp_path):
    r = run_scale(3000, tmp_path / "many")
    assert r["used"] == 3000 and r["skipped"] == 0
    assert r["seconds"] < 60, r  # 0.4 ms per image on 2 CPU cores when measured
    assert r["rss_growth_mib"] < 64, r  # about 1.3 KiB per image (the DataItems) plus the image decoder


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("LUMINA2T_SCALE_FILES"),
                    reason="benchmark: set LUMINA2T_SCALE_FILES=100000 to scan that many files (about a minute)")
def test_scan_of_100k_files(tmp_path):
    n = int(os.environ["LUMINA2T_SCALE_FILES"])
    r = run_scale(n, tmp_path / "many")
    assert r["used"] == n and r["seconds"] < 600 and r["peak_rss_kib"] < 1024 * 1024, r


class _Counting:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *a, **k):
        self.calls += 1
        return self.fn(*a, **k)


class _NoEncoders:
    text_identity, vae_identity = "text-id", "vae-id"

    def text_encoder(self):
        raise AssertionError("a warm cache must not load the text encoder")

    def latent_encoder(self):
        raise AssertionError("a warm cache must not load the VAE")

    def release(self):
        pass


def _warm_cache(root, n: int) -> DatasetHandle:
    """n items with their latent entries (and one shared caption's text entry) already on disk."""
    base = DataItem(path="/data/x.png", caption="a photo", dataset_index=0, bucket=(32, 32), crop=(0, 0, 32, 32),
                    is_regularisation=False, loss_weight=1.0, repeats=1, image_fingerprint="", flip=False,
                    size_px=(32, 32), downsample_px=(32, 32), resize_px=(32, 32))
    items = tuple(dataclasses.replace(base, path=f"/data/{i}.png", image_fingerprint=f"{i:016x}") for i in range(n))
    latent = torch.zeros(16, 4, 4, dtype=torch.bfloat16)
    for item in items:
        key = latent_key(item, False, _NoEncoders.vae_identity)
        path = entry_path(root, store.LATENTS, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"latent": latent}, str(path), {"key": key})
    cfg = CacheConfig()
    for prompt in (format_prompt("a photo", system_prompt_text(cfg.system_prompt, cfg.custom_system_prompt)), ""):
        key = text_key(prompt, _NoEncoders.text_identity, cfg.max_caption_tokens)
        path = entry_path(root, store.TEXTS, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"cap_feats": torch.zeros(3, 32), "cap_mask": torch.ones(3, dtype=torch.bool)}, str(path),
                  {"key": key})
    report = DatasetReport("/data", n, tuple(i.path for i in items), (), {"32x32": n}, ())
    return DatasetHandle(items, ScanReport((report,)), "dataset-fp", DataConfig())


@pytest.mark.slow
def test_a_10000_entry_cache_opens_without_reading_entries(tmp_path, monkeypatch):
    n = 10_000
    dataset = _warm_cache(tmp_path / "c", n)
    loads, headers = _Counting(store.load_file), _Counting(store.safe_open)
    monkeypatch.setattr(store, "load_file", loads)
    monkeypatch.setattr(store, "safe_open", headers)
    t0 = time.perf_counter()
    cache = build_cache(dataset, _NoEncoders(), CacheConfig(), root=tmp_path / "c", progress=lambda *_: None)
    seconds = time.perf_counter() - t0
    assert len(cache) == n and loads.calls == 0  # no tensor was read: headers only, to confirm each entry
    assert headers.calls == n + 2 and seconds < 60, seconds
    sample = cache.sample(1234)
    assert loads.calls == 2 and sample.latent.shape == (16, 4, 4)  # one latent and one caption, nothing else
