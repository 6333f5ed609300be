"""The diffusers backbone: Lumina2Transformer2DModel or ZImageTransformer2DModel weights run through the
native forward.

diffusers splits the fused qkv into to_q/to_k/to_v and renames modules (keys.py); here the weights are
re-laid into a `NativeNextDiT` (qkv concatenated exactly, every other tensor shared, not copied).
diffusers' own forward takes t = 1 − σ and returns x − ε; the native forward returns ε − x from σ.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import ModelError
from . import Backbone, family
from .keys import diffusers_state_to_native
from .nextdit import ArchConfig, NativeNextDiT

_CLASSES = ("Lumina2Transformer2DModel", "ZImageTransformer2DModel")


def arch_from_diffusers_config(cfg: dict, ffn_hidden: int) -> ArchConfig:
    return ArchConfig(
        dim=cfg["hidden_size"], n_layers=cfg["num_layers"], n_refiner_layers=cfg["num_refiner_layers"],
        n_heads=cfg["num_attention_heads"], n_kv_heads=cfg["num_kv_heads"], ffn_hidden=ffn_hidden,
        cap_feat_dim=cfg["cap_feat_dim"], patch_size=cfg["patch_size"], in_channels=cfg["in_channels"],
        axes_dims=tuple(cfg["axes_dim_rope"]), axes_lens=tuple(cfg["axes_lens"]), norm_eps=cfg["norm_eps"],
        qk_norm_eps=1e-5,  # diffusers builds the qk RMSNorms with eps=1e-5
    )


def arch_from_zimage_config(cfg: dict, ffn_hidden: int, t_hidden: int) -> ArchConfig:
    """ArchConfig of a ZImageTransformer2DModel config; the variants we do not train are refused by name."""
    if cfg.get("siglip_feat_dim") is not None:
        raise family.refusal("model.transformer", dict(family.UNSUPPORTED_KEYS)["siglip_embedder.0.weight"])
    if tuple(cfg["all_patch_size"]) != (2,) or tuple(cfg["all_f_patch_size"]) != (1,) or not cfg["qk_norm"]:
        raise family.refusal("model.transformer", f"a Z-Image with patch sizes {cfg['all_patch_size']}/"
                                                  f"{cfg['all_f_patch_size']}, qk_norm={cfg['qk_norm']}")
    return ArchConfig(
        dim=cfg["dim"], n_layers=cfg["n_layers"], n_refiner_layers=cfg["n_refiner_layers"],
        n_heads=cfg["n_heads"], n_kv_heads=cfg["n_kv_heads"], ffn_hidden=ffn_hidden,
        cap_feat_dim=cfg["cap_feat_dim"], patch_size=2, in_channels=cfg["in_channels"],
        axes_dims=tuple(cfg["axes_dims"]), axes_lens=tuple(cfg["axes_lens"]), norm_eps=cfg["norm_eps"],
        qk_norm_eps=1e-5, rope_theta=float(cfg["rope_theta"]), family=family.ZIMAGE,
        time_scale=float(cfg["t_scale"]), pad_tokens_multiple=family.ZIMAGE_PAD_MULTIPLE,
        t_hidden=None if t_hidden == min(cfg["dim"], 1024) else t_hidden)


def native_tree_from_state(sd: dict[str, torch.Tensor], arch: ArchConfig) -> NativeNextDiT:
    """Build a NativeNextDiT whose parameters are the given native tensors (no copies)."""
    with torch.device("meta"):
        tree = NativeNextDiT(arch)
    sd = {k: v for k, v in sd.items() if k != "norm_final.weight"}  # unused in the forward
    missing, unexpected = tree.load_state_dict(sd, strict=False, assign=True)
    if missing or unexpected:
        raise ModelError(
            f"model.transformer: the weights do not match a {family.NAMES.get(arch.family, arch.family)} NextDiT "
            f"of dim {arch.dim} with {arch.n_layers} layers: missing {sorted(missing)[:5]}, unexpected "
            f"{sorted(unexpected)[:5]}. Check that the file is a Lumina-Image-2.0 or Z-Image diffusion model")
    tree.requires_grad_(False)
    return tree.eval()


class DiffusersBackbone(Backbone):
    @classmethod
    def from_model(cls, model) -> DiffusersBackbone:
        """Wrap a loaded `Lumina2Transformer2DModel` or `ZImageTransformer2DModel` (tensors shared, qkv
        concatenated)."""
        cfg = dict(model.config)
        if type(model).__name__ == "ZImageTransformer2DModel":
            blk = (list(model.layers) + list(model.noise_refiner))[0]
            arch = arch_from_zimage_config(cfg, blk.feed_forward.w1.weight.shape[0],
                                           model.t_embedder.mlp[0].weight.shape[0])
            tree = native_tree_from_state(diffusers_state_to_native(model.state_dict(), family.ZIMAGE), arch)
            return cls(tree, arch, kind="diffusers")
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
        name = cfg.get("_class_name") or "Lumina2Transformer2DModel"
        if name not in _CLASSES:
            raise ModelError(f"{p / 'config.json'}: the model class is {name}, not one of {', '.join(_CLASSES)}. "
                             "Point model.transformer at a Lumina-Image-2.0 or Z-Image model")
        import diffusers

        from ..files.weights_errors import require_all_weights

        model, info = getattr(diffusers, name).from_pretrained(p, torch_dtype=dtype, local_files_only=True,
                                                               output_loading_info=True)
        require_all_weights("model.transformer", p, info)  # diffusers leaves missing weights uninitialised
        return cls.from_model(model)
