"""Lumina2 backbones: a concrete network adapted to the library's convention.

A backbone answers `velocity(x_σ, σ, cap_feats, cap_mask) -> ε − x` (recipe.py) and names its Linear layers
with the native Lumina2 names. Two implementations: `diffusers.py` (Lumina2Transformer2DModel weights)
and `comfy.py` (ComfyUI's NextDiT from a MODEL). Both run the one forward in `nextdit.py`.
No ComfyUI imports here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from .nextdit import ArchConfig, ForwardOptions, Linears, NativeNextDiT, linear_names, velocity

__all__ = ["ArchConfig", "Backbone", "ForwardOptions", "NativeNextDiT", "linear_names"]


class Backbone:
    """A NextDiT module tree with native names plus the one forward over it.

    The tree's parameters are never written and no module or hook is added to it; adapters live in the
    `adapters` dict passed to `velocity` (see nextdit.Linears).
    """

    def __init__(self, tree: nn.Module, arch: ArchConfig, *, weight_fn: Callable | None = None,
                 kind: str = "native"):
        self.tree = tree
        self.arch = arch
        self.weight_fn = weight_fn
        self.kind = kind
        self.options = ForwardOptions()
        # adapter.training_adapter: frozen LoRA pairs by Linear name under the trained adapters (adapters/frozen.py),
        # set once by the run's set-up; off while previews sample
        self.training_adapter: dict[str, nn.Module] = {}
        self._training_adapter_on = True
        self._stacked: dict = {}

    def forward_adapters(self, adapters: dict[str, nn.Module] | None) -> dict[str, nn.Module] | None:
        """The adapters the forward applies: `adapters`, over the training adapter while it is on."""
        if not self.training_adapter or not self._training_adapter_on:
            return adapters
        from ..adapters.frozen import stacked

        return stacked(adapters, self.training_adapter, self._stacked)

    @contextlib.contextmanager
    def training_adapter_off(self) -> Iterator[None]:
        """The forward without the training adapter (validation previews: the model as it will be used)."""
        on, self._training_adapter_on = self._training_adapter_on, False
        try:
            yield
        finally:
            self._training_adapter_on = on

    def velocity(self, x_sigma: torch.Tensor, sigma: torch.Tensor, cap_feats: torch.Tensor,
                 cap_mask: torch.Tensor | None, adapters: dict[str, nn.Module] | None = None,
                 *, frozen: bool = True) -> torch.Tensor:
        """ε − x for latents `x_sigma` (B, 16, h, w) at noise levels `sigma` (B,)."""
        lin = Linears(self.forward_adapters(adapters), self.weight_fn, frozen=frozen,
                      compute=self.options.base_compute)
        return velocity(self.tree, self.arch, x_sigma, sigma, cap_feats, cap_mask, lin, self.options)

    def linear(self, name: str) -> nn.Module:
        """The frozen base Linear with native name `name` (read it; never write it)."""
        return self.tree.get_submodule(name)

    def base_weight(self, name: str) -> torch.Tensor:
        """The frozen base weight of Linear `name` as a dense fp32 tensor (dequantised if stored in 8 bits)."""
        module = self.linear(name)
        if self.weight_fn is None:
            return module.weight.detach().float()
        return self.weight_fn(module, torch.float32, module.weight.device)[0].detach()

    def linear_names(self) -> list[str]:
        return linear_names(self.arch)

    @property
    def device(self) -> torch.device:
        return next(self.tree.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.tree.x_embedder.weight.dtype

    def base_fingerprint(self) -> str:
        """A short hash of the base weights, and of the training adapter when there is one (recorded in
        checkpoints and LoRA metadata)."""
        from ..storage.fingerprint import tensor_fingerprint

        under = {f"training_adapter.{n}.{k}": t for n, m in self.training_adapter.items()
                 for k, t in m.state_dict().items()}
        return tensor_fingerprint({**self.tree.state_dict(), **under})
