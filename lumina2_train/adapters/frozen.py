"""A frozen LoRA under the trained adapters: adapter.training_adapter (docs/recipe.md, "The training adapter").

The file's pairs are applied in the forward, beside the base Linear, like any adapter: the base weights (a shared
ComfyUI MODEL, the user's file) are never merged into or written, and the backbone can turn them off for the
previews (backbones.Backbone.training_adapter_off). The trained adapter's output is added on top, so what it
learns is the difference from the base with the training adapter, and the saved file holds only that.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FrozenLoRA(nn.Module):
    """ΔW = up @ down as fixed buffers (scale folded into `up`): y = up(down(x)). No parameters."""

    def __init__(self, down: torch.Tensor, up: torch.Tensor):
        super().__init__()
        self.register_buffer("down", down.detach().clone())
        self.register_buffer("up", up.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.down.to(x.dtype)), self.up.to(x.dtype))

    def delta_weight(self) -> torch.Tensor:
        return self.up.float() @ self.down.float()


class OverTrainingAdapter(nn.Module):
    """A Linear's trained adapter (or none) over its frozen training-adapter pair: their outputs add up."""

    def __init__(self, frozen: FrozenLoRA, trained: nn.Module | None):
        super().__init__()
        self.frozen = frozen
        self.trained = trained

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.frozen(x)
        return y if self.trained is None else y + self.trained(x)


def stacked(adapters: dict[str, nn.Module] | None, frozen: dict[str, FrozenLoRA],
            cache: dict[tuple[str, int], nn.Module]) -> dict[str, nn.Module]:
    """`adapters` with each Linear that has a training-adapter pair wrapped over it (`cache` keeps one wrapper per
    (name, trained module), so a compiled forward sees the same modules every step)."""
    out = dict(adapters or {})
    for name, pair in frozen.items():
        trained = out.get(name)
        if trained is not None and getattr(trained, "replaces_weight", False):
            raise TypeError(f"{name}: a {type(trained).__name__} replaces the base weight; a training adapter "
                            "goes under additive adapters only (adapter.training_adapter)")
        key = (name, id(trained))
        if key not in cache:
            cache[key] = OverTrainingAdapter(pair, trained)
        out[name] = cache[key]
    return out


__all__ = ["FrozenLoRA", "OverTrainingAdapter", "stacked"]
