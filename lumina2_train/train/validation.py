"""Validation images during training: flow Euler sampling with CFG from cached prompt features, decoded by
the caller's VAE, saved as PNG files and a grid. No ComfyUI imports."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import torch

from .. import recipe
from ..config import ValidationConfig
from ..errors import ConfigError
from ..storage.atomic import atomic_write
from .hooks import ValidationImages


def named_prompts(v: ValidationConfig) -> list[tuple[str, str]]:
    """(name, prompt) for every validation prompt: `prompts` as prompt_00.., then the prompt library's."""
    out = [(f"prompt_{i:02d}", p) for i, p in enumerate(v.prompts)]
    if v.prompt_library:
        try:
            library = json.loads(Path(v.prompt_library).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"validation.prompt_library '{v.prompt_library}': cannot be read as JSON ({e}). "
                              'Write an object like {"portrait": "a photo of ..."}') from None
        if not isinstance(library, dict) or not all(isinstance(x, str) for x in library.values()):
            raise ConfigError(f"validation.prompt_library '{v.prompt_library}': must map names to prompt "
                              'strings, like {"portrait": "a photo of ..."}')
        out += [(str(name), prompt) for name, prompt in library.items()]
    return out


def sampler_settings(v: ValidationConfig) -> recipe.SamplerSettings:
    return recipe.SamplerSettings(steps=v.steps, shift=v.shift, guidance=v.guidance, cfg_renorm=v.cfg_renorm,
                                  cfg_trunc=v.cfg_trunc, guidance_rescale=v.guidance_rescale)


def negative_features(cache, negative_prompt: str) -> torch.Tensor:
    """The unconditional features: an empty negative is the dropped caption "" (no system prompt), as in
    caption dropout, the official sampler and diffusers' Lumina2Pipeline; a non-empty one is formatted with
    the system prompt like every other prompt (as ComfyUI's CLIPTextEncodeLumina2 would encode it)."""
    if not negative_prompt.strip():
        return cache.empty_prompt_features()
    return cache.prompt_features(negative_prompt)


def cached_negative(negative_prompt: str) -> list[str]:
    """The negative prompt as a raw prompt the cache must hold: none when it is empty (always cached)."""
    return [negative_prompt] if negative_prompt.strip() else []


def sample_latents(backbone, adapters, cache, v: ValidationConfig, prompts: list[str], *, device,
                   dtype) -> torch.Tensor:
    """One latent per prompt, each from noise seeded by (v.seed + prompt index); without the training adapter
    (adapter.training_adapter), so the previews show the model as it will be used."""
    settings = sampler_settings(v)
    uncond_feats = None if v.disable_unconditional else negative_features(cache, v.negative_prompt)

    def velocity(x, sigma, feats, mask):
        return backbone.velocity(x, sigma, feats, mask, adapters).float()

    out = []
    for i, prompt in enumerate(prompts):
        gen = torch.Generator().manual_seed(v.seed + i)
        noise = torch.randn(1, recipe.LATENT_CHANNELS, v.height // 8, v.width // 8, generator=gen)
        cond = (cache.prompt_features(prompt)[None].to(device, dtype), None)
        uncond = None if uncond_feats is None else (uncond_feats[None].to(device, dtype), None)
        with backbone.training_adapter_off():
            out.append(recipe.sample(velocity, noise.to(device, dtype), cond, uncond, settings).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, recipe.LATENT_CHANNELS, v.height // 8, v.width // 8)


def save_images(images: torch.Tensor, folder: Path, stem: str,
                names: list[str] | None = None) -> tuple[list[Path], Path | None]:
    """(N, 3, H, W) in [0, 1] -> PNG files (one per prompt name) plus a grid PNG; written atomically."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    arrays = [(img.clamp(0, 1).permute(1, 2, 0) * 255).round().byte().numpy() for img in images]
    paths = []
    for i, arr in enumerate(arrays):
        label = _safe_name(names[i]) if names else f"{i:02d}"
        p = folder / f"{stem}_{label}.png"
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


def _safe_name(name: str) -> str:
    """A prompt name as a file-name part: letters, digits, '-' and '_' only (names come from user files)."""
    cleaned = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:64]
    return cleaned or "prompt"


def run_validation(backbone, adapters, cache, v: ValidationConfig, step: int, *,
                   decode: Callable[[torch.Tensor], torch.Tensor] | None, folder: Path | None,
                   device, dtype, scorer=None) -> ValidationImages:
    """Sample every validation prompt; decode and save when a decoder is given; CLIP-score when asked."""
    named = named_prompts(v)
    names, prompts = [n for n, _ in named], [p for _, p in named]
    latents = sample_latents(backbone, adapters, cache, v, prompts, device=device, dtype=dtype)
    images = ((decode(latents) + 1) / 2).clamp(0, 1) if decode is not None else torch.zeros(0, 3, 1, 1)
    paths, grid = save_images(images, folder, f"step_{step:06d}", names) if (folder and decode) else ([], None)
    scores = tuple(scorer(images, prompts)) if (scorer is not None and decode is not None) else ()
    return ValidationImages(step, tuple(prompts), images, tuple(paths), grid, tuple(names), scores)
