"""Rotary position embedding and the CUDA attention call of the NextDiT forward (backbones/nextdit.py).
No ComfyUI imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

if TYPE_CHECKING:
    from .nextdit import ArchConfig

def rope_angles(pos: torch.Tensor, arch: ArchConfig) -> torch.Tensor:
    """(B, L, 3) integer positions -> (B, L, head_dim/2) rotation angles (float32)."""
    parts = []
    for i, d in enumerate(arch.axes_dims):
        freqs = 1.0 / (arch.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=pos.device) / d))
        parts.append(pos[..., i : i + 1].double() * freqs)
    return torch.cat(parts, dim=-1).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of x (B, L, H, hd) by angles given as cos/sin (B, L, 1, hd/2)."""
    xf = x.float().unflatten(-1, (-1, 2))
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return out.flatten(-2).to(x.dtype)


# cuDNN's fused attention first: on an H200 it ran forward + backward at the training shape 1.55× faster
# than the flash backend (docs/benchmarks.md); the others remain as fallbacks, in PyTorch's order.
_CUDA_SDPA = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
              SDPBackend.MATH]


def cuda_attention(q, k, v, key_mask, cudnn: bool):
    """Attention of (B, H, N, d) q, k, v on CUDA: the masked kernel for a padding mask, else cuDNN first."""
    if key_mask is not None:  # padding mask: only the memory-efficient kernel fuses it
        return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
    if not cudnn:
        return F.scaled_dot_product_attention(q, k, v)
    # (B, H, N, d) contiguous, the layout cuDNN's kernel takes; it declined the transposed views
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    with sdpa_kernel(_CUDA_SDPA, set_priority=True):
        return F.scaled_dot_product_attention(q, k, v)
