"""Latent and text-feature caches: fingerprinted safetensors entries on disk, written atomically.

`build_cache(dataset, encoders, cfg, root=...) -> CacheHandle` encodes only what is missing (loading an
encoder only then) and releases the encoders; `CacheHandle.sample(i)` reads one entry lazily;
`CacheSource` is the interface the trainer reads (CacheHandle and train.TensorCache implement it).
No ComfyUI imports.
"""

from __future__ import annotations

from .build import build_cache
from .handle import CacheHandle, Sample
from .source import CacheSource
from .store import entry_path, latent_key, text_key

__all__ = ["CacheHandle", "CacheSource", "Sample", "build_cache", "entry_path", "latent_key", "text_key"]
