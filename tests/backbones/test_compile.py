"""Regional compilation: one traced graph per block kind serves every layer (bounded recompiles)."""

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from lumina2_train.adapters import build_adapters
from lumina2_train.backbones.nextdit import compile_block
from lumina2_train.config import AdapterConfig


@pytest.mark.slow
def test_one_graph_per_block_kind_and_the_same_result(tiny_backbone):
    adapters = build_adapters(tiny_backbone, AdapterConfig(rank=4, targets=("attention", "ffn", "adaln")), seed=0)
    x, s, f = torch.randn(2, 16, 8, 8), torch.rand(2), torch.randn(2, 5, 32)
    ref = tiny_backbone.velocity(x, s, f, None, adapters.as_dict())
    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]
    tiny_backbone.options.compiled_block = compile_block("eager")
    tiny_backbone.options.checkpoint = True
    for _ in range(2):
        out = tiny_backbone.velocity(x, s, f, None, adapters.as_dict())
        out.square().mean().backward()
    # context refiner, noise refiner, main layers: 3 graphs for 4 blocks and 2 calls
    assert counters["stats"]["unique_graphs"] - before == 3
    torch.testing.assert_close(out, ref)
    torch._dynamo.reset()
