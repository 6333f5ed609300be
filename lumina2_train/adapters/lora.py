"""LoRA: ΔW = (alpha / rank) · up @ down, added to a frozen Linear's output. No ComfyUI imports.

Written here rather than taken from PEFT: PEFT injects wrapper modules into the model it adapts, which
would modify ComfyUI's shared MODEL, and it cannot put one adapter on the fused qkv that diffusers
splits into three Linears (docs/architecture.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LoRA(nn.Module):
    """Low-rank adapter for one Linear of shape (out_features, in_features)."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, *, dropout: float = 0.0,
                 init: str = "default", dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.rank, self.alpha = rank, float(alpha)
        self.down = nn.Parameter(torch.empty(rank, in_features, dtype=dtype, device=device))
        self.up = nn.Parameter(torch.zeros(out_features, rank, dtype=dtype, device=device))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        with torch.no_grad():
            if init == "gaussian":
                self.down.normal_(0.0, 1.0 / rank)
            else:  # PEFT's default: kaiming-uniform(a=√5) down, zero up, so a new adapter is the identity
                nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(self.dropout(x), self.down.to(x.dtype))
        return F.linear(h, self.up.to(x.dtype)) * self.scale

    def delta_weight(self) -> torch.Tensor:
        """ΔW (out, in) in fp32: what merging adds to the base weight."""
        return (self.up.float() @ self.down.float()) * self.scale

    # ---- file layout (formats.py owns the key names; these are the tensors per module)
    def export_tensors(self) -> dict[str, torch.Tensor]:
        """{'down': (r, in), 'up': (out, r) with the scale folded in} for a file with no alpha key."""
        return {"down": self.down.detach().float(), "up": self.up.detach().float() * self.scale}

    def file_tensors(self) -> dict[str, torch.Tensor]:
        """Key suffix -> tensor in ComfyUI's layout (formats.py adds the module path)."""
        t = self.export_tensors()
        return {"lora_A.weight": t["down"], "lora_B.weight": t["up"]}

    def load_file_tensors(self, t: dict[str, torch.Tensor]) -> None:
        down = t.get("lora_A.weight", t.get("lora_down.weight"))
        up = t.get("lora_B.weight", t.get("lora_up.weight"))
        self.load_tensors(down.float(), up.float(), float(t["alpha"]) if "alpha" in t else None)

    def load_tensors(self, down: torch.Tensor, up: torch.Tensor, alpha: float | None) -> None:
        """Load (down, up) read from a file; `alpha` None means the file's scale is 1 (folded)."""
        rank = down.shape[0]
        if down.shape != self.down.shape or up.shape != self.up.shape:
            raise ValueError(f"shapes down {tuple(down.shape)} / up {tuple(up.shape)} do not fit "
                             f"down {tuple(self.down.shape)} / up {tuple(self.up.shape)}")
        file_scale = 1.0 if alpha is None else float(alpha) / rank
        with torch.no_grad():
            self.down.copy_(down)
            self.up.copy_(up * (file_scale / self.scale))


class DoRA(LoRA):
    """Weight-decomposed LoRA: W' = m ⊙ (W + ΔW) / ‖W + ΔW‖, norms per input column, m of shape (1, in).

    That is the layout ComfyUI's `weight_decompose` computes exactly (a `dora_scale` of shape (1, in)); the
    norm is treated as a constant in the backward pass, as in the DoRA paper and PEFT. m starts at ‖W‖, so a
    new DoRA adapter is the identity. The base weight is read per forward (DoRA cannot be a pure add-on).
    """

    replaces_weight = True
    needs_base_weight = True  # nextdit.Linears hands adapted_weight() the dense (dequantised) base weight

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, **kw):
        super().__init__(in_features, out_features, rank, alpha, **kw)
        self.magnitude = nn.Parameter(torch.ones(1, in_features, device=self.down.device))

    def init_from_base(self, weight: torch.Tensor) -> None:
        with torch.no_grad():
            self.magnitude.copy_(_column_norm(weight.float()))

    def adapted_weight(self, weight: torch.Tensor) -> torch.Tensor:
        merged = weight + (self.up.to(weight.dtype) @ self.down.to(weight.dtype)) * self.scale
        return merged * (self.magnitude.to(weight.dtype) / _column_norm(merged).detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # only used through adapted_weight
        raise RuntimeError("DoRA replaces its Linear's weight; nextdit.Linears calls adapted_weight()")

    def file_tensors(self) -> dict[str, torch.Tensor]:
        t = super().file_tensors()
        t["dora_scale"] = self.magnitude.detach().float()
        return t

    def load_file_tensors(self, t: dict[str, torch.Tensor]) -> None:
        super().load_file_tensors(t)
        with torch.no_grad():
            self.magnitude.copy_(t["dora_scale"])


def _column_norm(weight: torch.Tensor) -> torch.Tensor:
    """‖W‖ over the output axis for each input column, (1, in), plus ComfyUI's epsilon."""
    return weight.norm(dim=0, keepdim=True) + torch.finfo(weight.dtype).eps
