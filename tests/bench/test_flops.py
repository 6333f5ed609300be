"""FLOP accounting of our training step (torch.utils.flop_counter) on a tiny model, against the formula."""

import torch

from lumina2_train.adapters import build_adapters
from lumina2_train.bench.measure import step_flops
from lumina2_train.config import AdapterConfig
from lumina2_train.train.step import Batch


def _forward_flops(arch, b, hw, L, rank):
    """Multiply-adds × 2 of one forward: every Linear, LoRA on qkv/out, attention's two products."""
    D, F, t, p2c = arch.dim, arch.ffn_hidden, arch.t_dim, arch.patch_size**2 * arch.in_channels
    qkv = sum(arch.qkv_split)

    def block(n, modulated):
        linears = n * D * (qkv + D + 3 * F) + (t * 4 * D if modulated else 0)
        lora = n * (D * rank + rank * qkv) + n * (D * rank + rank * D)
        attention = 2 * arch.n_heads * n * n * arch.head_dim
        return 2 * b * (linears + lora + attention)

    embed = 2 * b * (256 * t + t * t + L * arch.cap_feat_dim * D + hw * p2c * D)
    final = 2 * b * (t * D + hw * D * p2c)
    blocks = arch.n_refiner_layers * (block(L, False) + block(hw, True)) + arch.n_layers * block(L + hw, True)
    return embed + blocks + final


def test_step_flops_match_the_formula(tiny_backbone):
    arch = tiny_backbone.arch
    adapters = build_adapters(tiny_backbone, AdapterConfig(rank=4, alpha=4.0), seed=0)
    b, L, h, w = 2, 5, 8, 12
    batch = Batch(torch.randn(b, 16, h, w), torch.randn(b, L, arch.cap_feat_dim), None, torch.ones(b), None,
                  (w * 8, h * 8))
    flops = step_flops(tiny_backbone, adapters.as_dict(), batch, dtype=torch.float32)
    hw = (h // 2) * (w // 2)
    assert flops["forward"] == _forward_flops(arch, b, hw, L, 4)
    backward = flops["total"] - flops["forward"]
    # the frozen base needs input gradients only (none for the embedders and adaLN, whose inputs need no
    # gradient): about one more forward, plus attention's extra products
    assert 0.8 * flops["forward"] < backward < 2.5 * flops["forward"]
    assert tiny_backbone.options.checkpoint is False and tiny_backbone.options.compiled_block is None


def test_counting_leaves_the_run_settings_alone(tiny_backbone):
    adapters = build_adapters(tiny_backbone, AdapterConfig(rank=2), seed=0)
    tiny_backbone.options.checkpoint = True
    batch = Batch(torch.randn(1, 16, 4, 4), torch.randn(1, 3, 32), None, torch.ones(1), None, (32, 32))
    step_flops(tiny_backbone, adapters.as_dict(), batch, dtype=torch.float32)
    assert tiny_backbone.options.checkpoint is True
