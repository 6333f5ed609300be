"""Checkpointing by memory budget: the plan's arithmetic, and kept blocks compute the same step."""

import torch

from lumina2_train.adapters import build_adapters
from lumina2_train.config import AdapterConfig
from lumina2_train.train.memory import MARGIN, blocks_to_keep


def test_blocks_to_keep_fills_the_budget_and_no_more():
    gib = 2**30
    assert blocks_to_keep(10 * gib, gib, 16 * gib, 30) == int(16 * (1 - MARGIN) - 10)
    assert blocks_to_keep(17 * gib, gib, 16 * gib, 30) == 0
    assert blocks_to_keep(1 * gib, gib, 100 * gib, 30) == 30
    assert blocks_to_keep(1 * gib, 0, 100 * gib, 30) == 30


def test_kept_blocks_give_the_same_loss_and_gradients(tiny_backbone):
    adapters = build_adapters(tiny_backbone, AdapterConfig(rank=4, targets=("attention", "ffn")), seed=0)
    x, s, f = torch.randn(2, 16, 8, 8), torch.rand(2), torch.randn(2, 5, 32)
    tiny_backbone.options.checkpoint = True
    results = []
    for keep in (0, 2, 99):
        tiny_backbone.options.keep_activations[(2, 5 + 16)] = keep
        tiny_backbone.velocity(x, s, f, None, adapters.as_dict()).square().mean().backward()
        results.append([p.grad.clone() for p in adapters.parameters()])
        adapters.zero_grad(set_to_none=True)
    for grads in results[1:]:
        for a, b in zip(results[0], grads):
            torch.testing.assert_close(a, b)
