"""Load a Lumina2 DiT from local files, offline: a diffusers folder, a ComfyUI diffusion-model file (bare
native keys) or a ComfyUI all-in-one checkpoint (`model.diffusion_model.*`). No ComfyUI imports."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import ModelError
from ..recipe import LATENT_CHANNELS
from . import Backbone
from .diffusers import DiffusersBackbone, native_tree_from_state
from .nextdit import ArchConfig

ALL_IN_ONE_PREFIX = "model.diffusion_model."
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


def arch_from_native_state(sd: dict[str, torch.Tensor]) -> ArchConfig:
    """Shapes of a NextDiT from its native state dict (head_dim from the q_norm weight)."""
    def count(prefix: str) -> int:
        return len({int(m.group(1)) for k in sd if (m := re.match(rf"{prefix}\.(\d+)\.", k))})

    try:
        dim, patch_in = sd["x_embedder.weight"].shape
        head_dim = sd[next(k for k in sd if k.endswith("attention.q_norm.weight"))].shape[0]
        qkv_rows = sd[next(k for k in sd if k.endswith("attention.qkv.weight"))].shape[0]
        ffn_hidden = sd[next(k for k in sd if k.endswith("feed_forward.w1.weight"))].shape[0]
        cap_feat_dim = sd["cap_embedder.1.weight"].shape[1]
    except (KeyError, StopIteration) as e:
        raise ModelError(f"the weights are not a Lumina2 NextDiT (missing {e}). Give a Lumina-Image-2.0 "
                         "diffusion model") from None
    in_channels = LATENT_CHANNELS  # the Flux VAE's 16 channels; x_embedder takes patch² of them
    patch = int(round((patch_in / in_channels) ** 0.5))
    n_heads = dim // head_dim
    axis = head_dim // 3 // 2 * 2
    axes = (head_dim - 2 * axis, axis, axis)
    return ArchConfig(dim=dim, n_layers=count("layers"), n_refiner_layers=count("noise_refiner"), n_heads=n_heads,
                      n_kv_heads=(qkv_rows - dim) // 2 // head_dim, ffn_hidden=ffn_hidden, cap_feat_dim=cap_feat_dim,
                      patch_size=patch, in_channels=in_channels, axes_dims=axes)


def load_backbone(path: str | Path, dtype: str = "bf16", device: str | torch.device = "cpu") -> Backbone:
    """A Backbone from a diffusers folder or a ComfyUI .safetensors file, moved to `device` in `dtype`."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model.transformer: '{p}' does not exist. Give a diffusers Lumina2 folder or a "
                         ".safetensors diffusion-model file")
    if p.is_dir():
        bb = DiffusersBackbone.from_pretrained(p, DTYPES[dtype])
    else:
        from ..files.formats import load_state_dict

        sd, _ = load_state_dict(p)
        if any(k.startswith(ALL_IN_ONE_PREFIX) for k in sd):
            sd = {k[len(ALL_IN_ONE_PREFIX):]: v for k, v in sd.items() if k.startswith(ALL_IN_ONE_PREFIX)}
        arch = arch_from_native_state(sd)
        bb = Backbone(native_tree_from_state({k: v.to(DTYPES[dtype]) for k, v in sd.items()}, arch), arch,
                      kind="native")
    bb.tree.to(device=device, dtype=DTYPES[dtype])
    return bb
