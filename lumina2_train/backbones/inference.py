"""Tensors made under `torch.inference_mode()` (ComfyUI runs every node under it) and the escape from it.

Pure torch; the ComfyUI backbone and the Train node use it, and so do tests without ComfyUI.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def training_mode() -> Iterator[None]:
    """Leave ComfyUI's `torch.inference_mode()` (nodes run under it) and enable autograd for the block."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def is_autograd_safe(t: torch.Tensor) -> bool:
    """False for a tensor made under inference mode, including one that Module.to() later moved or cast
    outside it: `is_inference()` is False for those, yet autograd cannot save them ("Inference tensors do not
    track version counter"). That is what ComfyUI's weights become when a model loaded by a node is moved to
    the GPU outside inference mode. A Parameter wrapped around an inference tensor outside inference mode (what
    ComfyUI's unpatch_model restores after a LoRA was patched in) is an inference tensor whose `_version` reads
    fine, hence the is_inference() check too."""
    if t.is_inference():
        return False
    try:
        t._version  # noqa: B018  (raises for inference tensors and for those half-converted ones)
    except RuntimeError:
        return False
    return True


def clone_inference_tensors(obj):
    """`obj` with every tensor autograd cannot save (see is_autograd_safe) replaced by a normal clone.

    Tensors a node received (LATENT, CONDITIONING, cached features) were made under inference mode.
    Walks dicts, lists and tuples; other objects come back unchanged.
    """
    if isinstance(obj, torch.Tensor):
        if is_autograd_safe(obj):
            return obj
        with torch.inference_mode(False):
            return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: clone_inference_tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        out = [clone_inference_tensors(v) for v in obj]
        return type(obj)(out) if not hasattr(obj, "_fields") else type(obj)(*out)
    return obj

__all__ = ["clone_inference_tensors", "is_autograd_safe", "training_mode"]
