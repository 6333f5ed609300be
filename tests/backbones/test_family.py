"""NextDiT family detection from weights (backbones/family.py): the member and its ArchConfig from a state
dict's keys and shapes, and a refusal naming each variant this pack does not train."""

import pytest
import torch
from safetensors.torch import save_file

from lumina2_train.backbones import family
from lumina2_train.backbones.loading import arch_from_native_state, load_backbone
from lumina2_train.errors import ModelError
from lumina2_train.files.keys import diffusers_state_to_native


@pytest.fixture
def native_sd(tiny_dit):
    return {k: v.contiguous() for k, v in diffusers_state_to_native(tiny_dit.state_dict()).items()}


def test_lumina2_arch_is_read_from_the_weights(native_sd, tiny_backbone):
    arch = arch_from_native_state(native_sd)
    assert arch.family == family.LUMINA2 and arch.time_scale == 1.0 and arch.pad_tokens_multiple is None
    for field in ("dim", "n_layers", "n_refiner_layers", "n_heads", "n_kv_heads", "ffn_hidden", "cap_feat_dim",
                  "axes_dims", "rope_theta"):
        assert getattr(arch, field) == getattr(tiny_backbone.arch, field), field


@pytest.mark.parametrize("extra, variant", [
    ({"clip_text_pooled_proj.0.weight": (1024,), "clip_text_pooled_proj.1.weight": (1024, 1024)}, "NewBie-image"),
    ({"siglip_embedder.0.weight": (1152,)}, "Z-Image Omni"),
    ({"dec_net.cond_embed.weight": (64, 32)}, "pixel-space Z-Image"),
    ({"cap_pad_token": (1, 32), "x_pad_token": (1, 32)}, "unknown NextDiT variant"),
    ({"layers.0.attention.out.bias": (32,)}, "attention output bias"),
    ({"__ming_image__": (0,)}, "Ming-Image"),  # the buffer ComfyUI 0.38 gives a Ming-Image NextDiT (ModelSave keeps it)
])
def test_a_file_of_an_unsupported_variant_is_refused_by_name(tmp_path, native_sd, extra, variant):
    sd = {**native_sd, **{k: torch.zeros(s) for k, s in extra.items()}}
    save_file(sd, tmp_path / "variant.safetensors")
    with pytest.raises(ModelError, match=f"variant.safetensors: this is .*{variant}.*does not train") as e:
        load_backbone(tmp_path / "variant.safetensors", dtype="fp32")
    assert "docs/recipe.md" in str(e.value)


def test_weights_without_qk_norm_are_refused(native_sd):
    sd = {k: v for k, v in native_sd.items() if "_norm.weight" not in k or "attention." not in k}
    with pytest.raises(ModelError, match="without qk-norm"):
        arch_from_native_state(sd)


def test_zimage_axes_follow_its_head_split():
    assert family.axes_for(family.ZIMAGE, 128) == (32, 48, 48)
    assert family.axes_for(family.LUMINA2, 96) == (32, 32, 32)
