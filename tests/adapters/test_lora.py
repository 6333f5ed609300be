"""Adapter invariants (as in PEFT): identity at creation, only adapters learn, merged == unmerged."""

import pytest
import torch

from lumina2_train.adapters import build_adapters, select_targets
from lumina2_train.backbones import Backbone
from lumina2_train.backbones.diffusers import native_tree_from_state
from lumina2_train.config import AdapterConfig, parse_block_spec

from builders import velocity_inputs


def _batch():
    return velocity_inputs(2, 5, sigmas=[0.2, 0.7], seed=3)


def _all(rank=4, **kw):
    return AdapterConfig(rank=rank, alpha=2.0, targets=("attention", "ffn", "adaln", "final", "embedders"), **kw)


def test_new_adapter_is_identity(tiny_backbone):
    x, s, f = _batch()
    before = tiny_backbone.velocity(x, s, f, None)
    adapters = build_adapters(tiny_backbone, _all())
    torch.testing.assert_close(tiny_backbone.velocity(x, s, f, None, adapters.as_dict()), before)


def test_only_adapter_parameters_change_after_a_step(tiny_backbone):
    x, s, f = _batch()
    adapters = build_adapters(tiny_backbone, _all())
    base = {k: v.clone() for k, v in tiny_backbone.tree.state_dict().items()}
    opt = torch.optim.AdamW(adapters.parameters(), lr=1e-2)
    tiny_backbone.velocity(x, s, f, None, adapters.as_dict()).square().mean().backward()
    opt.step()
    assert all(p.grad is not None for p in adapters.parameters())
    assert all(torch.equal(v, base[k]) for k, v in tiny_backbone.tree.state_dict().items())
    assert any(m.up.abs().sum() > 0 for _, m in adapters.items())


def test_merged_equals_unmerged(tiny_backbone):
    x, s, f = _batch()
    adapters = build_adapters(tiny_backbone, _all())
    with torch.no_grad():
        for p in adapters.parameters():
            p.normal_(0, 0.05)
        unmerged = tiny_backbone.velocity(x, s, f, None, adapters.as_dict())
        sd = dict(tiny_backbone.tree.state_dict())
        sd.update(adapters.merged_weights(tiny_backbone))
        merged = Backbone(native_tree_from_state(sd, tiny_backbone.arch), tiny_backbone.arch)
        torch.testing.assert_close(merged.velocity(x, s, f, None), unmerged, atol=1e-5, rtol=1e-5)


def test_target_selection_by_group_and_block(tiny_backbone):
    arch = tiny_backbone.arch
    attn = select_targets(arch, AdapterConfig())
    assert attn == ["noise_refiner.0.attention.qkv", "noise_refiner.0.attention.out",
                    "context_refiner.0.attention.qkv", "context_refiner.0.attention.out",
                    "layers.0.attention.qkv", "layers.0.attention.out",
                    "layers.1.attention.qkv", "layers.1.attention.out"]
    only_l1 = select_targets(arch, AdapterConfig(targets=("ffn", "adaln"), blocks="1", refiners=False))
    assert only_l1 == ["layers.1.feed_forward.w1", "layers.1.feed_forward.w2", "layers.1.feed_forward.w3",
                       "layers.1.adaLN_modulation.1"]
    assert select_targets(arch, AdapterConfig(targets=("final", "embedders"))) == [
        "x_embedder", "t_embedder.mlp.0", "t_embedder.mlp.2", "cap_embedder.1",
        "final_layer.linear", "final_layer.adaLN_modulation.1"]


def test_block_spec_parsing():
    assert parse_block_spec("0-2,5", 26) == (0, 1, 2, 5)
    assert parse_block_spec("all", 3) == (0, 1, 2)
    with pytest.raises(ValueError, match="outside"):
        parse_block_spec("0-30", 26)
    assert "adapter.blocks" in AdapterConfig(blocks="x-y").errors()[0]


def test_lora_scale_and_dropout_only_in_training(tiny_backbone):
    adapters = build_adapters(tiny_backbone, AdapterConfig(rank=4, alpha=8.0, dropout=0.5))
    mod = adapters["layers.0.attention.qkv"]
    assert mod.scale == 2.0
    with torch.no_grad():
        mod.up.normal_()
    x = torch.randn(3, 96)
    mod.eval()
    torch.testing.assert_close(mod(x), x @ mod.delta_weight().T)
