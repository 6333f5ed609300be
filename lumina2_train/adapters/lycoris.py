"""LyCORIS adapters: LoHa (Hadamard product of two low-rank pairs) and LoKr (Kronecker product).

Their file tensors use the key suffixes ComfyUI's `comfy/weight_adapter/loha.py` and `lokr.py` read, under
the native module path, so stock ComfyUI loads them with every key mapped. Both start as the identity (one
factor is zero) and add their ΔW to a frozen Linear's output. No ComfyUI imports.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LoHa(nn.Module):
    """ΔW = (alpha / rank) · (w1_a @ w1_b) ⊙ (w2_a @ w2_b); LyCORIS' init (w2_a = 0)."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, *, dropout: float = 0.0,
                 device=None):
        super().__init__()
        self.rank, self.alpha = rank, float(alpha)
        self.hada_w1_a = nn.Parameter(torch.empty(out_features, rank, device=device))
        self.hada_w1_b = nn.Parameter(torch.empty(rank, in_features, device=device))
        self.hada_w2_a = nn.Parameter(torch.zeros(out_features, rank, device=device))
        self.hada_w2_b = nn.Parameter(torch.empty(rank, in_features, device=device))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        with torch.no_grad():
            self.hada_w1_a.normal_(0.0, 0.1)
            self.hada_w1_b.normal_(0.0, 1.0)
            self.hada_w2_b.normal_(0.0, 1.0)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def delta_weight(self) -> torch.Tensor:
        return (self.hada_w1_a.float() @ self.hada_w1_b.float()) * (self.hada_w2_a.float() @ self.hada_w2_b.float()) \
            * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w1 = self.hada_w1_a.to(x.dtype) @ self.hada_w1_b.to(x.dtype)
        w2 = self.hada_w2_a.to(x.dtype) @ self.hada_w2_b.to(x.dtype)
        return F.linear(self.dropout(x), w1 * w2) * self.scale

    def file_tensors(self) -> dict[str, torch.Tensor]:
        t = {k: getattr(self, k).detach().float() for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")}
        t["alpha"] = torch.tensor(self.alpha)
        return t

    def load_file_tensors(self, t: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"):
                getattr(self, k).copy_(t[k])
        if "alpha" in t:
            self.alpha = float(t["alpha"])


def lokr_shapes(in_features: int, out_features: int, factor: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """((a, b), (c, d)) with W (out, in) = kron(w1 (a, b), w2 (c, d)); PEFT's factorisation (a ≤ c)."""
    from peft.tuners.lokr.layer import factorization

    out_a, out_c = factorization(out_features, factor)
    in_b, in_d = factorization(in_features, factor)
    return (out_a, in_b), (out_c, in_d)


class LoKr(nn.Module):
    """ΔW = scale · kron(w1, w2 (= w2_a @ w2_b when decomposed)); LyCORIS' init (w2_b = 0).

    Like LyCORIS, w2 is factored only when the rank is below half its larger side; ComfyUI then scales by
    alpha / rank, and by 1.0 when w2 is a full matrix (alpha is ignored there, as in ComfyUI).
    """

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, *, factor: int = -1,
                 dropout: float = 0.0, device=None):
        super().__init__()
        (a, b), (c, d) = lokr_shapes(in_features, out_features, factor)
        self.rank, self.alpha = rank, float(alpha)
        self.lokr_w1 = nn.Parameter(torch.empty(a, b, device=device))
        self.decomposed = rank < max(c, d) / 2
        if self.decomposed:
            self.lokr_w2_a = nn.Parameter(torch.empty(c, rank, device=device))
            self.lokr_w2_b = nn.Parameter(torch.zeros(rank, d, device=device))
        else:
            self.lokr_w2 = nn.Parameter(torch.zeros(c, d, device=device))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.lokr_w1, a=math.sqrt(5))
            if self.decomposed:
                nn.init.kaiming_uniform_(self.lokr_w2_a, a=math.sqrt(5))

    @property
    def scale(self) -> float:
        return self.alpha / self.rank if self.decomposed else 1.0

    def _w2(self, dtype) -> torch.Tensor:
        if self.decomposed:
            return self.lokr_w2_a.to(dtype) @ self.lokr_w2_b.to(dtype)
        return self.lokr_w2.to(dtype)

    def delta_weight(self) -> torch.Tensor:
        return torch.kron(self.lokr_w1.float(), self._w2(torch.float32)) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """kron(w1, w2) @ x without building the Kronecker product: (w1 X w2ᵀ) with X = x as (b, d)."""
        w1, w2 = self.lokr_w1.to(x.dtype), self._w2(x.dtype)
        a, b = w1.shape
        c, d = w2.shape
        xs = self.dropout(x).unflatten(-1, (b, d))
        y = torch.matmul(torch.matmul(w1, xs), w2.transpose(0, 1))  # (..., a, c)
        return y.flatten(-2) * self.scale

    def file_tensors(self) -> dict[str, torch.Tensor]:
        names = ("lokr_w1", "lokr_w2_a", "lokr_w2_b") if self.decomposed else ("lokr_w1", "lokr_w2")
        t = {k: getattr(self, k).detach().float() for k in names}
        t["alpha"] = torch.tensor(self.alpha if self.decomposed else float(self.rank))
        return t

    def load_file_tensors(self, t: dict[str, torch.Tensor]) -> None:
        names = ("lokr_w1", "lokr_w2_a", "lokr_w2_b") if self.decomposed else ("lokr_w1", "lokr_w2")
        with torch.no_grad():
            for k in names:
                getattr(self, k).copy_(t[k])
        if "alpha" in t and self.decomposed:
            self.alpha = float(t["alpha"])
