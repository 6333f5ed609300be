"""Z-Image through the one NextDiT forward: equals diffusers' ZImageTransformer2DModel to 1e-5 in fp32, with
unequal captions (pad tokens and the batch mask), image pad tokens and the time scale pinned."""

from dataclasses import replace

import pytest
import torch

from lumina2_train.backbones import keys
from lumina2_train.backbones.diffusers import DiffusersBackbone
from lumina2_train.backbones.family import arch_from_shapes
from lumina2_train.tiny import make_tiny_transformer


@pytest.fixture(scope="module")
def zimage():
    model = make_tiny_transformer(seed=0, family="zimage")
    return model, DiffusersBackbone.from_model(model)


def _diffusers_velocity(model, x, sigma, feats, lengths):
    """ε − x from diffusers' own forward: it takes t = 1 − σ (× its t_scale inside) and returns x − ε."""
    out = model([xi.unsqueeze(1) for xi in x], 1 - sigma, [f[:n] for f, n in zip(feats, lengths)],
                return_dict=False)[0]
    return -torch.stack([o.squeeze(1) for o in out])


@pytest.mark.parametrize("lengths, hw", [((7, 7), (8, 12)), ((7, 5, 3), (8, 12)), ((40, 7, 33), (8, 8)),
                                         ((32, 32), (16, 16))],
                         ids=["equal", "unequal-same-padded", "unequal-padded-apart", "exact-multiples"])
def test_velocity_equals_diffusers_zimage(zimage, lengths, hw):
    model, bb = zimage
    gen = torch.Generator().manual_seed(len(lengths))
    b, L = len(lengths), max(lengths)
    x = torch.randn(b, 16, *hw, generator=gen)
    sigma = torch.rand(b, generator=gen)
    feats = torch.randn(b, L, 32, generator=gen)
    mask = (torch.arange(L)[None] < torch.tensor(lengths)[:, None]).long()
    with torch.no_grad():
        ref = _diffusers_velocity(model, x, sigma, feats, lengths)
        ours = bb.velocity(x, sigma, feats, mask)
    assert ref.abs().mean() > 0.05
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_padding_past_the_caption_does_not_change_the_result(zimage):
    _, bb = zimage
    gen = torch.Generator().manual_seed(5)
    x, sigma, feats = torch.randn(1, 16, 8, 12, generator=gen), torch.rand(1, generator=gen), \
        torch.randn(1, 5, 32, generator=gen)
    padded = torch.cat([feats, torch.randn(1, 40, 32, generator=gen)], dim=1)
    mask = torch.zeros(1, 45, dtype=torch.long)
    mask[:, :5] = 1
    with torch.no_grad():
        torch.testing.assert_close(bb.velocity(x, sigma, padded, mask), bb.velocity(x, sigma, feats, None),
                                   atol=1e-5, rtol=1e-5)


def test_arch_is_detected_from_the_native_weights(zimage):
    model, bb = zimage
    sd = keys.diffusers_state_to_native(model.state_dict(), "zimage")
    arch = arch_from_shapes({k: tuple(v.shape) for k, v in sd.items()}, "test")
    # axes_lens (a table size, unused by our rope) is ComfyUI's 1536 in files and diffusers' 1024 in its config
    assert replace(arch, axes_lens=bb.arch.axes_lens) == bb.arch
    assert arch.family == "zimage" and arch.time_scale == 1000.0 and arch.pad_tokens_multiple == 32
    assert arch.axes_dims == (8, 12, 12) and arch.rope_theta == 256.0 and arch.n_kv_heads == arch.n_heads


def test_zimage_names_round_trip_and_adaln_is_module_zero(zimage):
    model, bb = zimage
    names = bb.linear_names()
    assert "layers.0.adaLN_modulation.0" in names and "layers.0.adaLN_modulation.1" not in names
    assert all(bb.tree.get_submodule(n) is not None for n in names)
    sd = keys.native_state_to_diffusers(bb.tree.state_dict(), bb.arch.qkv_split, "zimage")
    assert set(sd) == set(model.state_dict())
    for k, v in sd.items():
        assert torch.equal(v, model.state_dict()[k]), k
