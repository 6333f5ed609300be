"""Load the tiny ComfyUI-layout text encoder (comfy_layout.py) through ComfyUI's own CLIP loader, as the dev node
'Load Tiny Test CLIP' and tests/comfy do. ComfyUI is imported inside the function only."""

from __future__ import annotations

from pathlib import Path

from .comfy_layout import comfy_tiny_clip_options


def load_tiny_clip(path: str | Path):
    """A ComfyUI CLIP from the tiny Gemma2 file: CLIPLoader's path (`comfy.sd.load_clip`, type lumina2) with the
    tiny config merged in (ComfyUI would otherwise build the 2.6 B Gemma2)."""
    import comfy.sd

    return comfy.sd.load_clip([str(path)], clip_type=comfy.sd.CLIPType.LUMINA2,
                              model_options=comfy_tiny_clip_options())


__all__ = ["load_tiny_clip"]
