"""Frozen base weights stored in 8 bits (fp8 e4m3 or int8, one scale per output row), computed in bf16.

Storage only: every Linear call dequantises its weight to the compute dtype, so the matmuls and the function
are the bf16 ones up to the rounding of the stored weights (fp8 e4m3 keeps 3 mantissa bits, int8 7 bits of
the row's range). This halves the resident base (4.86 -> about 2.5 GiB for Lumina2 2B). Only the transformer
blocks' Linears are stored this way; embedders, final layer and norms stay as they are. Under torch.compile
the dequantisation fuses into one pass per weight, and the backward recomputes it instead of saving a bf16
copy. Applies to backbones whose tree the trainer owns (diffusers / native files), never to a ComfyUI MODEL
(ComfyUI has its own fp8 weight storage). No ComfyUI imports.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .nextdit import block_linears

_BLOCK_PREFIXES = ("layers.", "noise_refiner.", "context_refiner.")
FP8_MAX = 448.0  # largest finite float8_e4m3fn
# model.base_precision value -> (storage dtype, largest stored magnitude)
FORMATS: dict[str, tuple[torch.dtype, float]] = {"fp8": (torch.float8_e4m3fn, FP8_MAX), "int8": (torch.int8, 127.0)}


def quantize_weight(w: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(stored weight, fp32 scale per output row) with w ≈ stored.float() * scale."""
    dtype, top = FORMATS[fmt]
    w32 = w.detach().float()
    scale = (w32.abs().amax(dim=1, keepdim=True) / top).clamp_min(1e-12)
    q = w32 / scale
    q = q.round().clamp(-top, top).to(dtype) if dtype == torch.int8 else q.to(dtype)
    return q, scale


def dequantized_weight(module: nn.Module, dtype: torch.dtype, device: torch.device):
    """A Linears weight_fn: (weight, bias) in `dtype`, dequantising modules stored by `quantize_base`."""
    scale = getattr(module, "weight_scale", None)
    w = module.weight.to(device=device)
    w = w.to(dtype) if scale is None else (w.to(torch.float32) * scale.to(device)).to(dtype)
    b = module.bias.to(device=device, dtype=dtype) if module.bias is not None else None
    return w, b


def quantize_base(backbone, fmt: str) -> int:
    """Store the block Linears of `backbone`'s tree in `fmt` ('fp8' or 'int8'), in place; returns bytes saved.

    Raises:
        ConfigError: unknown format, or a backbone whose weights are shared (a ComfyUI MODEL).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"model.base_precision '{fmt}' has no 8-bit storage here; choose one of "
                          f"{', '.join(FORMATS)}")
    if backbone.kind == "comfy":
        raise ConfigError("model.base_precision: a ComfyUI MODEL is shared and is never modified; load it with "
                          "an fp8 weight_dtype in ComfyUI instead")
    saved = 0
    local = block_linears(backbone.arch)
    for name in backbone.linear_names():
        if not name.startswith(_BLOCK_PREFIXES) or not name.endswith(local):
            continue
        module = backbone.linear(name)
        if getattr(module, "weight_scale", None) is not None:
            continue
        q, scale = quantize_weight(module.weight, fmt)
        saved += module.weight.numel() * module.weight.element_size() - q.numel() * q.element_size()
        module.weight = nn.Parameter(q, requires_grad=False)
        module.register_buffer("weight_scale", scale, persistent=False)
    backbone.weight_fn = dequantized_weight
    return saved
