"""Selective recompute of a transformer block (`train.selective_recompute`, with checkpointing 'auto').

A fully checkpointed block keeps only its input and runs its whole forward again in the backward. A selective
block also keeps the two results that are dear to recompute and cheap to store: the output of the fused qkv
GEMM (the base's; the adapter's small product is recomputed) and the attention kernel's outputs (the
attention output and its log-sum-exp). The backward then recomputes only the norms, RoPE, the GQA expansion,
the out projection and the FFN. At 1024² batch 4 on Lumina2 that is 2.7 token-widths per block instead of the
17 a block that keeps everything holds, for about a third of that block's recompute time (docs/benchmarks.md),
so per byte it buys back more time than keeping whole blocks; train/memory.py spends the budget on it first.

Written with `torch.utils.checkpoint`'s selective-checkpoint policy, so the same function runs eagerly (the
policy is a dispatch mode) and under torch.compile (the checkpoint is traced into the block's graph and the
partitioner saves what the policy marks). The numbers are those of a full recompute: the same ops run on the
same inputs. No ComfyUI imports.
"""

from __future__ import annotations

import functools

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

_aten = torch.ops.aten
# every fused attention kernel SDPA may pick, and the CPU one: their outputs are kept, never recomputed
_ATTENTION_OPS = frozenset(op for op in (
    getattr(_aten, name, None) for name in (
        "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_fused_attention_overrideable")) if op is not None)
_ATTENTION = frozenset(op.default for op in _ATTENTION_OPS)
_GEMMS = frozenset((_aten.mm.default, _aten._scaled_mm.default))


def _policy(widths: tuple[int, int], ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """Keep the attention kernels' outputs and the qkv GEMM's (in: the model width, out: q + k + v widths);
    recompute everything else. The adapters' GEMMs have their rank as one side, so they never match."""
    if op in _ATTENTION:
        return CheckpointPolicy.MUST_SAVE
    if op in _GEMMS:
        a, b = args[0], args[1]
        if a.shape[-1] == widths[0] and b.shape[-1] == widths[1]:
            return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def qkv_widths(arch) -> tuple[int, int]:
    """(model width, fused qkv output width) of `arch`: how the policy knows the qkv GEMM."""
    return arch.dim, sum(arch.qkv_split)


def selective_block(block_fn, rng: bool, blk, ad, lin, arch, x, mask, cos, sin, temb, cudnn):
    """`block_fn(blk, ...)` recomputed in the backward except its qkv GEMM and attention (module doc).

    `rng`: replay the RNG state of the first run in the recompute (only adapter dropout draws)."""
    context = functools.partial(create_selective_checkpoint_contexts,
                                functools.partial(_policy, qkv_widths(arch)))
    return checkpoint(block_fn, blk, ad, lin, arch, x, mask, cos, sin, temb, cudnn, use_reentrant=False,
                      context_fn=context, preserve_rng_state=rng, determinism_check="default" if rng else "none")


def compile_selective(block_fn, backend: str = "inductor"):
    """`selective_block` under torch.compile: the checkpoint is traced inside the block's graph (a compiled
    function called under an outer checkpoint would recompute whole). Static shapes, like compile_block."""

    def run(rng, blk, ad, lin, arch, x, mask, cos, sin, temb, cudnn):
        return selective_block(block_fn, rng, blk, ad, lin, arch, x, mask, cos, sin, temb, cudnn)

    return torch.compile(run, backend=backend, dynamic=False)


__all__ = ["compile_selective", "qkv_widths", "selective_block"]
