"""Z-Image on ComfyUI's own NextDiT: the library's forward over ComfyUI's module equals ComfyUI's forward on the
same weights (pad tokens, z_image_modulation, time scale, rope theta 256) and the MODEL check accepts it."""

import inspect

import pytest
import torch

from lumina2_train.backbones.comfy import ComfyBackbone, arch_from_nextdit, comfy_weight

pytestmark = pytest.mark.comfy

# ComfyUI's Z-Image options (comfy/model_detection.py) at a width its classes build on the CPU in seconds:
# z_image_modulation needs dim >= 256 (its time embedding is 256 wide); head_dim 128 = axes (32, 48, 48).
SMALL_ZIMAGE = dict(patch_size=2, in_channels=16, dim=256, n_layers=2, n_heads=2, n_kv_heads=2, qk_norm=True,
                    cap_feat_dim=32, axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512], rope_theta=256.0,
                    ffn_dim_multiplier=8.0 / 3.0, z_image_modulation=True, time_scale=1000.0,
                    pad_tokens_multiple=32)


@pytest.fixture(scope="module")
def comfy_zimage(comfy):
    import comfy.ldm.lumina.model as lumina
    import comfy.ops

    if "pad_tokens_multiple" not in inspect.signature(lumina.NextDiT.__init__).parameters:
        pytest.skip("this ComfyUI has no Z-Image (0.3.64)")
    tree = lumina.NextDiT(**SMALL_ZIMAGE, operations=comfy.ops.disable_weight_init, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in tree.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.1
            p.copy_(1.0 + noise if "norm" in name else noise)
    return tree.eval()


def test_arch_of_comfyui_zimage(comfy_zimage):
    arch = arch_from_nextdit(comfy_zimage)
    assert arch.family == "zimage" and arch.time_scale == 1000.0 and arch.pad_tokens_multiple == 32
    assert arch.axes_dims == (32, 48, 48) and arch.rope_theta == 256.0 and arch.adaln_dim == 256


@pytest.mark.parametrize("b, L, hw", [(2, 7, (8, 12)), (1, 32, (16, 16)), (2, 40, (6, 10))])
def test_velocity_equals_comfyui_zimage_forward(comfy_zimage, b, L, hw):
    bb = ComfyBackbone(comfy_zimage, arch_from_nextdit(comfy_zimage), weight_fn=comfy_weight, kind="comfy")
    gen = torch.Generator().manual_seed(L)
    x = torch.randn(b, 16, *hw, generator=gen)
    sigma = torch.rand(b, generator=gen) * 0.9 + 0.05
    feats = torch.randn(b, L, 32, generator=gen)
    with torch.no_grad():
        ref = comfy_zimage(x, sigma, context=feats, num_tokens=L, attention_mask=None, transformer_options={})
        ours = bb.velocity(x, sigma, feats, None)
    assert ref.abs().mean() > 0.05
    assert (ours - ref).abs().max() <= 1e-5
