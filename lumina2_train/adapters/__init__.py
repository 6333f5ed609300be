"""Adapters (LoRA; LoKr, LoHa and full fine-tune join through REGISTRY; each kind's output policy is in
kinds.py), kept beside the backbone.

An `AdapterSet` maps native Linear names to adapter modules; the backbone's forward adds each adapter's
output to its Linear's (backbones/nextdit.Linears). Nothing is injected into the base model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from ..config import AdapterConfig
from .full import FullWeight
from .kinds import KINDS, AdapterKind, kind_of
from .lora import DoRA, LoRA
from .lycoris import LoHa, LoKr
from .targets import group_of, select_targets

__all__ = ["KINDS", "REGISTRY", "AdapterKind", "AdapterSet", "DoRA", "FullWeight", "LoHa", "LoKr", "LoRA",
           "build_adapters", "group_of", "kind_of", "select_targets"]


def _make_lora(in_f: int, out_f: int, cfg: AdapterConfig, device) -> nn.Module:
    cls = DoRA if cfg.use_dora else LoRA
    return cls(in_f, out_f, cfg.rank, cfg.alpha, dropout=cfg.dropout, init=cfg.init, device=device)


def _make_full(in_f: int, out_f: int, cfg: AdapterConfig, device) -> nn.Module:
    return FullWeight(in_f, out_f, device=device)  # build_adapters copies the base weight in (init_from_base)


def _make_loha(in_f: int, out_f: int, cfg: AdapterConfig, device) -> nn.Module:
    return LoHa(in_f, out_f, cfg.rank, cfg.alpha, dropout=cfg.dropout, device=device)


def _make_lokr(in_f: int, out_f: int, cfg: AdapterConfig, device) -> nn.Module:
    return LoKr(in_f, out_f, cfg.rank, cfg.alpha, factor=cfg.lokr_factor, dropout=cfg.dropout, device=device)


# kind -> factory(in_features, out_features, AdapterConfig, device) -> module
REGISTRY: dict[str, Callable[..., nn.Module]] = {"lora": _make_lora, "loha": _make_loha, "lokr": _make_lokr,
                                              "full": _make_full}


def _key(name: str) -> str:
    return name.replace(".", "__")  # ModuleDict keys cannot hold dots


class AdapterSet(nn.Module):
    """Adapter modules by native Linear name, plus the config that made them."""

    def __init__(self, modules: dict[str, nn.Module], config: AdapterConfig):
        super().__init__()
        self.config = config
        self.names = list(modules)
        self.mods = nn.ModuleDict({_key(n): m for n, m in modules.items()})

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, name: str) -> nn.Module:
        return self.mods[_key(name)]

    def items(self) -> Iterator[tuple[str, nn.Module]]:
        return ((n, self.mods[_key(n)]) for n in self.names)

    def as_dict(self) -> dict[str, nn.Module]:
        return dict(self.items())

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def merged_weights(self, backbone) -> dict[str, torch.Tensor]:
        """{native name + '.weight': W + ΔW} (fp32) for every adapted Linear; the base is not touched."""
        out = {}
        for name, mod in self.items():
            base = backbone.base_weight(name)  # dense fp32, dequantised when stored in 8 bits
            if hasattr(mod, "adapted_weight"):  # DoRA rescales the merged weight
                out[f"{name}.weight"] = mod.adapted_weight(base).detach()
            else:
                out[f"{name}.weight"] = base + mod.delta_weight().to(base.device)
        return out


def build_adapters(backbone, cfg: AdapterConfig, device: torch.device | str | None = None,
                   seed: int | None = None) -> AdapterSet:
    """New adapters (identity at creation) on the Linear layers `cfg` selects, in fp32."""
    if cfg.kind not in REGISTRY:
        raise KeyError(f"adapter kind '{cfg.kind}' is not available; known: {sorted(REGISTRY)}")
    factory = REGISTRY[cfg.kind]
    gen_state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        mods = {}
        for name in select_targets(backbone.arch, cfg):
            base = backbone.linear(name).weight
            out_f, in_f = base.shape
            mods[name] = factory(in_f, out_f, cfg, device)
            if hasattr(mods[name], "init_from_base"):  # DoRA's magnitude, a full fine-tune's copy
                dense = backbone.base_weight(name).to(device or base.device)  # fp32, dequantised if 8-bit
                if isinstance(mods[name], FullWeight):  # the trainable copy keeps the base's float dtype
                    floats = (torch.float32, torch.bfloat16, torch.float16)
                    dense = dense.to(base.dtype if base.dtype in floats else torch.bfloat16)
                mods[name].init_from_base(dense)
    finally:
        if seed is not None:
            torch.random.set_rng_state(gen_state)
    return AdapterSet(mods, cfg)
