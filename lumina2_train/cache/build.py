"""build_cache: encode what is missing (and only that), in batches, then release the encoders.

Each entry is written atomically as soon as its batch is encoded, so an interrupted pass resumes where
it stopped. Encoders are loaded only when something misses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import CacheConfig
from ..data import DataItem, DatasetHandle, prepare_pixels
from ..encoders import EncoderProvider, LatentEncoder, TextEncoder
from ..errors import CacheError, ConfigError
from ..recipe import LATENT_CHANNELS, LUMINA2, caption_tokens, dropped_prompt, format_prompt, system_prompt_text
from ..storage.fingerprint import json_fingerprint
from .handle import CacheHandle, family_text_key
from .store import LATENTS, TEXTS, entry_path, has_entry, latent_key, tidy, write_entry

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class _LatentJob:
    item: DataItem
    flip: bool
    key: str


class _Bar:
    """Reports (done, total) to the caller's callback, or draws a tqdm bar when there is none."""

    def __init__(self, total: int, callback: Progress | None):
        self.done, self.total, self.callback = 0, total, callback
        self.tqdm = None
        if callback is None and total:
            from tqdm.auto import tqdm

            self.tqdm = tqdm(total=total, desc="caching latents and text", unit="entry", leave=False)

    def advance(self, n: int) -> None:
        self.done += n
        if self.callback is not None:
            self.callback(self.done, self.total)
        if self.tqdm is not None:
            self.tqdm.update(n)

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()


def max_caption_tokens(cfg: CacheConfig, family: str) -> int:
    """cache.max_caption_tokens; left at its default, the family's own (recipe.caption_tokens: Z-Image 512)."""
    if cfg.max_caption_tokens == type(cfg)().max_caption_tokens:
        return caption_tokens(family)
    return cfg.max_caption_tokens


def build_cache(dataset: DatasetHandle, encoders: EncoderProvider, cfg: CacheConfig, *, root: str | Path,
                extra_prompts: Sequence[str] = (), progress: Progress | None = None,
                family: str = LUMINA2) -> CacheHandle:
    """Make sure every latent and caption feature the dataset needs is on disk under `root`.

    Args:
        extra_prompts: raw captions (validation prompts, negative prompt) to cache too. The dropped
            caption (recipe.dropped_prompt) is always cached.
        progress: called with (done, total) after each batch; None draws a tqdm bar.
        family: the prompt format (recipe.PROMPT_FAMILIES: "lumina2" Gemma2, "zimage" Qwen3), which the
            caller takes from the DiT's arch or its text encoder; part of every text key.
    Raises:
        ConfigError: `cfg` is invalid. DatasetError: `dataset.require_usable()` fails (checked before any
        model loads). CacheError: the cache folder cannot be written, or an encoder returns wrong shapes.
    """
    errors = cfg.errors("cache")
    if errors:
        raise ConfigError(errors)
    dataset.require_usable()
    root = Path(root).expanduser().absolute()
    tidy(root)  # temporary files of killed runs; never a complete entry
    system = system_prompt_text(cfg.system_prompt, cfg.custom_system_prompt, family)
    if family != LUMINA2 and cfg.system_prompt not in ("custom", "none"):
        log.info("cache.system_prompt '%s' is a Lumina2 prefix; %s prompts get none (docs/recipe.md)",
                 cfg.system_prompt, family)
    keys = tuple((latent_key(i, False, encoders.vae_identity),
                  latent_key(i, True, encoders.vae_identity) if i.flip else "") for i in dataset.items)
    latent_jobs = [] if cfg.vae_cache_disable else _missing_latents(dataset.items, keys, root)
    prompts = [format_prompt(i.caption, system, family) for i in dataset.items]
    prompts += [format_prompt(p, system, family) for p in extra_prompts] + [dropped_prompt(family)]
    max_tokens = max_caption_tokens(cfg, family)
    text_jobs = _missing_texts(prompts, encoders.text_identity, max_tokens, root, family)
    total = len(latent_jobs) + len(text_jobs)
    log.info("cache %s: %d latents and %d prompts to encode", root, len(latent_jobs), len(text_jobs))
    bar = _Bar(total, progress)
    try:
        if latent_jobs:
            _encode_latents(latent_jobs, encoders.latent_encoder(), cfg.vae_batch_size, root, bar)
        if text_jobs:
            _encode_texts(text_jobs, encoders, root, bar, batch_size=cfg.encode_batch_size,
                          max_tokens=max_tokens)
    finally:
        bar.close()
        if total:
            encoders.release()
    parts = {"dataset": dataset.fingerprint, "latents": keys, "vae": encoders.vae_identity,
             "on_the_fly": cfg.vae_cache_disable, "texts": prompts[:len(dataset.items)],
             "text": encoders.text_identity, "max_tokens": max_tokens}
    fingerprint = json_fingerprint(parts if family == LUMINA2 else {**parts, "family": family})
    return CacheHandle(root=root, fingerprint=fingerprint, system_prompt=system,
                       text_identity=encoders.text_identity, vae_identity=encoders.vae_identity,
                       max_tokens=max_tokens, items=dataset.items, latent_keys=keys,
                       data=dataset.config, config=cfg, dataset_fingerprint=dataset.fingerprint,
                       encoders=encoders if cfg.vae_cache_disable else None, family=family)


