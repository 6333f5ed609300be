"""`CacheSource`: what the trainer reads from a cache, whichever kind it is.

Two kinds implement it: `cache.CacheHandle` (fingerprinted entries on disk) and `train.TensorCache` (tensors
already encoded: ComfyUI LATENT/CONDITIONING inputs, the benchmark, tests). No ComfyUI imports.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class CacheSource(Protocol):
    """Items by index, grouped in buckets; each item's latent and caption features; prompt features."""

    fingerprint: str  # recorded in the run's config.json and checkpoints
    system_prompt: str  # the exact text the captions were encoded with ('' for none)

    @property
    def on_the_fly(self) -> bool:
        """True when `sample` encodes latents itself (its VAE runs in the caller's thread)."""
        ...

    def __len__(self) -> int: ...

    def buckets(self) -> dict[tuple[int, int], list[int]]:
        """(width_px, height_px) -> the indices of that bucket's items."""
        ...

    def repeats(self, i: int) -> int: ...

    def can_flip(self, i: int) -> bool: ...

    def caption_length(self, i: int) -> int:
        """Tokens of item i's caption features (batching by caption length)."""
        ...

    def sample(self, i: int, *, flip: bool = False):
        """Item i's latent (16, h, w), cap_feats (L, D), caption, loss_weight, is_regularisation and mask."""
        ...

    def prompt_features(self, caption: str) -> torch.Tensor:
        """(L, D) features of a validation prompt or caption the cache holds."""
        ...

    def empty_prompt_features(self) -> torch.Tensor:
        """(L, D) features of the empty caption (caption dropout, the unconditional prompt)."""
        ...
