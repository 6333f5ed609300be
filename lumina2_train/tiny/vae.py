"""A tiny Flux-shaped VAE: diffusers AutoencoderKL, 16 latent channels, /8, no quant convs. Nothing downloaded."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..recipe import LATENT_CHANNELS, LATENT_SCALE, LATENT_SHIFT

TINY_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,  # 3 downsamples: /8
    block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=8, sample_size=32,
    scaling_factor=LATENT_SCALE, shift_factor=LATENT_SHIFT, use_quant_conv=False, use_post_quant_conv=False,
)


def make_tiny_vae(seed: int = 0):
    """A diffusers AutoencoderKL shaped like the Flux AE (16 channels, /8), fp32, eval mode."""
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(**TINY_VAE)
    return vae.eval()


def save_tiny_vae(root: str | Path, seed: int = 0) -> Path:
    """Write `root/vae/` (diffusers layout: config.json + diffusion_pytorch_model.safetensors)."""
    vae_dir = Path(root) / "vae"
    if vae_dir.exists():
        shutil.rmtree(vae_dir)
    make_tiny_vae(seed).save_pretrained(str(vae_dir))
    return vae_dir