def _missing_latents(items: Sequence[DataItem], keys: Sequence[tuple[str, str]], root: Path) -> list[_LatentJob]:
    jobs = []
    for item, (plain, flipped) in zip(items, keys):
        for flip, key in ((False, plain), (True, flipped)):
            if key and not has_entry(entry_path(root, LATENTS, key), key):
                jobs.append(_LatentJob(item, flip, key))
    # one bucket per batch, biggest buckets first (an out-of-memory shows up at once)
    return sorted(jobs, key=lambda j: (-j.item.bucket[0] * j.item.bucket[1], j.item.bucket))


def _missing_texts(prompts: Sequence[str], identity: str, max_tokens: int, root: Path,
                   family: str) -> list[tuple[str, str]]:
    unique = dict.fromkeys(prompts)  # ordered, no duplicates
    jobs = [(p, family_text_key(p, identity, max_tokens, family)) for p in unique]
    jobs = [(p, k) for p, k in jobs if not has_entry(entry_path(root, TEXTS, k), k)]
    return sorted(jobs, key=lambda j: len(j[0]))  # similar lengths batch with little padding


def _encode_latents(jobs: list[_LatentJob], vae: LatentEncoder, batch_size: int, root: Path, bar: _Bar) -> None:
    import torch

    start = 0
    while start < len(jobs):
        bucket = jobs[start].item.bucket
        batch = [jobs[start]]
        while len(batch) < batch_size and start + len(batch) < len(jobs) \
                and jobs[start + len(batch)].item.bucket == bucket:
            batch.append(jobs[start + len(batch)])
        pixels = torch.stack([prepare_pixels(j.item, flip=j.flip) for j in batch])  # (B, 3, H, W)
        latents = vae.encode(pixels)  # (B, 16, H/8, W/8)
        expected = (len(batch), LATENT_CHANNELS, bucket[1] // 8, bucket[0] // 8)
        if tuple(latents.shape) != expected:
            raise CacheError(f"vae: returned latents of shape {tuple(latents.shape)} for {bucket[0]}x{bucket[1]} "
                             f"images (expected {expected}). Use the 16-channel Flux VAE.")
        for job, latent in zip(batch, latents):
            write_entry(entry_path(root, LATENTS, job.key), {"latent": latent.float()}, _latent_meta(job))
        bar.advance(len(batch))
        start += len(batch)


def _latent_meta(job: _LatentJob) -> dict[str, str]:
    return {"key": job.key, "kind": "latent", "path": job.item.path, "image": job.item.image_fingerprint,
            "bucket": f"{job.item.bucket[0]}x{job.item.bucket[1]}", "crop": str(list(job.item.crop)),
            "flip": str(int(job.flip))}


def _encode_texts(jobs: list[tuple[str, str]], encoders: EncoderProvider, root: Path, bar: _Bar, *,
                  batch_size: int, max_tokens: int) -> None:
    import torch

    text: TextEncoder = encoders.text_encoder()
    truncated = 0
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start:start + batch_size]
        feats = text.encode([p for p, _ in batch], max_tokens)
        for (prompt, key), f in zip(batch, feats):
            truncated += int(f.shape[0] >= max_tokens)
            meta = {"key": key, "kind": "text", "prompt": prompt, "length": str(f.shape[0]),
                    "text_identity": encoders.text_identity, "max_tokens": str(max_tokens)}
            mask = torch.ones(f.shape[0], dtype=torch.bool)  # unpadded: every stored token is real
            write_entry(entry_path(root, TEXTS, key), {"cap_feats": f.float(), "cap_mask": mask}, meta)
        bar.advance(len(batch))
    if truncated:
        log.warning("%d prompt(s) reached %d tokens (cache.max_caption_tokens) and were cut there; raise it to "
                    "keep their ends", truncated, max_tokens)
