"""Full fine-tune as an adapter: a trainable copy of a Linear's weight that replaces the frozen one.

`adapter.kind = 'full'` puts one `FullWeight` on every selected Linear (all groups when `adapter.targets` is
empty). The forward uses the copy through the `replaces_weight` hook of nextdit.Linears, so the base tree is
never written, which keeps a shared ComfyUI MODEL intact. Copies take the base's dtype (bf16 for a bf16
model); pair them with `train.optimizer_states = '8bit'` and `train.optimizer_in_backward` (train/lowmem.py),
whose update rounds stochastically into bf16 and frees each gradient as soon as it is applied. Biases and
norm weights stay frozen. fullmodel.py writes the result (UNETLoader file, diffusers folder, .diff patches).
No ComfyUI imports.
"""

from __future__ import annotations

import torch
from torch import nn


class FullWeight(nn.Module):
    """The trainable weight (out_features, in_features) of one Linear; its bias stays the base's."""

    replaces_weight = True

    def __init__(self, in_features: int, out_features: int, *, device=None):
        super().__init__()
        self.shape = (out_features, in_features)
        self.weight = nn.Parameter(torch.empty(0, device=device))  # sized by init_from_base

    def init_from_base(self, weight: torch.Tensor) -> None:
        """Start from a copy of the base weight, in its dtype (build_adapters calls this)."""
        if tuple(weight.shape) != self.shape:
            raise ValueError(f"base weight {tuple(weight.shape)} does not fit {self.shape}")
        self.weight = nn.Parameter(weight.detach().clone())

    def weight_and_bias(self, module: nn.Module, x: torch.Tensor):
        bias = module.bias.detach().to(x.device, x.dtype) if module.bias is not None else None
        return self.weight.to(x.dtype), bias

    def adapted_weight(self, base: torch.Tensor) -> torch.Tensor:
        """The weight that replaces `base` (fp32), for merging and export."""
        return self.weight.detach().float().to(base.device)

    def delta_weight(self) -> torch.Tensor:
        raise RuntimeError("a full fine-tune has no ΔW without its base weight; use adapted_weight(base)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # only used through weight_and_bias
        raise RuntimeError("FullWeight replaces its Linear's weight; call weight_and_bias()")
