"""Files of a full fine-tune: a diffusion-model file ComfyUI's UNETLoader (Load Diffusion Model) opens, a
diffusers-format transformer folder, and the full-rank `.diff` patches ComfyUI applies to a loaded MODEL.

The fine-tuned weights are the base tree's tensors with every trained Linear replaced by its copy
(adapters/full.py); an 8-bit base is written dequantised. No ComfyUI imports.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import torch

from ..backbones.keys import native_state_to_diffusers
from ..backbones.nextdit import ArchConfig
from ..errors import ModelError
from ..storage.atomic import atomic_save_safetensors
from .formats import COMFY_PREFIX, SAVE_DTYPES


def finetuned_state_dict(adapters, backbone, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """Native (ComfyUI NextDiT) state dict of the fine-tuned model, every tensor in `dtype` on the CPU."""
    linears = set(backbone.linear_names())
    out = {}
    for key, value in backbone.tree.state_dict().items():
        module, _, param = key.rpartition(".")
        if param == "weight" and module in linears:
            base = backbone.base_weight(module)
            value = adapters[module].adapted_weight(base) if module in adapters.names else base
        out[key] = value.detach().to("cpu", dtype).contiguous()
    if "norm_final.weight" not in out:  # in official/ComfyUI checkpoints (unused by the forward): keep the layout
        out["norm_final.weight"] = torch.ones(backbone.arch.dim, dtype=dtype)
    return out


def diff_state_dict(adapters, backbone, saved: str | Path | None = None) -> dict[str, torch.Tensor]:
    """{'diffusion_model.<m>.diff': W_trained − W_base} for ComfyUI's LoRA path (a full-rank "LoRA").

    W_trained is each adapter's weight (fp32 diffs), or, given `saved` (the file save_diffusion_model wrote), that
    file's tensor: the patches then reproduce what UNETLoader loads from the file (the EMA weights when those were
    saved, the file's rounding), in the file's dtype (a bf16 file's patches take half the memory of fp32 ones).
    """
    if saved is None:
        out = {}
        for name, mod in adapters.items():
            base = backbone.base_weight(name)
            out[f"{COMFY_PREFIX}{name}.diff"] = (mod.adapted_weight(base) - base).cpu().contiguous()
        return out
    from safetensors import safe_open

    out = {}
    with safe_open(str(saved), framework="pt") as f:
        for name in adapters.names:
            trained = f.get_tensor(f"{name}.weight")
            base = backbone.base_weight(name).float()
            diff = trained.to(base.device, torch.float32) - base
            out[f"{COMFY_PREFIX}{name}.diff"] = diff.to("cpu", trained.dtype).contiguous()
    return out


def save_diffusion_model(adapters, backbone, path: str | Path, *, dtype: str = "bf16",
                         metadata: dict[str, str] | None = None) -> Path:
    """The whole fine-tuned DiT with bare native keys, like `lumina_2_model_bf16.safetensors` (atomic)."""
    return atomic_save_safetensors(finetuned_state_dict(adapters, backbone, SAVE_DTYPES[dtype]), path,
                                   metadata=metadata)


def diffusers_config(arch: ArchConfig) -> dict:
    """A Lumina2Transformer2DModel (Z-Image: ZImageTransformer2DModel) config that rebuilds exactly these shapes."""
    if arch.family == "zimage":
        return zimage_diffusers_config(arch)
    multiple_of = math.gcd(arch.ffn_hidden, 256)
    default_hidden = multiple_of * math.ceil(4 * arch.dim / multiple_of)
    return {
        "_class_name": "Lumina2Transformer2DModel", "_diffusers_version": "0.32.0", "sample_size": 128,
        "patch_size": arch.patch_size, "in_channels": arch.in_channels, "out_channels": None,
        "hidden_size": arch.dim, "num_layers": arch.n_layers, "num_refiner_layers": arch.n_refiner_layers,
        "num_attention_heads": arch.n_heads, "num_kv_heads": arch.n_kv_heads, "multiple_of": multiple_of,
        "ffn_dim_multiplier": None if arch.ffn_hidden == default_hidden else arch.ffn_hidden / (4 * arch.dim),
        "norm_eps": arch.norm_eps, "scaling_factor": 1.0, "axes_dim_rope": list(arch.axes_dims),
        "axes_lens": list(arch.axes_lens), "cap_feat_dim": arch.cap_feat_dim,
    }


def zimage_diffusers_config(arch: ArchConfig) -> dict:
    """A ZImageTransformer2DModel config for these shapes. Its FFN width is fixed by the model (int(dim / 3 · 8)),
    so other widths are refused (no diffusers class builds them)."""
    if arch.ffn_hidden != int(arch.dim / 3 * 8):
        raise ModelError(f"this Z-Image's FFN is {arch.ffn_hidden} wide; diffusers' ZImageTransformer2DModel builds "
                         f"{int(arch.dim / 3 * 8)} for dim {arch.dim}, so no diffusers folder can hold it. Use the "
                         "model file (models/diffusion_models) instead")
    return {
        "_class_name": "ZImageTransformer2DModel", "_diffusers_version": "0.36.0", "all_patch_size": [arch.patch_size],
        "all_f_patch_size": [1], "in_channels": arch.in_channels, "dim": arch.dim, "n_layers": arch.n_layers,
        "n_refiner_layers": arch.n_refiner_layers, "n_heads": arch.n_heads, "n_kv_heads": arch.n_kv_heads,
        "norm_eps": arch.norm_eps, "qk_norm": True, "cap_feat_dim": arch.cap_feat_dim, "rope_theta": arch.rope_theta,
        "t_scale": arch.time_scale, "axes_dims": list(arch.axes_dims), "axes_lens": list(arch.axes_lens),
    }


def save_diffusers_transformer(adapters, backbone, folder: str | Path, *, dtype: str = "bf16") -> Path:
    """A diffusers `transformer/` folder (config.json + diffusion_pytorch_model.safetensors), built under a
    temporary name and renamed into place."""
    folder = Path(folder)
    native = finetuned_state_dict(adapters, backbone, SAVE_DTYPES[dtype])
    sd = native_state_to_diffusers(native, backbone.arch.qkv_split, backbone.arch.family)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        atomic_save_safetensors(sd, tmp / "diffusion_pytorch_model.safetensors")
        (tmp / "config.json").write_text(json.dumps(diffusers_config(backbone.arch), indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
