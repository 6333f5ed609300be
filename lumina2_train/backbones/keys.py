"""Module names: the native NextDiT names (official code, ComfyUI, kohya) and diffusers' names, for
Lumina2 (Lumina2Transformer2DModel) and Z-Image (ZImageTransformer2DModel, `family="zimage"`).

The one home of the name mapping and the fused-qkv split. Every conversion between the two layouts,
for whole models and for LoRA files, goes through here. No ComfyUI imports.
"""

from __future__ import annotations

import re

import torch

_BLOCK = re.compile(r"^(layers|noise_refiner|context_refiner)\.(\d+)\.(.+)$")

# native suffix inside a block -> diffusers suffix (modulated blocks; context_refiner differs for norm1)
_BLOCK_MAP = {
    "attention.out": "attn.to_out.0",
    "attention.q_norm": "attn.norm_q",
    "attention.k_norm": "attn.norm_k",
    "feed_forward.w1": "feed_forward.linear_1",
    "feed_forward.w2": "feed_forward.linear_2",
    "feed_forward.w3": "feed_forward.linear_3",
    "adaLN_modulation.1": "norm1.linear",
    "attention_norm1": "norm1.norm",
    "attention_norm2": "norm2",
    "ffn_norm1": "ffn_norm1",
    "ffn_norm2": "ffn_norm2",
}
_TOP_MAP = {
    "x_embedder": "x_embedder",
    "t_embedder.mlp.0": "time_caption_embed.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "time_caption_embed.timestep_embedder.linear_2",
    "cap_embedder.0": "time_caption_embed.caption_embedder.0",
    "cap_embedder.1": "time_caption_embed.caption_embedder.1",
    "final_layer.linear": "norm_out.linear_2",
    "final_layer.adaLN_modulation.1": "norm_out.linear_1",
}
QKV_PARTS = ("to_q", "to_k", "to_v")
# Z-Image: diffusers keeps the official names except these (ComfyUI's comfy/utils.py maps the same)
_Z_TOP_MAP = {"x_embedder": "all_x_embedder.2-1", "final_layer.linear": "all_final_layer.2-1.linear",
              "final_layer.adaLN_modulation.1": "all_final_layer.2-1.adaLN_modulation.1"}
_Z_BLOCK_MAP = {"attention.out": "attention.to_out.0", "attention.q_norm": "attention.norm_q",
                "attention.k_norm": "attention.norm_k"}
_Z_SAME = re.compile(r"^(t_embedder\.mlp\.[02]|cap_embedder\.[01]|x_pad_token|cap_pad_token)$")
_Z_BLOCK_SAME = ("attention_norm1", "attention_norm2", "ffn_norm1", "ffn_norm2", "feed_forward.w1",
                 "feed_forward.w2", "feed_forward.w3", "adaLN_modulation.0")


def _zimage_to_diffusers(module: str) -> str | tuple[str, str, str]:
    if module in _Z_TOP_MAP:
        return _Z_TOP_MAP[module]
    if _Z_SAME.match(module):
        return module
    m = _BLOCK.match(module)
    if not m or (m.group(3) not in _Z_BLOCK_MAP and m.group(3) not in _Z_BLOCK_SAME
                 and m.group(3) != "attention.qkv"):
        raise KeyError(f"'{module}' is not a Z-Image NextDiT module name")
    prefix, rest = f"{m.group(1)}.{m.group(2)}", m.group(3)
    if rest == "attention.qkv":
        return tuple(f"{prefix}.attention.{p}" for p in QKV_PARTS)  # type: ignore[return-value]
    return f"{prefix}.{_Z_BLOCK_MAP.get(rest, rest)}"


def _zimage_to_native(module: str) -> tuple[str, int | None]:
    top = {v: k for k, v in _Z_TOP_MAP.items()}
    if module in top:
        return top[module], None
    if _Z_SAME.match(module):
        return module, None
    m = _BLOCK.match(module)
    if not m:
        raise KeyError(f"'{module}' is not a diffusers Z-Image module name")
    prefix, rest = f"{m.group(1)}.{m.group(2)}", m.group(3)
    for part_idx, part in enumerate(QKV_PARTS):
        if rest == f"attention.{part}":
            return f"{prefix}.attention.qkv", part_idx
    back = {v: k for k, v in _Z_BLOCK_MAP.items()}
    if rest in back:
        return f"{prefix}.{back[rest]}", None
    if rest in _Z_BLOCK_SAME:
        return module, None
    raise KeyError(f"'{module}' is not a diffusers Z-Image module name")


