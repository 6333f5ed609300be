"""The diffusers backbone pins the time and sign conversion and the fused-qkv layout exactly."""

import torch

from lumina2_train.backbones import keys

from builders import velocity_inputs


def _inputs(b=3, L=7, d=32, seed=0):
    return velocity_inputs(b, L, seed=seed, hw=(8, 12), dim=d)


def test_velocity_is_minus_diffusers_output_at_one_minus_sigma(tiny_dit, tiny_backbone):
    x, sigma, feats = _inputs()
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 3:] = 0  # unequal caption lengths exercise the padding path
    with torch.no_grad():
        ref = -tiny_dit(x, 1 - sigma, feats, mask, return_dict=False)[0]
        ours = tiny_backbone.velocity(x, sigma, feats, mask)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_the_result(tiny_backbone):
    x, sigma, feats = _inputs(b=1)
    short = feats[:, :4]
    padded = torch.cat([short, torch.randn(1, 3, 32)], dim=1)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0]])
    with torch.no_grad():
        a = tiny_backbone.velocity(x, sigma, short, None)
        b = tiny_backbone.velocity(x, sigma, padded, mask)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_qkv_is_the_exact_concatenation_of_to_q_to_k_to_v(tiny_dit, tiny_backbone):
    attn = tiny_dit.layers[1].attn
    fused = tiny_backbone.linear("layers.1.attention.qkv").weight
    assert torch.equal(fused, torch.cat([attn.to_q.weight, attn.to_k.weight, attn.to_v.weight]))
    assert tiny_backbone.arch.qkv_split == (96, 48, 48)


def test_other_weights_are_shared_not_copied(tiny_dit, tiny_backbone):
    assert tiny_backbone.linear("layers.0.feed_forward.w2").weight.data_ptr() == \
        tiny_dit.layers[0].feed_forward.linear_2.weight.data_ptr()


def test_state_dict_conversion_round_trips(tiny_dit, tiny_backbone):
    sd = tiny_dit.state_dict()
    native = keys.diffusers_state_to_native(sd)
    assert "layers.0.attention.qkv.weight" in native and "context_refiner.0.attention_norm1.weight" in native
    back = keys.native_state_to_diffusers(native, tiny_backbone.arch.qkv_split)
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_base_weights_get_no_gradient(tiny_backbone):
    x, sigma, feats = _inputs(b=1)
    x.requires_grad_(True)
    tiny_backbone.velocity(x, sigma, feats, None).square().mean().backward()
    assert x.grad is not None
    assert all(p.grad is None for p in tiny_backbone.tree.parameters())
