"""`train.checkpointing = 'auto'`: recompute only as many transformer blocks as the memory budget needs.

The first micro-step of each (batch, tokens) shape runs fully checkpointed and its peak is measured; two
forward passes then measure what one block's kept activations cost at that shape. The last k blocks keep
their activations (no recompute), with k the largest that keeps peak + k · block under the budget. Their
backward runs first, so their memory is gone before any recomputation starts, which makes that estimate
cautious: the next micro-step's measured peak corrects k once. CUDA only: elsewhere 'auto'
checkpoints every block. No ComfyUI imports.
"""

from __future__ import annotations

import logging
import math

import torch

from ..config import TrainConfig

log = logging.getLogger(__name__)

MARGIN = 0.05  # of the budget, for allocator fragmentation and the optimizer's own temporaries
_PROBE_BLOCKS = 2


def budget_bytes(cfg: TrainConfig, device: torch.device) -> int:
    """train.memory_budget_gib in bytes, or 90 % of the card when it is 0."""
    if cfg.memory_budget_gib > 0:
        return int(cfg.memory_budget_gib * 2**30)
    return int(torch.cuda.get_device_properties(device).total_memory * 0.9)


def blocks_to_keep(peak: int, per_block: int, budget: int, n_blocks: int) -> int:
    """How many blocks may keep their activations: peak + k · per_block <= budget · (1 − MARGIN)."""
    room = budget * (1 - MARGIN) - peak
    if room <= 0:
        return 0
    if per_block <= 0:
        return n_blocks
    return max(0, min(n_blocks, math.floor(room / per_block)))


def _held_by_forward(backbone, adapters, inputs, keep: int, key: tuple[int, int]) -> int:
    """Bytes the autograd graph of one forward holds when the last `keep` blocks keep activations."""
    opts = backbone.options
    opts.keep_activations[key] = keep
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    out = backbone.velocity(*inputs, adapters)
    held = torch.cuda.memory_allocated() - before - out.numel() * out.element_size()
    del out
    return held


def block_bytes(backbone, adapters, shape: tuple[int, int, int, int], dtype: torch.dtype) -> int:
    """Bytes one main block keeps for its backward at latent shape (B, h, w) with L caption tokens.

    Measured as the difference between two forwards (the last blocks keeping activations or not) on random
    inputs of that shape; inputs that need no gradient keep no more than real ones.
    """
    b, h, w, cap_len = shape
    arch, dev = backbone.arch, backbone.device
    gen = torch.Generator(device=dev).manual_seed(0)
    inputs = (torch.randn(b, arch.in_channels, h, w, generator=gen, device=dev, dtype=dtype),
              torch.rand(b, generator=gen, device=dev),
              torch.randn(b, cap_len, arch.cap_feat_dim, generator=gen, device=dev, dtype=dtype), None)
    key = (b, cap_len + (h // arch.patch_size) * (w // arch.patch_size))
    saved = backbone.options.keep_activations.get(key)
    try:
        with torch.random.fork_rng(devices=[dev]):  # adapter dropout must not shift the run's random stream
            base = _held_by_forward(backbone, adapters, inputs, 0, key)
            more = _held_by_forward(backbone, adapters, inputs, _PROBE_BLOCKS, key)
    finally:
        if saved is None:
            backbone.options.keep_activations.pop(key, None)
        else:
            backbone.options.keep_activations[key] = saved
    return max(0, (more - base) // _PROBE_BLOCKS)


def shape_key(backbone, shape: tuple[int, int, int, int]) -> tuple[int, int]:
    """(batch, joint tokens) of latent shape (B, h, w, L): the key of ForwardOptions.keep_activations."""
    p = backbone.arch.patch_size
    return shape[0], shape[3] + (shape[1] // p) * (shape[2] // p)


def plan_checkpointing(backbone, adapters, shape: tuple[int, int, int, int], peak: int, cfg: TrainConfig,
                       dtype: torch.dtype) -> int:
    """Set how many blocks keep activations at `shape` (B, h, w, L) after a fully checkpointed micro-step
    that peaked at `peak` bytes; returns the bytes one kept block costs (for `refine_plan`)."""
    arch = backbone.arch
    key = shape_key(backbone, shape)
    per_block = block_bytes(backbone, adapters, shape, dtype)
    n_blocks = arch.n_layers + 2 * arch.n_refiner_layers
    budget = budget_bytes(cfg, backbone.device)
    keep = blocks_to_keep(peak, per_block, budget, n_blocks)
    backbone.options.keep_activations[key] = keep
    log.info("checkpointing auto at batch %d, %d tokens: %d of %d blocks keep activations (step peak %.2f GiB, "
             "%.2f GiB per block, budget %.2f GiB)", key[0], key[1], keep, n_blocks, peak / 2**30,
             per_block / 2**30, budget / 2**30)
    return per_block


def refine_plan(backbone, shape: tuple[int, int, int, int], peak: int, per_block: int, cfg: TrainConfig) -> int:
    """Correct the plan once from the peak a micro-step with it measured (kept blocks free their memory
    before any recomputation starts, so the first estimate is cautious); returns the new count."""
    key = shape_key(backbone, shape)
    n_blocks = backbone.arch.n_layers + 2 * backbone.arch.n_refiner_layers
    room = budget_bytes(cfg, backbone.device) * (1 - MARGIN) - peak
    keep = backbone.options.keep_activations.get(key, 0)
    step = math.floor(room / per_block) if per_block > 0 else 0
    new = max(0, min(n_blocks, keep + step))
    if new != keep:
        backbone.options.keep_activations[key] = new
        log.info("checkpointing auto at batch %d, %d tokens: %d blocks keep activations (measured peak %.2f GiB "
                 "with %d)", key[0], key[1], new, peak / 2**30, keep)
    return new


def with_oom_advice(e: BaseException) -> BaseException:
    """CUDA out-of-memory keeps its type (ComfyUI unloads models on it) with our levers added."""
    if isinstance(e, torch.OutOfMemoryError):
        return torch.OutOfMemoryError(
            f"{e}\nLumina2 training ran out of GPU memory. A resumable checkpoint was written. Try a smaller "
            "batch_size (with grad_accum to keep the effective batch), a smaller largest bucket (resolution), "
            "checkpointing 'on', or a quantised base (model.base_precision)")
    return e
