"""The compiled block over ComfyUI-style weights (made under inference mode, as ComfyUI loads models): one
graph per block kind, no graph breaks, and the same output and adapter gradients as the eager forward.

A per-weight autograd-safety check inside the block once broke its graph at every Linear (94 graphs and 7 %
slower on an H200, docs/benchmarks.md); the decision is now made once per forward, outside the block.
"""

import pytest
import torch
import torch._dynamo
import torch._dynamo.utils as dynamo_utils

from lumina2_train.adapters import build_adapters
from lumina2_train.backbones.comfy import ComfyBackbone, comfy_weight
from lumina2_train.backbones.nextdit import NativeNextDiT, compile_block
from lumina2_train.config import AdapterConfig


@pytest.mark.slow
def test_compiled_blocks_over_inference_weights_do_not_break_and_match_eager(tiny_backbone):
    with torch.inference_mode():
        tree = NativeNextDiT(tiny_backbone.arch)
        tree.load_state_dict(tiny_backbone.tree.state_dict())
    tree.requires_grad_(False)
    comfy = ComfyBackbone(tree, tiny_backbone.arch, weight_fn=comfy_weight, kind="comfy")
    adapters = build_adapters(comfy, AdapterConfig(rank=2, alpha=2.0, targets=("attention", "ffn")),
                              torch.device("cpu"), seed=0)
    for p in adapters.parameters():
        torch.nn.init.normal_(p, std=0.1)
    gen = torch.Generator().manual_seed(0)
    x, sigma = torch.randn(2, 16, 8, 8, generator=gen), torch.rand(2, generator=gen)
    cap = torch.randn(2, 5, tiny_backbone.arch.cap_feat_dim, generator=gen)

    def run():
        out = comfy.velocity(x, sigma, cap, None, adapters.as_dict())
        out.square().mean().backward()
        grads = [p.grad.clone() for p in adapters.parameters()]
        for p in adapters.parameters():
            p.grad = None
        return out.detach(), grads

    eager_out, eager_grads = run()
    torch._dynamo.reset()
    dynamo_utils.counters.clear()
    comfy.options.compiled_block = compile_block(backend="aot_eager")  # dynamo + AOTAutograd, no C++ compiler
    for checkpoint in (False, True):
        comfy.options.checkpoint = checkpoint
        out, grads = run()
        torch.testing.assert_close(out, eager_out, rtol=1e-5, atol=1e-6)
        for g, e in zip(grads, eager_grads):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    assert not dynamo_utils.counters["graph_break"], dict(dynamo_utils.counters["graph_break"])
    assert dynamo_utils.counters["stats"]["unique_graphs"] == 3  # context refiner, noise refiner, main block
