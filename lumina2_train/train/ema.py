"""Exponential moving average of the trained weights (adapters or a full fine-tune's copy).

decay_k = min(decay, (1 + k) / (10 + k)) for the k-th update (diffusers' EMAModel), updated every
`every_n_steps` optimizer steps, kept in fp32 on the training device or on the CPU. No ComfyUI imports.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


class EMA:
    def __init__(self, module: nn.Module, decay: float, every_n_steps: int = 1, on_cpu: bool = False):
        self.decay, self.every = decay, max(1, every_n_steps)
        self.params = {n: p for n, p in module.named_parameters() if p.requires_grad}
        device = torch.device("cpu") if on_cpu else None
        self.shadow = {n: p.detach().float().to(device or p.device, copy=True) for n, p in self.params.items()}
        self.updates = 0

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Call after optimizer step number `step` (1-based)."""
        if step % self.every:
            return
        d = self.current_decay()
        for n, p in self.params.items():
            s = self.shadow[n]
            s.mul_(d).add_(p.detach().to(s.device, torch.float32), alpha=1 - d)
        self.updates += 1

    @contextlib.contextmanager
    def swapped_in(self):
        """Temporarily put the EMA weights into the module (validation, export)."""
        backup = {n: p.detach().clone() for n, p in self.params.items()}
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.shadow[n].to(p.device, p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(backup[n])

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {f"ema.{n}": t.cpu() for n, t in self.shadow.items()}
        out["ema.__updates__"] = torch.tensor(self.updates)
        return out

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, t in self.shadow.items():
                t.copy_(sd[f"ema.{n}"].to(t.device, t.dtype))
        self.updates = int(sd["ema.__updates__"])
