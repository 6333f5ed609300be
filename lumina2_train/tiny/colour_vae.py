"""A hand-built tiny VAE that decodes reliably: a real diffusers AutoencoderKL (16 latent channels, /8, no quant
convs, loaded by the pipeline like any other VAE) whose weights are set, not trained, so that

* the encoder puts each 8×8 pixel block's mean colour into the latent: scaled latent channel c holds the block's
  colour component c mod 3 (red, green, blue) in [-1, 1], the same value as the pixels;
* the decoder paints each latent cell back as an 8×8 block of that colour (the mean over the channel copies).

Pictures come back as 8×8-pixel colour blocks, so whatever a tiny DiT draws in latent space shows as colours and
coarse shapes. Random tiny VAEs (tiny/vae.py) decode every latent to noise; the demo uses this one instead.

How: every ResNet and attention branch is zeroed (each block is then the identity, shortcuts copy channels),
downsamplers average 2×2 pixels, upsamplers repeat them (nearest). The GroupNorm before each `conv_out` would
normalise a flat colour away, so each colour channel c shares its group with −c and with two constants ±K added
just before the norm: the group's mean is then exactly 0 and its spread ≈ K, so the norm only divides by a
near-constant (relative error < 1e-4 at K = 100) that the norm's own scale restores. A bias of +B keeps the
SiLU that follows in its linear range; `conv_out` removes it. That needs 4 channels per group: norm_num_groups 4
(TINY_VAE has 2 per group in its last decoder stage).
"""

from __future__ import annotations

import torch

from ..recipe import LATENT_CHANNELS, LATENT_SCALE, LATENT_SHIFT
from .vae import TINY_VAE

COLOUR_VAE = dict(TINY_VAE, norm_num_groups=4)
_K, _B = 100.0, 20.0  # the constants beside each colour channel; the SiLU offset


def _copies(k: int) -> list[int]:
    """Latent channels holding colour component k (0 red, 1 green, 2 blue)."""
    return [c for c in range(LATENT_CHANNELS) if c % 3 == k]


@torch.no_grad()
def _identity_blocks(part) -> None:
    """Zero every parameter, then make each ResNet and attention block the identity and set norm scales to 1."""
    for name, p in part.named_parameters():
        p.zero_()
        if "norm" in name and name.endswith("weight"):
            p.fill_(1.0)
    for mod in part.modules():
        shortcut = getattr(mod, "conv_shortcut", None)
        if shortcut is not None:  # a ResNet that changes width: copy the first channels across
            n = min(shortcut.in_channels, shortcut.out_channels)
            shortcut.weight[torch.arange(n), torch.arange(n), 0, 0] = 1.0


@torch.no_grad()
def _colour_norm(norm, conv_out, rows: list[list[int]], channels: list[int]) -> None:
    """`norm` -> SiLU -> `conv_out` passes `channels[j]` (each in a group with its negative and ±K) to the
    output rows `rows[j]` unchanged (up to a weight and bias the caller sets on conv_out rows)."""
    group = norm.num_channels // norm.num_groups
    norm.bias.zero_()
    for ch in channels:
        sigma = (2 * _K**2 / group) ** 0.5  # the group's spread: ±K dominate (±c adds < 1e-4 relative)
        norm.weight[ch] = sigma
        norm.bias[ch] = _B
    for out_rows, ch in zip(rows, channels):
        for r in out_rows:
            conv_out.weight[r, ch, 1, 1] = 1.0


@torch.no_grad()
def _build_encoder(enc) -> None:
    _identity_blocks(enc)
    for k in range(3):  # conv_in: channel k = colour k, channel 3 + k = −colour k
        enc.conv_in.weight[k, k, 1, 1] = 1.0
        enc.conv_in.weight[3 + k, k, 1, 1] = -1.0
    for block in enc.down_blocks:
        for down in block.downsamplers or ():  # pad (0, 1, 0, 1), 3×3 stride 2: average the top-left 2×2
            c = down.conv.out_channels
            down.conv.weight[torch.arange(c), torch.arange(c), :2, :2] = 0.25
    enc.mid_block.resnets[-1].conv2.bias[6:8] = torch.tensor([_K, -_K])  # group 0 = (r, g, b, −r, −g, −b, K, −K)
    _colour_norm(enc.conv_norm_out, enc.conv_out, [_copies(k) for k in range(3)], [0, 1, 2])
    enc.conv_out.weight[:LATENT_CHANNELS] /= LATENT_SCALE  # raw latent = scaled / scale + shift
    enc.conv_out.bias[:LATENT_CHANNELS] = LATENT_SHIFT - _B / LATENT_SCALE
    enc.conv_out.bias[LATENT_CHANNELS:] = -10.0  # log-variance: a near-deterministic posterior


@torch.no_grad()
def _build_decoder(dec) -> None:
    _identity_blocks(dec)
    for k in range(3):  # conv_in: channel 4k = the mean of colour k's copies (scaled), 4k + 1 = its negative
        copies = _copies(k)
        for c in copies:
            dec.conv_in.weight[4 * k, c, 1, 1] = LATENT_SCALE / len(copies)
            dec.conv_in.weight[4 * k + 1, c, 1, 1] = -LATENT_SCALE / len(copies)
        dec.conv_in.bias[4 * k] = -LATENT_SHIFT * LATENT_SCALE
        dec.conv_in.bias[4 * k + 1] = LATENT_SHIFT * LATENT_SCALE
    for block in dec.up_blocks:
        for up in block.upsamplers or ():  # nearest ×2, then the centre tap: a plain repeat
            c = up.conv.out_channels
            up.conv.weight[torch.arange(c), torch.arange(c), 1, 1] = 1.0
    last = dec.up_blocks[-1].resnets[-1].conv2.bias  # groups of 4: (colour k, −colour k, K, −K), k = 0, 1, 2
    for k in range(3):
        last[4 * k + 2], last[4 * k + 3] = _K, -_K
    _colour_norm(dec.conv_norm_out, dec.conv_out, [[0], [1], [2]], [0, 4, 8])
    dec.conv_out.bias[:] = -_B


def make_colour_vae():
    """The hand-built AutoencoderKL described above (fp32, eval mode); deterministic, nothing random."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**COLOUR_VAE).eval()
    _build_encoder(vae.encoder)
    _build_decoder(vae.decoder)
    return vae


def save_colour_vae(root, name: str = "vae"):
    """Write `root/<name>/` (diffusers layout) and return the folder."""
    import shutil
    from pathlib import Path

    folder = Path(root) / name
    if folder.exists():
        shutil.rmtree(folder)
    make_colour_vae().save_pretrained(str(folder))
    return folder
