"""Encoder protocols: text -> Gemma2 features, pixels <-> Lumina2 latents. No ComfyUI imports.

Implementations: `hf.py` (transformers Gemma2 + tokenizer, diffusers AutoencoderKL, from local files) and
`comfy.py` (ComfyUI CLIP and VAE objects). Loading is lazy: an `EncoderProvider` knows the identity of
its encoders (for cache keys) without loading them, and loads each only when the cache misses.
"""

from __future__ import annotations

from typing import Protocol

import torch


class TextEncoder(Protocol):
    def encode(self, texts: list[str], max_tokens: int) -> list[torch.Tensor]:
        """Gemma2 hidden_states[-2] per text, unpadded: a list of (L_i, D) float32 CPU tensors.

        `texts` are final prompt strings (system prompt already prepended, recipe.format_prompt). Tokens:
        BOS + text, truncated at `max_tokens`, no padding.
        """
        ...


class LatentEncoder(Protocol):
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 16, H/8, W/8) float32 latents in the scaled space (recipe.latent_in)."""
        ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, 16, h, w) -> (B, 3, 8h, 8w) float32 pixels in [-1, 1]."""
        ...


class EncoderProvider(Protocol):
    text_identity: str  # hash of the text encoder's weights or file (part of every text-cache key)
    vae_identity: str  # hash of the VAE's weights or file (part of every latent-cache key)

    def text_encoder(self) -> TextEncoder: ...

    def latent_encoder(self) -> LatentEncoder: ...

    def release(self) -> None:
        """Free the loaded encoders (GPU and CPU memory) before training."""
        ...


def pad_features(feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpadded per-text features -> cap_feats (B, L_max, D) zero-padded on the right, cap_mask (B, L_max) bool."""
    width = max(f.shape[0] for f in feats)
    cap_feats = feats[0].new_zeros((len(feats), width, feats[0].shape[1]))
    cap_mask = torch.zeros((len(feats), width), dtype=torch.bool, device=feats[0].device)
    for i, f in enumerate(feats):
        cap_feats[i, :f.shape[0]] = f
        cap_mask[i, :f.shape[0]] = True
    return cap_feats, cap_mask
