"""9 Dev: a loader for the tiny random test text encoder (tests, demos, `comfy-e2e`). Not for real models.

ComfyUI's CLIPLoader always builds the full 2.6 B Gemma2 for a Lumina2 text encoder, so the tiny one written by
`python -m lumina2_train make-tiny-models` cannot load through it; this node takes CLIPLoader's own code path
with the tiny shape (lumina2_train/tiny/comfy_layout.py). Real workflows use Load CLIP (type lumina2).
"""

from __future__ import annotations

import folder_paths

from ..lumina2_train.tiny.comfy_loader import load_tiny_clip
from ._api import io


class LoadTinyCLIP(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Lumina2T_LoadTinyCLIP", display_name="Load Tiny Test CLIP (Lumina2, dev)",
            category="Lumina2 Trainer/9 Dev",
            description="FOR TESTS AND DEMOS ONLY: loads a tiny random text encoder written by "
                        "'python -m lumina2_train make-tiny-models' (Gemma2 for Lumina2, Qwen3 with --family "
                        "zimage; it makes no sensible pictures). Real workflows use Load CLIP with type 'lumina2'.",
            inputs=[io.Combo.Input("clip_name", options=folder_paths.get_filename_list("text_encoders"),
                                   tooltip="The tiny text encoder file in models/text_encoders.")],
            outputs=[io.Clip.Output("clip", display_name="clip",
                                    tooltip="A tiny CLIP (Gemma2 or Qwen3, read from the file), for Cache Latents & Text.")],
            is_experimental=True,
        )

    @classmethod
    def execute(cls, clip_name: str) -> io.NodeOutput:
        return io.NodeOutput(load_tiny_clip(folder_paths.get_full_path_or_raise("text_encoders", clip_name)))


NODES = [LoadTinyCLIP]
