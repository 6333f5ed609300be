"""Load a tiny ComfyUI-layout text encoder (the Gemma2 of comfy_layout.py, or the Qwen3-4B-layout file of
qwen3.py / zimage.py) through ComfyUI's own CLIP loader, as the dev node 'Load Tiny Test CLIP' and tests/comfy do.
ComfyUI is imported inside the function only."""

from __future__ import annotations

from pathlib import Path

from .comfy_layout import comfy_tiny_clip_options

# ComfyUI detects Qwen3 by this key (comfy/sd.py detect_te_model); Gemma2 has no q_norm
QWEN3_KEY = "model.layers.0.self_attn.q_norm.weight"


def tiny_clip_options(path: str | Path) -> dict:
    """The `model_options` that shrink ComfyUI's fixed config to the tiny file at `path`: the Qwen3 override for a
    Qwen3-4B-layout file, else the Gemma2 one. Reads the safetensors header only."""
    from safetensors import safe_open

    from .qwen3 import comfy_tiny_qwen3_options

    with safe_open(str(path), framework="pt") as f:
        is_qwen3 = QWEN3_KEY in set(f.keys())
    return comfy_tiny_qwen3_options() if is_qwen3 else comfy_tiny_clip_options()


def load_tiny_clip(path: str | Path):
    """A ComfyUI CLIP from a tiny text-encoder file: CLIPLoader's path (`comfy.sd.load_clip`, type lumina2) with
    the tiny config merged in (ComfyUI would otherwise build the 2.6 B Gemma2 or the 4 B Qwen3)."""
    import comfy.sd

    return comfy.sd.load_clip([str(path)], clip_type=comfy.sd.CLIPType.LUMINA2, model_options=tiny_clip_options(path))


__all__ = ["load_tiny_clip", "tiny_clip_options"]
