"""Which native Linear layers an adapter trains: by block type and block index. No ComfyUI imports."""

from __future__ import annotations

import re

from ..backbones.nextdit import ArchConfig, linear_names
from ..config import TARGET_GROUPS, AdapterConfig, parse_block_spec
from ..errors import ConfigError

_GROUP_OF_SUFFIX = {
    "attention.qkv": "attention", "attention.out": "attention",
    "feed_forward.w1": "ffn", "feed_forward.w2": "ffn", "feed_forward.w3": "ffn",
    "adaLN_modulation.1": "adaln", "adaLN_modulation.0": "adaln",  # .0: Z-Image (no SiLU before it)
}
_TOP_GROUPS = {
    "final_layer.linear": "final", "final_layer.adaLN_modulation.1": "final",
    "x_embedder": "embedders", "t_embedder.mlp.0": "embedders", "t_embedder.mlp.2": "embedders",
    "cap_embedder.1": "embedders",
}
_BLOCK = re.compile(r"^(layers|noise_refiner|context_refiner)\.(\d+)\.(.+)$")


def group_of(name: str) -> str:
    """The target group ('attention', 'ffn', 'adaln', 'final', 'embedders') of a native Linear name."""
    if name in _TOP_GROUPS:
        return _TOP_GROUPS[name]
    m = _BLOCK.match(name)
    if m and m.group(3) in _GROUP_OF_SUFFIX:
        return _GROUP_OF_SUFFIX[m.group(3)]
    raise KeyError(f"'{name}' is not an adaptable Lumina2 Linear")


def select_targets(arch: ArchConfig, cfg: AdapterConfig) -> list[str]:
    """Native names of the Linear layers to adapt, in the backbone's stable order."""
    groups = set(cfg.targets) or (set(TARGET_GROUPS) if cfg.kind == "full" else set())  # full: empty = all
    unknown = groups - set(TARGET_GROUPS)
    if unknown:
        raise KeyError(f"unknown target groups {sorted(unknown)}")
    try:
        main = set(parse_block_spec(cfg.blocks, arch.n_layers))
    except ValueError as e:  # the config check cannot know the model's depth inside ComfyUI
        raise ConfigError(f"adapter.blocks {e}: the model has {arch.n_layers} layers (0-{arch.n_layers - 1}). "
                          "Choose indices in that range, or 'all'") from None
    out = []
    for name in linear_names(arch):
        if group_of(name) not in groups:
            continue
        m = _BLOCK.match(name)
        if m:
            kind, idx = m.group(1), int(m.group(2))
            if kind == "layers" and idx not in main:
                continue
            if kind != "layers" and not cfg.refiners:
                continue
        out.append(name)
    return out
