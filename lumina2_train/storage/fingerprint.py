"""Content hashes for weights, files and configs (cache keys, checkpoint compatibility, metadata)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch


def tensor_fingerprint(sd: dict[str, torch.Tensor], sample_elems: int = 4096) -> str:
    """A stable 16-hex hash of a state dict: names, shapes, dtypes and a strided sample of each tensor.

    Sampling keeps this cheap on a 2.6B-parameter model while any real change of weights shows.
    """
    h = hashlib.sha256()
    for name in sorted(sd):
        t = sd[name]
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // sample_elems)
        sample = flat[::step][:sample_elems].to("cpu", torch.float32).contiguous()
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


def file_fingerprint(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, 16 hex digits."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


def json_fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
