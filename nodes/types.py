"""Every wire type of the pack, in one place (STYLE §4: `LUMINA2T_<NOUN>`).

Each carries a frozen library object, never a mutable one:
    LUMINA2T_DATASET     lumina2_train.data.DatasetHandle       Load Dataset -> Cache Latents & Text
    LUMINA2T_CACHE       lumina2_train.cache.CacheHandle        Cache Latents & Text -> Train
    LUMINA2T_ADAPTER     lumina2_train.config.AdapterConfig     Configure Adapter -> Train
    LUMINA2T_VALIDATION  lumina2_train.config.ValidationConfig  Validation Settings -> Cache and Train
    LUMINA2T_TRACKING    lumina2_train.config.TrackingConfig    Tracking Settings -> Train
    LUMINA2T_HUB         lumina2_train.config.HubConfig         Hub Upload Settings -> Train
ComfyUI's own types are used where they exist: MODEL, CLIP, VAE, IMAGE, LORA_MODEL (a state dict, as ComfyUI's
trainer and LoRA Model Loader use it), LOSS_MAP ({"loss": [float, ...]}, as ComfyUI's Plot Loss Graph reads it).
"""

from __future__ import annotations

from ._api import io

Dataset = io.Custom("LUMINA2T_DATASET")
Cache = io.Custom("LUMINA2T_CACHE")
Adapter = io.Custom("LUMINA2T_ADAPTER")
Validation = io.Custom("LUMINA2T_VALIDATION")
Tracking = io.Custom("LUMINA2T_TRACKING")
Hub = io.Custom("LUMINA2T_HUB")

__all__ = ["Adapter", "Cache", "Dataset", "Hub", "Tracking", "Validation"]
