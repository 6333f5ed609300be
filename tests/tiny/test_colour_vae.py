"""The demo's hand-built VAE is a real diffusers AutoencoderKL that stores 8×8 block colours and paints them
back, through the same encoder wrapper the pipeline uses (tiny/colour_vae.py)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from PIL import Image

from lumina2_train.demo import write_demo_dataset
from lumina2_train.encoders.hf import HFLatentEncoder
from lumina2_train.tiny.colour_vae import save_colour_vae
from lumina2_train.tiny.vae import make_tiny_vae


def _pixels(path):
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1


@pytest.mark.slow
def test_colour_vae_round_trips_block_colours_and_a_random_vae_does_not(tmp_path):
    folder = save_colour_vae(tmp_path)
    vae = HFLatentEncoder(AutoencoderKL.from_pretrained(str(folder)).eval())
    random_vae = HFLatentEncoder(make_tiny_vae(0))
    for png in sorted(write_demo_dataset(tmp_path / "data").glob("*.png")):
        x = _pixels(png)[None]
        blocks = F.avg_pool2d(x, 8)
        latent = vae.encode(x)
        assert latent.shape == (1, 16, x.shape[2] // 8, x.shape[3] // 8)
        for c in range(16):  # scaled channel c holds colour component c mod 3
            assert torch.allclose(latent[:, c], blocks[:, c % 3], atol=1e-3), (png.name, c)
        painted = F.interpolate(blocks, scale_factor=8, mode="nearest")
        assert (vae.decode(latent) - painted).abs().max() < 1e-3, png.name
        assert (random_vae.decode(random_vae.encode(x)) - painted).abs().mean() > 0.2, png.name
