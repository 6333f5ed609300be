"""ComfyUI's own NextDiT class over given weights, for the benchmark's ComfyUI rows (`bench --backbone comfy`).

ComfyUI is imported inside the function, from the folder given (`--comfyui`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ..backbones import Backbone


def comfy_backbone(config: dict, native: dict[str, torch.Tensor], device, comfy_path: str) -> Backbone:
    """ComfyUI's own NextDiT class (comfy.ops layers) holding the same weights, wrapped by ComfyBackbone."""
    root = str(Path(comfy_path).resolve())
    if root not in sys.path:
        sys.path.insert(0, root)
    import comfy.ldm.lumina.model as lumina
    import comfy.ops

    from ..backbones.comfy import ComfyBackbone, arch_from_nextdit, comfy_weight

    tree = lumina.NextDiT(
        patch_size=config["patch_size"], in_channels=config["in_channels"], dim=config["hidden_size"],
        n_layers=config["num_layers"], n_refiner_layers=config["num_refiner_layers"],
        n_heads=config["num_attention_heads"], n_kv_heads=config["num_kv_heads"], multiple_of=config["multiple_of"],
        ffn_dim_multiplier=config["ffn_dim_multiplier"], norm_eps=config["norm_eps"], qk_norm=True,
        cap_feat_dim=config["cap_feat_dim"], axes_dims=list(config["axes_dim_rope"]),
        axes_lens=list(config["axes_lens"]), image_model="lumina2", device=device, dtype=torch.bfloat16,
        operations=comfy.ops.disable_weight_init)
    sd = {k: v.to(device) for k, v in native.items()}
    sd["norm_final.weight"] = torch.ones(config["hidden_size"], dtype=torch.bfloat16, device=device)
    tree.load_state_dict(sd, strict=True)
    tree.requires_grad_(False)
    return ComfyBackbone(tree.eval(), arch_from_nextdit(tree), weight_fn=comfy_weight, kind="comfy")
