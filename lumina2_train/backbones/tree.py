"""The NextDiT module tree with native names (a parameter container; the forward is nextdit.velocity) and the
names of its adaptable Linears per family member."""

from __future__ import annotations

import torch
from torch import nn

from .arch import ArchConfig

# ---------------------------------------------------------------- the module tree with native names

class _Attention(nn.Module):
    def __init__(self, a: ArchConfig):
        super().__init__()
        self.qkv = nn.Linear(a.dim, sum(a.qkv_split), bias=False)
        self.out = nn.Linear(a.dim, a.dim, bias=False)
        self.q_norm = nn.RMSNorm(a.head_dim, eps=a.qk_norm_eps)
        self.k_norm = nn.RMSNorm(a.head_dim, eps=a.qk_norm_eps)


class _FeedForward(nn.Module):
    def __init__(self, a: ArchConfig):
        super().__init__()
        self.w1 = nn.Linear(a.dim, a.ffn_hidden, bias=False)
        self.w2 = nn.Linear(a.ffn_hidden, a.dim, bias=False)
        self.w3 = nn.Linear(a.dim, a.ffn_hidden, bias=False)


class _Block(nn.Module):
    def __init__(self, a: ArchConfig, modulation: bool):
        super().__init__()
        self.modulation = modulation
        self.attention = _Attention(a)
        self.feed_forward = _FeedForward(a)
        for name in ("attention_norm1", "attention_norm2", "ffn_norm1", "ffn_norm2"):
            setattr(self, name, nn.RMSNorm(a.dim, eps=a.norm_eps))
        if modulation and a.is_zimage:  # z_image_modulation: no SiLU inside (the time embedding goes in as is)
            self.adaLN_modulation = nn.Sequential(nn.Linear(a.adaln_dim, 4 * a.dim))
        elif modulation:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(a.t_dim, 4 * a.dim))


class _FinalLayer(nn.Module):
    def __init__(self, a: ArchConfig):
        super().__init__()
        self.norm_final = nn.LayerNorm(a.dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(a.dim, a.patch_size**2 * a.in_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(a.adaln_dim, a.dim))


class _TimestepEmbedder(nn.Module):
    def __init__(self, a: ArchConfig):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(256, a.t_dim), nn.SiLU(), nn.Linear(a.t_dim, a.adaln_dim))


class NativeNextDiT(nn.Module):
    """A parameter container laid out exactly like ComfyUI's NextDiT (its state dict loads as is)."""

    def __init__(self, arch: ArchConfig):
        super().__init__()
        self.arch = arch
        self.x_embedder = nn.Linear(arch.patch_size**2 * arch.in_channels, arch.dim)
        self.t_embedder = _TimestepEmbedder(arch)
        self.cap_embedder = nn.Sequential(nn.RMSNorm(arch.cap_feat_dim, eps=arch.norm_eps),
                                          nn.Linear(arch.cap_feat_dim, arch.dim))
        self.noise_refiner = nn.ModuleList(_Block(arch, True) for _ in range(arch.n_refiner_layers))
        self.context_refiner = nn.ModuleList(_Block(arch, False) for _ in range(arch.n_refiner_layers))
        self.layers = nn.ModuleList(_Block(arch, True) for _ in range(arch.n_layers))
        self.final_layer = _FinalLayer(arch)
        if arch.pad_tokens_multiple is not None:  # Z-Image's learned pad tokens (backbones/sequence.py)
            self.x_pad_token = nn.Parameter(torch.zeros(1, arch.dim))
            self.cap_pad_token = nn.Parameter(torch.zeros(1, arch.dim))


def linear_names(arch: ArchConfig) -> list[str]:
    """Every adaptable Linear of a NextDiT, by native name, in a stable order."""
    local = block_linears(arch)

    def block(prefix: str, modulation: bool) -> list[str]:
        return [f"{prefix}.{n}" for n in (local if modulation else local[:-1])]

    out = ["x_embedder", "t_embedder.mlp.0", "t_embedder.mlp.2", "cap_embedder.1"]
    for i in range(arch.n_refiner_layers):
        out += block(f"noise_refiner.{i}", True)
    for i in range(arch.n_refiner_layers):
        out += block(f"context_refiner.{i}", False)
    for i in range(arch.n_layers):
        out += block(f"layers.{i}", True)
    return out + ["final_layer.linear", "final_layer.adaLN_modulation.1"]


# Local names of the adaptable Linears inside one block, in the order `Linears.block` returns their adapters.
BLOCK_LINEARS = ("attention.qkv", "attention.out", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3",
                 "adaLN_modulation.1")
# Z-Image's block adaLN has no SiLU before its Linear, so the Linear is `adaLN_modulation.0`
ZIMAGE_BLOCK_LINEARS = BLOCK_LINEARS[:-1] + ("adaLN_modulation.0",)


def block_linears(arch: ArchConfig) -> tuple[str, ...]:
    """Local names of a block's adaptable Linears for this family member, in `Linears.block` order."""
    return ZIMAGE_BLOCK_LINEARS if arch.is_zimage else BLOCK_LINEARS
