"""2 Cache: Cache Latents & Text -> LUMINA2T_CACHE (fingerprinted VAE latents + Gemma2 features on disk)."""

from __future__ import annotations

from ..lumina2_train.comfyui import data as comfy_data
from ..lumina2_train.config import CacheConfig
from . import types
from ._api import advanced, io, ui, widget

_C = CacheConfig()


class CacheLatentsText(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Lumina2T_CacheLatentsText", display_name="Cache Latents & Text (Lumina2)",
            category="Lumina2 Trainer/2 Cache",
            description="Encodes the dataset once with ComfyUI's VAE (Flux AE) and CLIP (Gemma2-2B) into a "
                        "fingerprinted cache under output/lumina2_train/cache; only missing entries are encoded, "
                        "then ComfyUI may unload both encoders. Feeds the Train node.",
            inputs=[
                types.Dataset.Input("dataset", tooltip="Output of 'Load Dataset' or 'Dataset from Images'."),
                io.Clip.Input("clip", tooltip="Lumina2's text encoder (Gemma2-2B): the CLIP of Load Checkpoint, or "
                                              "Load CLIP with type 'lumina2'."),
                io.Vae.Input("vae", tooltip="The Flux VAE (ae.safetensors) Lumina2 uses."),
                widget(CacheConfig, "system_prompt"),
                widget(CacheConfig, "custom_system_prompt", multiline=True),
                widget(CacheConfig, "max_caption_tokens"),
                types.Validation.Input("validation", optional=True,
                                       tooltip="The Validation Settings you give the Train node: their prompts are "
                                               "encoded here too (the Train node has no text encoder)."),
                advanced(widget(CacheConfig, "vae_batch_size")),
                # optional: prompts saved before it existed still run
                advanced(widget(CacheConfig, "encode_batch_size", optional=True)),
            ],
            outputs=[types.Cache.Output("cache", display_name="cache", tooltip="The cache handle, for the Train node."),
                     io.String.Output("summary", display_name="summary", tooltip="What was cached, and where.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, dataset, clip, vae, system_prompt: str, custom_system_prompt: str, max_caption_tokens: int,
                vae_batch_size: int, encode_batch_size: int = _C.encode_batch_size, validation=None) -> io.NodeOutput:
        cfg = CacheConfig(system_prompt=system_prompt, custom_system_prompt=custom_system_prompt,
                          max_caption_tokens=max_caption_tokens, vae_batch_size=vae_batch_size,
                          encode_batch_size=encode_batch_size)
        cache = comfy_data.build_comfy_cache(dataset, clip, vae, cfg, validation=validation,
                                             node_id=cls.hidden.unique_id)
        text = comfy_data.cache_summary(cache)
        return io.NodeOutput(cache, text, ui=ui.PreviewText(text))


NODES = [CacheLatentsText]
