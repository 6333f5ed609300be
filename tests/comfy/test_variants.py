"""The backbone check on the NextDiT configurations newer ComfyUI builds: each variant this pack does not train
is refused with a message naming it (ComfyUI's own classes, built on the meta device: no weights needed)."""

import inspect
from types import SimpleNamespace

import pytest
import torch

from lumina2_train.backbones.comfy import ComfyBackbone, check_nextdit
from lumina2_train.errors import ModelError

pytestmark = pytest.mark.comfy

# what comfy/model_detection.py builds for each member (0.33.0)
LUMINA2 = dict(patch_size=2, in_channels=16, dim=2304, n_layers=1, n_heads=24, n_kv_heads=8, qk_norm=True,
               cap_feat_dim=32, axes_dims=[32, 32, 32], axes_lens=[300, 512, 512], rope_theta=10000.0,
               ffn_dim_multiplier=4.0)
ZIMAGE = dict(patch_size=2, in_channels=16, dim=3840, n_layers=1, n_heads=30, n_kv_heads=30, qk_norm=True,
              cap_feat_dim=32, axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512], rope_theta=256.0,
              ffn_dim_multiplier=8.0 / 3.0, z_image_modulation=True, time_scale=1000.0, pad_tokens_multiple=32)


@pytest.fixture(scope="module")
def build(comfy):
    import comfy.ldm.lumina.model as lumina
    import comfy.ops

    if "clip_text_dim" not in inspect.signature(lumina.NextDiT.__init__).parameters:
        pytest.skip("this ComfyUI's NextDiT has none of the newer variants (0.3.64)")

    def make(cls: str = "NextDiT", **config):
        tree = getattr(lumina, cls)(**config, device="meta", operations=comfy.ops.disable_weight_init)
        base = object.__new__(comfy.model_base.Lumina2)
        base.__dict__["diffusion_model"] = tree
        return SimpleNamespace(model=base, clone=None)

    return make


@pytest.mark.parametrize("config, variant", [
    ({**LUMINA2, "clip_text_dim": 1024}, "NewBie-image"),
    ({**ZIMAGE, "siglip_feat_dim": 1152}, "Z-Image Omni"),
    ({**LUMINA2, "pad_tokens_multiple": 32}, "unknown NextDiT variant (pad tokens"),
    ({**ZIMAGE, "pad_tokens_multiple": None}, "unknown NextDiT variant (Z-Image modulation without pad tokens"),
    ({**LUMINA2, "time_scale": 1000.0}, "Lumina-Image-2.0 NextDiT with time_scale=1000.0"),
    ({**ZIMAGE, "time_scale": 1.0}, "Z-Image NextDiT with time_scale=1.0"),
    ({**LUMINA2, "qk_norm": False}, "without qk-norm"),
], ids=["newbie", "zimage-omni-siglip", "lumina2-pad-tokens", "zimage-no-pad", "lumina2-time-scale",
        "zimage-time-scale", "no-qk-norm"])
def test_unsupported_variants_are_refused_by_name(build, config, variant):
    model = build(**config)
    with pytest.raises(ModelError, match="model: this is .*which this pack does not train") as e:
        check_nextdit(model)
    assert variant in str(e.value)
    with pytest.raises(ModelError, match="does not train"):  # the Train node's path refuses before loading
        ComfyBackbone.from_model_patcher(model)


def test_pixel_space_zimage_is_refused_by_name(build):
    model = build("NextDiTPixelSpace", **ZIMAGE, decoder_hidden_size=64, decoder_num_res_blocks=1)
    with pytest.raises(ModelError, match="pixel-space Z-Image"):
        check_nextdit(model)


def test_lumina2_as_newer_comfyui_builds_it_is_accepted(build):
    model = build(**LUMINA2)
    assert check_nextdit(model) is model.model.diffusion_model


def test_zimage_as_comfyui_builds_it_is_accepted(build):
    model = build(**ZIMAGE)
    assert check_nextdit(model) is model.model.diffusion_model


def _as_newer_comfyui_builds(build, lumina_kwarg: str, value, config: dict):
    """A NextDiT built with `lumina_kwarg=value` where this ComfyUI's NextDiT takes it (0.38), else built without
    it and given what 0.38's constructor stores for it (`masked_pad_multiple`, or the `__ming_image__` buffer
    that `image_model="ming_image"` registers)."""
    import comfy.ldm.lumina.model as lumina

    takes_it = lumina_kwarg in inspect.signature(lumina.NextDiT.__init__).parameters
    model = build(**config, **({lumina_kwarg: value} if takes_it else {}))
    tree = model.model.diffusion_model
    if lumina_kwarg == "masked_pad_multiple" and not takes_it:
        tree.masked_pad_multiple = value
    if lumina_kwarg == "image_model" and "__ming_image__" not in tree.state_dict():
        tree.register_buffer("__ming_image__", torch.empty(0, device="meta"))
    return model


@pytest.mark.parametrize("config", [LUMINA2, ZIMAGE], ids=["lumina2", "zimage"])
def test_a_nextdit_with_masked_padding_is_refused(build, config):
    """ComfyUI 0.38's `masked_pad_multiple` (Ming-Image) rounds the caption length up before the image RoPE
    positions; the library's forward does not, so such a module is refused rather than trained off by a shift."""
    model = _as_newer_comfyui_builds(build, "masked_pad_multiple", 32, config)
    with pytest.raises(ModelError, match="NextDiT with masked_pad_multiple=32 .*does not train"):
        check_nextdit(model)


def test_ming_image_is_refused_by_name(build):
    model = _as_newer_comfyui_builds(build, "image_model", "ming_image", ZIMAGE)
    with pytest.raises(ModelError, match="model: this is Ming-Image .*does not train"):
        check_nextdit(model)
