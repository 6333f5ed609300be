"""Cache entries on disk: content-addressed safetensors files, written atomically, checked when read.

An entry's file name is the hash of everything that can change it (key functions below), so a stale
entry is simply never addressed; its metadata repeats the key, so a renamed or copied file is refused.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..data import DataItem
from ..errors import CacheError
from ..storage.atomic import DiskFullError, atomic_write, error_errno, remove_stale_temps

# Bump when the pixel pipeline (decode, resize, crop) or the feature layout changes: old entries go stale.
LATENT_FORMAT = 1
TEXT_FORMAT = 1
LATENTS, TEXTS = "latents", "text"


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:32]


def latent_key(item: DataItem, flip: bool, vae_identity: str) -> str:
    """Covers the image bytes, every step of the resize/crop plan, the background, the flip and the VAE."""
    return _key({"v": LATENT_FORMAT, "image": item.image_fingerprint, "size": item.size_px,
                 "down": item.downsample_px, "resize": item.resize_px, "crop": item.crop, "bucket": item.bucket,
                 "background": item.background, "flip": flip, "vae": vae_identity})


def text_key(prompt: str, text_identity: str, max_tokens: int) -> str:
    """Covers the exact prompt text (system prompt included), the encoder and the token limit."""
    return _key({"v": TEXT_FORMAT, "prompt": prompt, "text": text_identity, "max_tokens": max_tokens})


def entry_path(root: Path, kind: str, key: str) -> Path:
    return root / kind / key[:2] / f"{key}.safetensors"


def _compact(t: torch.Tensor) -> torch.Tensor:
    """Store float32 as bfloat16 when that is lossless (bf16 encoders): half the disk, same values."""
    if t.dtype == torch.float32:
        half = t.to(torch.bfloat16)
        if torch.equal(half.float(), t):
            return half.contiguous()
    return t.contiguous()


def write_entry(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write atomically: a temporary file in the same folder, then os.replace. Never leaves a partial entry.

    Raises:
        CacheError: the folder is not writable or the disk is full (the message says which folder).
    """
    try:
        atomic_write(path, lambda tmp: save_file({k: _compact(v) for k, v in tensors.items()}, str(tmp), metadata))
    except DiskFullError as e:
        reason = os.strerror(error_errno(e.__cause__) or errno.ENOSPC)
        raise CacheError(f"{path.parent}: no space left for a cache entry ({reason}). The entries written so far "
                         "are complete and kept. Free disk space and run the caching step again (it encodes only "
                         "what is missing), or set cache.dir to a folder on a larger drive.") from None
    except (OSError, SafetensorError) as e:
        raise CacheError(f"{path.parent}: cannot write a cache entry ({getattr(e, 'strerror', None) or e}). Make "
                         "the folder writable, or set cache.dir to a writable folder.") from None


def tidy(root: Path) -> None:
    """Delete temporary entry files that killed runs left under `root` (those of live processes stay)."""
    for kind in (LATENTS, TEXTS):
        folder = root / kind
        if folder.is_dir():
            for sub in folder.iterdir():
                remove_stale_temps(sub)


def has_entry(path: Path, key: str) -> bool:
    """True when a complete entry for `key` is at `path` (header readable, key matches)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("key") == key
    except (OSError, SafetensorError, ValueError):
        return False


def read_entry(path: Path, key: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors (floats as float32) and metadata of the entry for `key`.

    Raises:
        CacheError: the file is missing, unreadable, or holds another key (renamed or copied by hand).
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (OSError, SafetensorError, ValueError) as e:
        raise CacheError(f"{path}: cache entry cannot be read ({e}). Run the caching step again; it rewrites "
                         "missing entries.") from None
    if metadata.get("key") != key:
        raise CacheError(f"{path}: cache entry belongs to another key ({metadata.get('key')!r}). Delete the file "
                         "and run the caching step again.")
    return {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, metadata
