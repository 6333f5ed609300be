"""Load a Lumina2 DiT from local files, offline: a diffusers folder, a ComfyUI diffusion-model file (bare
native keys) or a ComfyUI all-in-one checkpoint (`model.diffusion_model.*`). No ComfyUI imports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..backbones import Backbone, family
from ..backbones.diffusers import DiffusersBackbone, native_tree_from_state
from ..backbones.nextdit import ArchConfig
from ..errors import ModelError
from ..recipe import LATENT_CHANNELS
from .formats import load_state_dict
from .weights_errors import naming

ALL_IN_ONE_PREFIX = "model.diffusion_model."
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


def arch_from_native_state(sd: dict[str, torch.Tensor], where: str = "model.transformer") -> ArchConfig:
    """Shapes (and family member) of a NextDiT from its native state dict; refuses members we do not train."""
    arch = family.arch_from_shapes({k: tuple(v.shape) for k, v in sd.items()}, where, LATENT_CHANNELS)
    return family.check_supported(arch, where)


def load_backbone(path: str | Path, dtype: str = "bf16", device: str | torch.device = "cpu") -> Backbone:
    """A Backbone from a diffusers folder or a ComfyUI .safetensors file, moved to `device` in `dtype`.

    Raises:
        ModelError: naming model.transformer, the file, the problem (missing, truncated or another kind of file,
            missing weights, other shapes, not a NextDiT) and the fix (files/weights_errors.py).
    """
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model.transformer: '{p}' does not exist. Give a diffusers Lumina2 folder or a "
                         ".safetensors diffusion-model file")
    with naming("model.transformer", p):
        if p.is_dir():
            bb = DiffusersBackbone.from_pretrained(p, DTYPES[dtype])
        else:
            sd, _ = load_state_dict(p)
            if any(k.startswith(ALL_IN_ONE_PREFIX) for k in sd):
                sd = {k[len(ALL_IN_ONE_PREFIX):]: v for k, v in sd.items() if k.startswith(ALL_IN_ONE_PREFIX)}
            arch = arch_from_native_state(sd, str(p))
            bb = Backbone(native_tree_from_state({k: v.to(DTYPES[dtype]) for k, v in sd.items()}, arch), arch,
                          kind="native")
    bb.tree.to(device=device, dtype=DTYPES[dtype])
    return bb


def layer_count(path: str | Path) -> int | None:
    """The number of main layers of the DiT at `path`, read cheaply: diffusers' config.json, or the key names of a
    safetensors header (no tensor is read). None when neither says (the loaded model is checked later)."""
    p = Path(path)
    if p.is_dir():
        config = p / "transformer" / "config.json" if (p / "transformer" / "config.json").is_file() else \
            p / "config.json"
        try:
            values = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        n = values.get("num_layers", values.get("n_layers")) if isinstance(values, dict) else None  # Lumina2, Z-Image
        return n if isinstance(n, int) and n > 0 else None
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            keys = list(f.keys())
    except Exception:  # not a safetensors file: load_backbone says so, naming the field
        return None
    found = {int(m.group(1)) for k in keys if (m := re.match(r"(?:model\.diffusion_model\.)?layers\.(\d+)\.", k))}
    return max(found) + 1 if found else None
