"""LoRA file metadata: modelspec, kohya `ss_*` keys and ours (`lumina2t.*`), describing the file as written.

Our files fold alpha/rank into lora_B and carry no alpha key, so `ss_network_alpha` equals the rank there and the
trained alpha is kept as `lumina2t.trained_alpha`; the zero pairs written for diffusers are listed in
`lumina2t.zero_filled` (docs/nodes.md, "Which file loads where"). The model family the file is for is
`lumina2t.family` (written when the saver knows the model), with the family's modelspec architecture
(`lumina-2/lora`, `z-image/lora`) and `ss_base_model_version`. No ComfyUI imports.
"""

from __future__ import annotations

import json

import torch

# the modelspec architecture of a whole fine-tuned DiT (a full fine-tune's model file) per family member
MODEL_ARCHITECTURE = {"lumina2": "lumina-2", "zimage": "z-image"}
# what a file for each family member says; a value of the other member is replaced when the file is written
FAMILY_METADATA = {
    "lumina2": {"modelspec.architecture": "lumina-2/lora", "ss_base_model_version": "lumina2",
                "modelspec.implementation": "https://github.com/Alpha-VLLM/Lumina-Image-2.0",
                "modelspec.title": "Lumina2 LoRA"},
    "zimage": {"modelspec.architecture": "z-image/lora", "ss_base_model_version": "zimage",
               "modelspec.title": "Z-Image LoRA"},
}


def lora_metadata(*, rank: int, alpha: float, step: int, config: dict | None = None, base_hash: str = "",
                  title: str = "", workflow: dict | None = None, extra: dict | None = None,
                  family: str | None = None) -> dict[str, str]:
    """safetensors metadata: modelspec + kohya ss_* keys + ours (lumina2t.*). All values are strings.

    `alpha` is the trained alpha, kept as `lumina2t.trained_alpha`; saving rewrites `ss_network_alpha` and
    `lumina2t.scale_folded` to describe the file as written (`written_metadata`)."""
    md = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "lumina-2/lora",
        "modelspec.implementation": "https://github.com/Alpha-VLLM/Lumina-Image-2.0",
        "modelspec.title": title or "Lumina2 LoRA",
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(float(alpha)),
        "ss_base_model_version": "lumina2",
        "ss_steps": str(step),
        "lumina2t.step": str(step),
        "lumina2t.trained_alpha": str(float(alpha)),
        "lumina2t.base_model_hash": base_hash,
    }
    if config is not None:
        md["lumina2t.config"] = json.dumps(config, sort_keys=True)
    if workflow is not None:
        md["lumina2t.workflow"] = json.dumps(workflow)
    md.update({k: str(v) for k, v in (extra or {}).items()})
    return md if family is None else for_family(md, family)


def for_family(md: dict[str, str], family: str) -> dict[str, str]:
    """`md` saying it is for `family`: `lumina2t.family`, and the other member's modelspec/ss values replaced."""
    md = {**md, "lumina2t.family": family}
    for other, values in FAMILY_METADATA.items():
        if other == family:
            continue
        for key, value in values.items():
            if md.get(key) == value:
                md.pop(key)
                if key in FAMILY_METADATA[family]:
                    md[key] = FAMILY_METADATA[family][key]
    return md


def written_metadata(sd: dict[str, torch.Tensor], metadata: dict[str, str] | None,
                     family: str | None = None) -> dict[str, str] | None:
    """Metadata that describes `sd` as written: `ss_network_alpha` is the file's alpha (its `.alpha` keys, or
    the rank where alpha/rank is folded into lora_B and no alpha key is written), so a tool that trusts the
    metadata scales by 1.0 exactly like ComfyUI; the trained alpha stays under `lumina2t.trained_alpha`; with
    `family` (the model's), what for_family writes."""
    if metadata is None:
        return None
    md = dict(metadata) if family is None else for_family(metadata, family)
    downs = {k.rsplit(".", 2)[0]: int(v.shape[0]) for k, v in sd.items()
             if k.endswith(("lora_A.weight", "lora_down.weight"))}
    if not downs:  # LoHa/LoKr: their alpha keys are applied as written; nothing is folded
        return md
    alphas = {k.removesuffix(".alpha"): float(v) for k, v in sd.items() if k.endswith(".alpha")}
    effective = {m: alphas.get(m, float(r)) for m, r in downs.items()}  # no alpha key: scale 1 (alpha = rank)
    ranks = list(downs.values())
    md["ss_network_dim"] = str(max(set(ranks), key=ranks.count))
    values = set(effective.values())
    trained = md.get("ss_network_alpha") or (str(next(iter(set(alphas.values())))) if len(set(alphas.values())) == 1
                                              and len(alphas) == len(downs) else "")
    if trained:
        md.setdefault("lumina2t.trained_alpha", trained)
    if len(values) == 1:
        md["ss_network_alpha"] = str(values.pop())
    else:  # one number cannot describe it: tools must read the alpha keys
        md.pop("ss_network_alpha", None)
    md["lumina2t.scale_folded"] = "true" if all(effective[m] == r for m, r in downs.items()) else "false"
    zero = sorted(m.removeprefix("diffusion_model.") for m in downs if _zero_pair(sd, m))
    if zero:
        md["lumina2t.zero_filled"] = json.dumps(zero)
        md["lumina2t.zero_filled_note"] = ("these pairs are zeros (no change to the model), written so that "
                                           "diffusers' Lumina2 loader accepts the file")
    return md


def _zero_pair(sd: dict[str, torch.Tensor], module: str) -> bool:
    down = sd.get(f"{module}.lora_A.weight", sd.get(f"{module}.lora_down.weight"))
    up = sd.get(f"{module}.lora_B.weight", sd.get(f"{module}.lora_up.weight"))
    return down is not None and up is not None and not (down.any() or up.any())
