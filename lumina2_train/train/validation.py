"""Validation images during training: flow Euler sampling with CFG from cached prompt features, decoded by
the caller's VAE, saved as PNG files and a grid. No ComfyUI imports."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from .. import recipe
from ..atomic import atomic_write
from ..config import ValidationConfig
from .hooks import ValidationImages


def sampler_settings(v: ValidationConfig) -> recipe.SamplerSettings:
    return recipe.SamplerSettings(steps=v.steps, shift=v.shift, guidance=v.guidance, cfg_renorm=v.cfg_renorm,
                                  cfg_trunc=v.cfg_trunc, guidance_rescale=v.guidance_rescale)


def sample_latents(backbone, adapters, cache, v: ValidationConfig, *, device, dtype) -> torch.Tensor:
    """One latent per validation prompt, each from noise seeded by (v.seed + prompt index)."""
    settings = sampler_settings(v)
    uncond_feats = None if v.disable_unconditional else cache.prompt_features(v.negative_prompt)

    def velocity(x, sigma, feats, mask):
        return backbone.velocity(x, sigma, feats, mask, adapters).float()

    out = []
    for i, prompt in enumerate(v.prompts):
        gen = torch.Generator().manual_seed(v.seed + i)
        noise = torch.randn(1, recipe.LATENT_CHANNELS, v.height // 8, v.width // 8, generator=gen)
        cond = (cache.prompt_features(prompt)[None].to(device, dtype), None)
        uncond = None if uncond_feats is None else (uncond_feats[None].to(device, dtype), None)
        out.append(recipe.sample(velocity, noise.to(device, dtype), cond, uncond, settings).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, recipe.LATENT_CHANNELS, v.height // 8, v.width // 8)


def save_images(images: torch.Tensor, folder: Path, stem: str) -> tuple[list[Path], Path | None]:
    """(N, 3, H, W) in [0, 1] -> PNG files plus a grid PNG; written atomically."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    arrays = [(img.clamp(0, 1).permute(1, 2, 0) * 255).round().byte().numpy() for img in images]
    paths = []
    for i, arr in enumerate(arrays):
        p = folder / f"{stem}_{i:02d}.png"
        atomic_write(p, lambda t, a=arr: Image.fromarray(a).save(t, format="PNG"))
        paths.append(p)
    if not arrays:
        return paths, None
    grid = folder / f"{stem}_grid.png"
    atomic_write(grid, lambda t: image_grid(images).save(t, format="PNG"))
    return paths, grid


def image_grid(images: torch.Tensor, columns: int | None = None):
    """(N, 3, H, W) in [0, 1] -> one PIL image, as square as possible."""
    from PIL import Image

    n, _, h, w = images.shape
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = torch.ones(3, rows * h, cols * w)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        canvas[:, r * h : (r + 1) * h, c * w : (c + 1) * w] = img.clamp(0, 1)
    return Image.fromarray((canvas.permute(1, 2, 0) * 255).round().byte().numpy())


def run_validation(backbone, adapters, cache, v: ValidationConfig, step: int, *,
                   decode: Callable[[torch.Tensor], torch.Tensor] | None, folder: Path | None,
                   device, dtype) -> ValidationImages:
    """Sample every validation prompt; decode and save when a decoder is given."""
    latents = sample_latents(backbone, adapters, cache, v, device=device, dtype=dtype)
    images = ((decode(latents) + 1) / 2).clamp(0, 1) if decode is not None else torch.zeros(0, 3, 1, 1)
    paths, grid = save_images(images, folder, f"step_{step:06d}") if (folder and decode) else ([], None)
    return ValidationImages(step, tuple(v.prompts), images, tuple(paths), grid)