def native_to_diffusers(module: str, family: str = "lumina2") -> str | tuple[str, str, str]:
    """Native module name -> diffusers module name; the fused qkv gives (to_q, to_k, to_v) names."""
    if family == "zimage":
        return _zimage_to_diffusers(module)
    if module in _TOP_MAP:
        return _TOP_MAP[module]
    m = _BLOCK.match(module)
    if not m:
        raise KeyError(f"'{module}' is not a Lumina2 NextDiT module name")
    kind, idx, rest = m.groups()
    prefix = f"{kind}.{idx}"
    if rest == "attention.qkv":
        return tuple(f"{prefix}.attn.{p}" for p in QKV_PARTS)  # type: ignore[return-value]
    if kind == "context_refiner" and rest == "attention_norm1":
        return f"{prefix}.norm1"  # no adaLN: diffusers keeps a plain RMSNorm there
    if rest not in _BLOCK_MAP:
        raise KeyError(f"'{module}' is not a Lumina2 NextDiT module name")
    return f"{prefix}.{_BLOCK_MAP[rest]}"


_REVERSE_TOP = {v: k for k, v in _TOP_MAP.items()}
_REVERSE_BLOCK = {v: k for k, v in _BLOCK_MAP.items()}


def diffusers_to_native(module: str, family: str = "lumina2") -> tuple[str, int | None]:
    """diffusers module name -> (native name, qkv part index or None)."""
    if family == "zimage":
        return _zimage_to_native(module)
    if module in _REVERSE_TOP:
        return _REVERSE_TOP[module], None
    m = _BLOCK.match(module)
    if not m:
        raise KeyError(f"'{module}' is not a diffusers Lumina2 module name")
    kind, idx, rest = m.groups()
    prefix = f"{kind}.{idx}"
    for part_idx, part in enumerate(QKV_PARTS):
        if rest == f"attn.{part}":
            return f"{prefix}.attention.qkv", part_idx
    if kind == "context_refiner" and rest == "norm1":
        return f"{prefix}.attention_norm1", None
    if rest not in _REVERSE_BLOCK:
        raise KeyError(f"'{module}' is not a diffusers Lumina2 module name")
    return f"{prefix}.{_REVERSE_BLOCK[rest]}", None


def split_qkv(t: torch.Tensor, split: tuple[int, int, int]) -> tuple[torch.Tensor, ...]:
    """Rows of a fused qkv tensor -> (q, k, v); `split` is ArchConfig.qkv_split ([2304, 768, 768])."""
    return tuple(torch.split(t, list(split), dim=0))


def _split_key(key: str) -> tuple[str, str]:
    """(module, parameter); the pad tokens are parameters of the model itself."""
    if key in ("x_pad_token", "cap_pad_token"):
        return key, ""
    module, _, param = key.rpartition(".")
    return module, param


def _join(module: str, param: str) -> str:
    return f"{module}.{param}" if param else module


def diffusers_state_to_native(sd: dict[str, torch.Tensor], family: str = "lumina2") -> dict[str, torch.Tensor]:
    """A diffusers Lumina2/ZImage transformer state dict -> native (ComfyUI NextDiT) keys, qkv fused."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, list] = {}
    for key, value in sd.items():
        module, param = _split_key(key)
        native, part = diffusers_to_native(module, family)
        if part is None:
            out[_join(native, param)] = value
        else:
            qkv.setdefault(f"{native}.{param}", [None, None, None])[part] = value
    for key, parts in qkv.items():
        if any(p is None for p in parts):
            raise KeyError(f"{key}: the diffusers state dict lacks one of to_q/to_k/to_v")
        out[key] = torch.cat(parts, dim=0)
    return out


def native_state_to_diffusers(sd: dict[str, torch.Tensor], split: tuple[int, int, int],
                              family: str = "lumina2") -> dict[str, torch.Tensor]:
    """Native (ComfyUI NextDiT) keys -> diffusers keys; qkv split by `split`; unused `norm_final` dropped."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        module, param = _split_key(key)
        if module == "norm_final":  # in ComfyUI/official checkpoints, never used in the forward
            continue
        target = native_to_diffusers(module, family)
        if isinstance(target, tuple):
            for name, piece in zip(target, split_qkv(value, split)):
                out[f"{name}.{param}"] = piece.contiguous()
        else:
            out[_join(target, param)] = value
    return out
