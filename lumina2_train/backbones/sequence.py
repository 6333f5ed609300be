"""Token sequences of the NextDiT forward (nextdit.py): rope positions per family member, and Z-Image's learned
pad tokens. No ComfyUI imports.

Lumina2: caption token i at (i, 0, 0), image token (r, c) at (cap_len, r, c); padded caption tokens are masked.
Z-Image (as diffusers' ZImageTransformer2DModel and ComfyUI's NextDiT with pad_tokens_multiple): each sample's
caption is padded to a multiple of 32 with the learned `cap_pad_token` (attended to, not masked), tokens at
(1 + i, 0, 0); the image is padded to a multiple of 32 with `x_pad_token` at (0, 0, 0), its tokens at
(P + 1, r, c) where P is the sample's padded caption length. Only the padding between samples is masked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def lumina2_positions(cap_len: torch.Tensor, L: int, h: int, w: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Caption token i -> (i, 0, 0); image token (r, c) -> (cap_len, r, c), per sample."""
    b = cap_len.shape[0]
    cap_pos = torch.zeros(b, L, 3, dtype=torch.int64, device=device)
    cap_pos[..., 0] = torch.arange(L, device=device)
    img_pos = torch.stack([cap_len[:, None].expand(b, h * w), *_grid(h, w, b, device)], dim=-1)
    return cap_pos, img_pos


def _grid(h: int, w: int, b: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    return rows.expand(b, -1), cols.expand(b, -1)


def _round_up(n: torch.Tensor | int, multiple: int):
    return (n + multiple - 1) // multiple * multiple


@dataclass
class PaddedSequence:
    """Z-Image's caption and image tokens after padding (see the module docstring)."""

    cap: torch.Tensor  # (B, Lp, D) caption tokens, pad tokens after each caption
    cap_mask: torch.Tensor | None  # (B, Lp) bool, False past a sample's padded caption; None when all fill Lp
    img: torch.Tensor  # (B, Np, D) image tokens, then x_pad_token
    cap_pos: torch.Tensor  # (B, Lp, 3) int64
    img_pos: torch.Tensor  # (B, Np, 3) int64


def _pad_token(param: nn.Parameter, like: torch.Tensor) -> torch.Tensor:
    # a plain copy: ComfyUI's parameters may be inference tensors, which autograd must not see
    return param.detach().to(device=like.device, dtype=like.dtype).clone().reshape(-1)


def zimage_sequence(tree: nn.Module, multiple: int, cap: torch.Tensor, cap_len: torch.Tensor,
                    img: torch.Tensor, h: int, w: int) -> PaddedSequence:
    """Pad embedded captions `cap` (B, L, D; sample i's first cap_len[i] tokens are real) and image tokens
    `img` (B, h·w, D) with the tree's learned pad tokens, and give every token its rope position."""
    b, L, d = cap.shape
    dev = cap.device
    padded = _round_up(cap_len, multiple)  # (B,) each sample's padded caption length
    Lp = int(padded.max())
    cap = cap[:, :Lp] if Lp <= L else torch.cat([cap, cap.new_zeros(b, Lp - L, d)], dim=1)
    j = torch.arange(Lp, device=dev)
    cap = torch.where((j[None] < cap_len[:, None])[..., None], cap, _pad_token(tree.cap_pad_token, cap))
    valid = j[None] < padded[:, None]
    cap_pos = torch.zeros(b, Lp, 3, dtype=torch.int64, device=dev)
    cap_pos[..., 0] = j + 1

    n = h * w
    n_pad = _round_up(n, multiple) - n
    img_pos = torch.stack([(padded + 1)[:, None].expand(b, n), *_grid(h, w, b, dev)], dim=-1)
    if n_pad:
        img = torch.cat([img, _pad_token(tree.x_pad_token, img).expand(b, n_pad, d)], dim=1)
        img_pos = torch.cat([img_pos, img_pos.new_zeros(b, n_pad, 3)], dim=1)
    return PaddedSequence(cap, None if bool(valid.all()) else valid, img, cap_pos, img_pos)
