"""The diffusers backbone: Lumina2Transformer2DModel weights run through the native forward.

diffusers splits the fused qkv into to_q/to_k/to_v and renames modules (keys.py); here the weights are
re-laid into a `NativeNextDiT` (qkv concatenated exactly, every other tensor shared, not copied).
diffusers' own forward takes t = 1 − σ and returns x − ε; the native forward returns ε − x from σ.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import ModelError
from ..files.keys import diffusers_state_to_native
from . import Backbone
from .nextdit import ArchConfig, NativeNextDiT


def arch_from_diffusers_config(cfg: dict, ffn_hidden: int) -> ArchConfig:
    return ArchConfig(
        dim=cfg["hidden_size"], n_layers=cfg["num_layers"], n_refiner_layers=cfg["num_refiner_layers"],
        n_heads=cfg["num_attention_heads"], n_kv_heads=cfg["num_kv_heads"], ffn_hidden=ffn_hidden,
        cap_feat_dim=cfg["cap_feat_dim"], patch_size=cfg["patch_size"], in_channels=cfg["in_channels"],
        axes_dims=tuple(cfg["axes_dim_rope"]), axes_lens=tuple(cfg["axes_lens"]), norm_eps=cfg["norm_eps"],
        qk_norm_eps=1e-5,  # diffusers builds the qk RMSNorms with eps=1e-5
    )


def native_tree_from_state(sd: dict[str, torch.Tensor], arch: ArchConfig) -> NativeNextDiT:
    """Build a NativeNextDiT whose parameters are the given native tensors (no copies)."""
    with torch.device("meta"):
        tree = NativeNextDiT(arch)
    sd = {k: v for k, v in sd.items() if k != "norm_final.weight"}  # unused in the forward
    missing, unexpected = tree.load_state_dict(sd, strict=False, assign=True)
    if missing or unexpected:
        raise ModelError(
            f"Lumina2 weights do not match a NextDiT of dim {arch.dim} with {arch.n_layers} layers: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}. "
            "Check that the file is a Lumina-Image-2.0 diffusion model")
    tree.requires_grad_(False)
    return tree.eval()


class DiffusersBackbone(Backbone):
    @classmethod
    def from_model(cls, model) -> DiffusersBackbone:
        """Wrap a loaded `Lumina2Transformer2DModel` (its tensors are shared, qkv concatenated)."""
        cfg = dict(model.config)
        ffn_hidden = model.layers[0].feed_forward.linear_1.weight.shape[0] if len(model.layers) else \
            model.noise_refiner[0].feed_forward.linear_1.weight.shape[0]
        arch = arch_from_diffusers_config(cfg, ffn_hidden)
        tree = native_tree_from_state(diffusers_state_to_native(model.state_dict()), arch)
        return cls(tree, arch, kind="diffusers")

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.bfloat16) -> DiffusersBackbone:
        """Load a diffusers Lumina2 transformer folder (or a pipeline folder with transformer/) offline."""
        p = Path(path)
        if (p / "transformer" / "config.json").is_file():
            p = p / "transformer"
        if not (p / "config.json").is_file():
            raise ModelError(f"{path}: no diffusers config.json here or in transformer/. Give a diffusers "
                             "Lumina2 folder, or a ComfyUI .safetensors file")
        cfg = json.loads((p / "config.json").read_text())
        if cfg.get("_class_name") not in (None, "Lumina2Transformer2DModel"):
            raise ModelError(f"{p / 'config.json'}: the model class is {cfg.get('_class_name')}, not "
                             "Lumina2Transformer2DModel. Point model.transformer at a Lumina-Image-2.0 model")
        from diffusers import Lumina2Transformer2DModel

        model = Lumina2Transformer2DModel.from_pretrained(p, torch_dtype=dtype, local_files_only=True)
        return cls.from_model(model)
