"""Selective recompute (backbones/selective.py): the same gradients as a whole recompute, the attention and the
qkv GEMM never run twice, and what a compiled selective block keeps for backward is exactly the policy's."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lumina2_train.adapters import build_adapters
from lumina2_train.backbones import selective
from lumina2_train.backbones.nextdit import Linears, block_forward, compile_block
from lumina2_train.config import AdapterConfig


def test_selective_blocks_give_the_same_gradients_and_never_recompute_attention(tiny_backbone):
    class CountAttention(TorchDispatchMode):
        calls = 0  # attention kernels
        qkv = 0  # the base's fused qkv GEMMs

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in selective._ATTENTION:
                CountAttention.calls += 1
            if func in selective._GEMMS and (args[0].shape[-1], args[1].shape[-1]) == widths:
                CountAttention.qkv += 1
            return func(*args, **(kwargs or {}))

    adapters = build_adapters(tiny_backbone, AdapterConfig(rank=4, targets=("attention", "ffn")), seed=0)
    x, s, f = torch.randn(2, 16, 8, 8), torch.rand(2), torch.randn(2, 5, 32)
    opts, key = tiny_backbone.options, (2, 5 + 16)
    widths = selective.qkv_widths(tiny_backbone.arch)
    opts.checkpoint = True
    n_blocks = len(tiny_backbone.tree.layers) + 2 * len(tiny_backbone.tree.noise_refiner)
    results, calls = [], []
    for sel in (0, n_blocks, 2):
        opts.keep_activations[key], opts.selective_blocks[key] = 0, sel
        CountAttention.calls = CountAttention.qkv = 0
        with CountAttention():
            tiny_backbone.velocity(x, s, f, None, adapters.as_dict()).square().mean().backward()
        calls.append((CountAttention.calls, CountAttention.qkv))
        results.append([p.grad.clone() for p in adapters.parameters()])
        adapters.zero_grad(set_to_none=True)
    for grads in results[1:]:
        for a, b in zip(results[0], grads):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # whole recomputes run each block's attention and qkv GEMM twice; selective blocks once (their outputs
    # are kept)
    assert calls == [(2 * n_blocks,) * 2, (n_blocks,) * 2, (2 * n_blocks - 2,) * 2]


@pytest.mark.slow
def test_a_compiled_selective_block_keeps_only_the_qkv_gemm_and_attention_outputs(tiny_backbone):
    """Under torch.compile (inductor on the CPU here, as on the GPU) the checkpoint is traced into the block's
    graph: what it saves for backward is its inputs, the qkv GEMM's output and the attention kernel's outputs,
    and no FFN activation; a compiled block that keeps everything saves the FFN's hidden states too."""
    arch = tiny_backbone.arch
    adapters = build_adapters(tiny_backbone, AdapterConfig(rank=4, targets=("attention",)), seed=0)
    lin = Linears(adapters.as_dict())
    blk, ad = tiny_backbone.tree.layers[0], lin.block("layers.0")
    b, n = 2, 40
    torch.manual_seed(0)
    x = torch.randn(b, n, arch.dim, requires_grad=True)
    angles = torch.rand(b, n, 1, arch.head_dim // 2)
    temb = torch.randn(b, arch.adaln_dim)
    weights = {t.untyped_storage().data_ptr() for t in (*tiny_backbone.tree.parameters(), *adapters.parameters())}

    def saved_and_grad(fn, *head):
        shapes = []

        def pack(t):
            if t.untyped_storage().data_ptr() not in weights:
                shapes.append(tuple(t.shape))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = fn(*head, blk, ad, lin, arch, x, None, angles.cos(), angles.sin(), temb, False)
        y.square().mean().backward()
        grad, x.grad = x.grad, None
        return shapes, grad

    kept, g_kept = saved_and_grad(compile_block())
    sel, g_sel = saved_and_grad(selective.compile_selective(block_forward), False)
    torch.testing.assert_close(g_sel, g_kept)
    qkv, hidden = sum(arch.qkv_split), blk.feed_forward.w1.out_features
    assert (b * n, qkv) in sel  # the fused qkv GEMM's output
    assert (b, arch.n_heads, n, arch.head_dim) in sel and (b, arch.n_heads, n) in sel  # attention out, lse
    assert not any(s[-1] == hidden for s in sel)
    assert sum(s[-1] == hidden for s in kept) >= 2  # w1, w3 outputs kept by the non-selective block

    def numel(shapes):
        return sum(torch.Size(s).numel() for s in shapes)

    assert numel(sel) < 0.5 * numel(kept)
