"""Checkpointing by memory budget: the plan's arithmetic, and kept blocks compute the same step."""

import torch

from lumina2_train.adapters import build_adapters
from lumina2_train.config import AdapterConfig
from lumina2_train.train.memory import allocate


def test_allocate_spends_the_room_on_selective_blocks_first_then_on_kept_ones():
    gib = 2**30
    # selective 1 GiB, kept 6 GiB: 10 GiB makes 10 of 30 selective
    assert allocate(10 * gib, 30, 0, 0, gib, 6 * gib) == (10, 0)
    # 40 GiB: all 30 selective (30 GiB), then 10 GiB upgrades 2 of them (5 GiB each)
    assert allocate(40 * gib, 30, 0, 0, gib, 6 * gib) == (28, 2)
    assert allocate(1000 * gib, 30, 0, 0, gib, 6 * gib) == (0, 30)
    assert allocate(-gib, 30, 0, 0, gib, 6 * gib) == (0, 0)
    # giving back: kept blocks go back to selective first, then selective ones to whole recomputes
    assert allocate(-5 * gib, 30, 28, 2, gib, 6 * gib) == (29, 1)
    assert allocate(-12 * gib, 30, 28, 2, gib, 6 * gib) == (28, 0)
    # no selective recompute: whole blocks only, as many as fit
    assert allocate(13 * gib, 30, 0, 0, 0, 6 * gib) == (0, 2)
    assert allocate(13 * gib, 30, 0, 1, 0, 6 * gib) == (0, 3)
    assert allocate(-7 * gib, 30, 0, 3, 0, 6 * gib) == (0, 1)
    assert allocate(gib, 30, 0, 0, 0, 0) == (0, 30)


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



def test_selective_recompute_outside_checkpointing_auto_is_refused_with_the_fix():
    from lumina2_train.config import TrainConfig

    for mode in ("on", "off"):
        errors = TrainConfig(selective_recompute=True, checkpointing=mode).errors()
        assert any("train.selective_recompute" in e and f"'{mode}'" in e and "set checkpointing to 'auto'" in e
                   for e in errors), errors
    assert TrainConfig(selective_recompute=True, checkpointing="auto").errors() == []
