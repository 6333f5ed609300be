"""The tiny real things several test files build: velocity inputs, in-memory caches, run configs, image files and
datasets, a fixed linear "VAE", the diffusers pipeline around a tiny model, ComfyUI's own forward.

Imported as `builders` (pyproject.toml puts tests/ on pytest's `pythonpath`; the reliability child adds it itself).
Not a test module. No ComfyUI imports and nothing downloaded: each builder makes real tensors, files and configs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lumina2_train.config import (
    AdapterConfig,
    DataConfig,
    DatasetConfig,
    RunConfig,
    SaveConfig,
    TrainConfig,
    ValidationConfig,
)
from lumina2_train.train import TensorCache, TensorSample

# ---------------------------------------------------------------- tensors (backbones, adapters, files, comfy)


def velocity_inputs(b: int, tokens: int, *, sigmas=None, seed: int = 0, hw=(8, 8), dim: int = 32):
    """(latents (b, 16, *hw), sigma (b,), cap_feats (b, tokens, dim)) from one generator seeded `seed`.

    sigma is `torch.tensor(sigmas)` when given, else drawn uniform in [0, 1) between latents and features."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 16, *hw, generator=gen)
    sigma = torch.rand(b, generator=gen) if sigmas is None else torch.tensor(sigmas)
    return x, sigma, torch.randn(b, tokens, dim, generator=gen)


def tensor_cache(prompts: dict[str, int] | None = None) -> TensorCache:
    """Four samples (three 4×4 latents, one 4×6; caption lengths 5, 3, 5, 4) with features for `prompts`
    (prompt -> token count; by default 'a red cube' and the empty prompt) and the empty caption."""
    prompts = {"a red cube": 6, "": 1} if prompts is None else prompts
    gen = torch.Generator().manual_seed(7)
    lat = [torch.randn(16, 4, 4, generator=gen) for _ in range(3)] + [torch.randn(16, 4, 6, generator=gen)]
    feats = [torch.randn(n, 32, generator=gen) for n in (5, 3, 5, 4)]
    samples = [TensorSample(latent=x, cap_feats=f, caption=f"c{i}") for i, (x, f) in enumerate(zip(lat, feats))]
    return TensorCache(samples, prompts={p: torch.randn(n, 32, generator=gen) for p, n in prompts.items()},
                       empty=torch.randn(1, 32, generator=gen))


def square_cache(lengths, seed: int = 11) -> TensorCache:
    """One 8×8 latent per caption length in `lengths` (captions c0, c1, ...), nothing else."""
    gen = torch.Generator().manual_seed(seed)
    return TensorCache([TensorSample(torch.randn(16, 8, 8, generator=gen), torch.randn(n, 32, generator=gen), f"c{i}")
                        for i, n in enumerate(lengths)])


def linear_decode(latents):
    """A fixed linear "VAE" decoder: 16 latent channels -> 3 pixel channels, ×8 upsampling."""
    w = torch.linspace(-1, 1, 48).view(3, 16, 1, 1) / 4
    return torch.nn.functional.interpolate(torch.nn.functional.conv2d(latents, w), scale_factor=8).tanh()


# ---------------------------------------------------------------- run configs (train, adapters, reliability)


def run_config(out, resume_from: str = "", save: dict | None = None, **train) -> RunConfig:
    """A tiny LoRA run (rank 4 on attention + ffn, 4 steps of batch 2, fp32, seed 5) writing under `out`;
    `save` adds SaveConfig fields, `train` overrides TrainConfig fields."""
    t = dict(steps=4, batch_size=2, lr=1e-3, precision="fp32", checkpointing="off", caption_dropout=0.2, seed=5)
    t.update(train)
    return RunConfig(adapter=AdapterConfig(rank=4, alpha=4.0, targets=("attention", "ffn"), dropout=0.1),
                     train=TrainConfig(**t), validation=ValidationConfig(),
                     save=SaveConfig(output_dir=str(out), **(save or {})), resume_from=resume_from)


# ---------------------------------------------------------------- image files and datasets (data, cache, encoders)


def noise_image(size, mode="RGB", seed=0):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    return img if mode == "RGB" else img.convert(mode)


def write_image(path: Path, size=(64, 48), *, caption="a photo", seed=0, mode="RGB", **save_kw) -> Path:
    """Write a random-pixel image (format from the suffix) and, unless caption is None, its .txt caption."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise_image(size, mode, seed).save(path, **save_kw)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return path


def dataset(path, **kw) -> DatasetConfig:
    """A DatasetConfig sized for tiny test images (resolution 64, min side 16)."""
    return DatasetConfig(**{"path": str(path), "resolution": 64, "min_size_px": 16, **kw})


def scan(*datasets, seed=0):
    from lumina2_train.data import scan_dataset

    return scan_dataset(DataConfig(datasets=tuple(datasets), seed=seed))


# ---------------------------------------------------------------- the reference forwards (diffusers, ComfyUI)


def lumina2_pipeline(model):
    """diffusers' Lumina2Pipeline around `model` alone (no encoders, no VAE): enough to load a LoRA file into it."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Pipeline

    return Lumina2Pipeline(transformer=model, scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None,
                           tokenizer=None)


def diffusers_velocity(pipe, x, sigma, feats):
    """The pipeline's transformer in our convention: σ in, ε − x out (diffusers takes t = 1 − σ and returns x − ε)."""
    with torch.no_grad():
        mask = torch.ones(feats.shape[:2], dtype=torch.long)
        return -pipe.transformer(x, 1 - sigma, feats, mask, return_dict=False)[0]


def comfy_velocity(model, x, sigma, feats, mask=None):
    """ComfyUI's own NextDiT forward (σ in, ε − x out) of a ModelPatcher, as BaseModel._apply_model calls it."""
    with torch.inference_mode():
        return model.model.diffusion_model(x, sigma, context=feats, num_tokens=feats.shape[1],
                                           attention_mask=mask, transformer_options={}).clone()
