"""The NextDiT family: which member a set of weights is, read from its keys and shapes (as ComfyUI's model
detection reads them), the ArchConfig that follows, and a clear refusal for members this pack does not train.

One home for ComfyUI MODELs (backbones/comfy.py reads the MODEL's own state-dict keys), ComfyUI single files and
diffusers folders (converted to native keys first). No ComfyUI imports.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from ..errors import ModelError
from .nextdit import ArchConfig

LUMINA2 = "lumina2"
ZIMAGE = "zimage"
# the members this pack trains; docs/recipe.md has a section per member
SUPPORTED = (LUMINA2, ZIMAGE)
NAMES = {LUMINA2: "Lumina-Image-2.0", ZIMAGE: "Z-Image"}

# A key that only a variant has -> what the variant is. Newer ComfyUI loads these through the same NextDiT
# class (comfy/model_detection.py); the forward here does not implement their extra inputs or heads.
UNSUPPORTED_KEYS = (
    ("clip_text_pooled_proj.0.weight", "NewBie-image (NextDiT with a pooled Jina CLIP input, clip_text_dim)"),
    ("time_text_embed.1.weight", "NewBie-image (NextDiT with a pooled Jina CLIP input, clip_text_dim)"),
    ("siglip_embedder.0.weight", "Z-Image Omni (NextDiT with a SigLIP image-feature path, siglip_feat_dim)"),
    ("dec_net.cond_embed.weight", "pixel-space Z-Image (NextDiTPixelSpace: a pixel decoder head, no VAE)"),
    # ComfyUI 0.38 marks a Ming-Image NextDiT (image_model "ming_image") with this empty buffer
    ("__ming_image__", "Ming-Image (NextDiT with a frame axis, zero-masked padding and a second caption input)"),
)
_FIX = ("Train a Lumina-Image-2.0 or Z-Image (Turbo or Base) model; docs/recipe.md lists the NextDiT models "
        "this pack trains")
ZIMAGE_PAD_MULTIPLE = 32
ZIMAGE_TIME_SCALE = 1000.0


def refusal(where: str, variant: str) -> ModelError:
    """The one message for a NextDiT variant this pack does not train."""
    return ModelError(f"{where}: this is {variant}, which this pack does not train correctly yet. {_FIX}.")


def unsupported_variant(keys: Sequence[str] | Mapping[str, object]) -> str | None:
    """The name of the unsupported NextDiT variant whose weights these are, or None."""
    keyset = set(keys)
    for key, variant in UNSUPPORTED_KEYS:
        if key in keyset:
            return variant
    if not any(k.endswith("attention.q_norm.weight") for k in keyset):
        return "a NextDiT without qk-norm (qk_norm=False)"
    if any(k.endswith("attention.out.bias") for k in keyset):
        return "a NextDiT with an attention output bias"
    return None


def detect_family(keys: Sequence[str] | Mapping[str, object], where: str) -> str:
    """LUMINA2 or ZIMAGE from native state-dict keys; ModelError naming any other variant."""
    keyset = set(keys)
    variant = unsupported_variant(keyset)
    if variant is not None:
        raise refusal(where, variant)
    z_modulation = any(k.endswith("adaLN_modulation.0.weight") for k in keyset if not k.startswith("final_layer"))
    pad_tokens = "cap_pad_token" in keyset or "x_pad_token" in keyset
    if z_modulation and pad_tokens:
        return ZIMAGE
    if not z_modulation and not pad_tokens:
        return LUMINA2
    what = "Z-Image modulation without pad tokens" if z_modulation else "pad tokens (pad_tokens_multiple) with " \
        "Lumina2 modulation"
    raise refusal(where, f"an unknown NextDiT variant ({what})")


def axes_for(family: str, head_dim: int) -> tuple[int, int, int]:
    """RoPE axes of a head: Lumina2 thirds (32, 32, 32 of 96); Z-Image a quarter and 3/8 twice (32, 48, 48 of 128)."""
    if family == ZIMAGE:
        t = head_dim // 4 // 2 * 2
        return (t, (head_dim - t) // 2, (head_dim - t) // 2)
    axis = head_dim // 3 // 2 * 2
    return (head_dim - 2 * axis, axis, axis)


def family_options(family: str) -> dict:
    """The ArchConfig fields that follow from the family alone (not visible in the weights' shapes)."""
    if family == ZIMAGE:
        return dict(family=ZIMAGE, rope_theta=256.0, time_scale=ZIMAGE_TIME_SCALE,
                    pad_tokens_multiple=ZIMAGE_PAD_MULTIPLE, axes_lens=(1536, 512, 512))
    return dict(family=LUMINA2, rope_theta=10000.0, time_scale=1.0, pad_tokens_multiple=None,
                axes_lens=(300, 512, 512))


def _count(keys: set[str], prefix: str) -> int:
    return len({int(m.group(1)) for k in keys if (m := re.match(rf"{prefix}\.(\d+)\.", k))})


def arch_from_shapes(shapes: Mapping[str, Sequence[int]], where: str, in_channels: int = 16) -> ArchConfig:
    """The ArchConfig of the native-keyed NextDiT whose tensor shapes these are (head_dim from q_norm).

    Raises:
        ModelError: not a NextDiT, or a member this pack does not train (named in the message).
    """
    keys = set(shapes)
    family = detect_family(keys, where)
    try:
        dim, patch_in = shapes["x_embedder.weight"]
        head_dim = shapes[next(k for k in keys if k.endswith("attention.q_norm.weight"))][0]
        qkv_rows = shapes[next(k for k in keys if k.endswith("attention.qkv.weight"))][0]
        ffn_hidden = shapes[next(k for k in keys if k.endswith("feed_forward.w1.weight"))][0]
        cap_feat_dim = shapes["cap_embedder.1.weight"][1]
    except (KeyError, StopIteration, ValueError) as e:
        raise ModelError(f"{where}: the weights are not a NextDiT (missing {e}). Give a Lumina-Image-2.0 or "
                         "Z-Image diffusion model") from None
    patch = int(round((patch_in / in_channels) ** 0.5))
    n_heads = dim // head_dim
    t_hidden = shapes.get("t_embedder.mlp.0.weight", (min(dim, 1024),))[0]
    return ArchConfig(dim=dim, n_layers=_count(keys, "layers"), n_refiner_layers=_count(keys, "noise_refiner"),
                      n_heads=n_heads, n_kv_heads=(qkv_rows - dim) // 2 // head_dim, ffn_hidden=ffn_hidden,
                      cap_feat_dim=cap_feat_dim, patch_size=patch, in_channels=in_channels,
                      axes_dims=axes_for(family, head_dim), t_hidden=_t_hidden(t_hidden, dim),
                      **family_options(family))


def _t_hidden(width: int, dim: int) -> int | None:
    return None if width == min(dim, 1024) else width


def check_supported(arch: ArchConfig, where: str) -> ArchConfig:
    """`arch` when its family is one this pack trains, else the refusal naming it."""
    if arch.family not in SUPPORTED:
        raise refusal(where, NAMES.get(arch.family, arch.family))
    return arch


# the members with a training recipe in recipe.py (FAMILY_RECIPES; Z-Image's variant: train/recipe_choice.py)
TRAINED = (LUMINA2, ZIMAGE)


def require_recipe(arch, where: str) -> None:
    """Refuse to train a member whose forward we run but whose training recipe (text encoder, prompt template,
    timestep shift, sampler) is not in recipe.py: today Lumina-Image-2.0 and Z-Image have one."""
    if arch.family not in TRAINED:
        raise refusal(where, f"{NAMES.get(arch.family, arch.family)} (its forward is supported, its training "
                             "recipe, i.e. text encoder, timestep shift and sampler, is not yet)")
