"""Shapes of a NextDiT (ArchConfig, one per family member: backbones/family.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchConfig:
    """Shapes of a NextDiT (full Lumina2 2B by default)."""

    dim: int = 2304
    n_layers: int = 26
    n_refiner_layers: int = 2
    n_heads: int = 24
    n_kv_heads: int = 8
    ffn_hidden: int = 9216
    cap_feat_dim: int = 2304
    patch_size: int = 2
    in_channels: int = 16
    axes_dims: tuple[int, int, int] = (32, 32, 32)
    axes_lens: tuple[int, int, int] = (300, 512, 512)
    norm_eps: float = 1e-5
    qk_norm_eps: float | None = 1e-5
    rope_theta: float = 10000.0
    # the family member (backbones/family.py): "zimage" = z_image_modulation (adaLN from a 256-wide time
    # embedding, no SiLU before the blocks' adaLN), learned pad tokens, time × time_scale
    family: str = "lumina2"
    time_scale: float = 1.0  # the network's time input is (1 − σ) × time_scale
    pad_tokens_multiple: int | None = None  # captions and images padded to a multiple, with learned tokens
    t_hidden: int | None = None  # the timestep MLP's hidden width when it is not min(dim, 1024)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def t_dim(self) -> int:
        """Width of the timestep MLP's hidden layer (and its output for Lumina2): min(dim, 1024) unless the
        weights say otherwise (diffusers' ZImageTransformer2DModel uses 1024 at any width)."""
        return self.t_hidden if self.t_hidden is not None else min(self.dim, 1024)

    @property
    def is_zimage(self) -> bool:
        return self.family == "zimage"

    @property
    def adaln_dim(self) -> int:
        """Width of the time embedding the adaLN layers read (Z-Image: 256)."""
        return min(self.dim, 256) if self.is_zimage else self.t_dim

    @property
    def qkv_split(self) -> tuple[int, int, int]:
        """Rows of the fused qkv weight: q, k, v (2304, 768, 768 for Lumina2 2B)."""
        kv = self.n_kv_heads * self.head_dim
        return (self.n_heads * self.head_dim, kv, kv)
