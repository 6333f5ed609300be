"""`train.checkpointing = 'auto'`: recompute only as many transformer blocks as the memory budget needs.

The first micro-step of each (batch, tokens) shape runs fully checkpointed and its peak is measured; extra
forward passes then measure what one block costs at that shape when it keeps its activations and, with
`train.selective_recompute`, when it recomputes selectively (backbones/selective.py: its qkv GEMM and
attention outputs kept). The budget above that peak is spent greedily by time bought back per byte: first
turning whole-block recomputes into selective ones (a sixth of the memory of a kept block for about a third
of its recompute time), then turning selective blocks into kept ones (`allocate`). The kept blocks are the
last ones; their backward runs first, so their memory is gone before any recomputation starts, which makes
the estimate cautious: the next micro-step's measured peak corrects the plan once. CUDA only: elsewhere
'auto' checkpoints every block. No ComfyUI imports.
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


def allocate(room: float, n_blocks: int, selective: int, keep: int, sel_bytes: int, keep_bytes: int) -> tuple[int, int]:
    """(selective, keep) block counts after spending `room` bytes (negative: giving them back) from the plan
    (`selective`, `keep`): whole recomputes become selective first (`sel_bytes` each), then selective blocks
    become kept (`keep_bytes - sel_bytes` more each); given back in the opposite order. `sel_bytes` 0 means
    no selective recompute: kept blocks then cost `keep_bytes` from a whole recompute."""
    if sel_bytes <= 0 or sel_bytes >= keep_bytes:  # no selective recompute (or no cheaper): whole blocks only
        if keep_bytes <= 0:
            return 0, n_blocks if room > 0 else keep
        return 0, max(0, min(n_blocks, keep + math.floor(room / keep_bytes)))
    upgrade = keep_bytes - sel_bytes
    if room >= 0:
        full = n_blocks - selective - keep
        to_sel = min(full, math.floor(room / sel_bytes))
        selective, room = selective + to_sel, room - to_sel * sel_bytes
        to_keep = min(selective, math.floor(room / upgrade))
        return selective - to_keep, keep + to_keep
    need = -room
    down = min(keep, math.ceil(need / upgrade))  # kept -> selective
    keep, selective, need = keep - down, selective + down, need - down * upgrade
    if need > 0:
        selective = max(0, selective - math.ceil(need / sel_bytes))
    return selective, keep


def _held_by_forward(backbone, adapters, inputs, keep: int, key: tuple[int, int], selective: int = 0) -> int:
    """Bytes the autograd graph of one forward holds when the last `keep` blocks keep activations and the
    `selective` before them recompute selectively."""
    opts = backbone.options
    opts.keep_activations[key] = keep
    opts.selective_blocks[key] = selective
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    out = backbone.velocity(*inputs, adapters)
    held = torch.cuda.memory_allocated() - before - out.numel() * out.element_size()
    del out
    return held


def block_bytes(backbone, adapters, shape: tuple[int, int, int, int], dtype: torch.dtype,
                selective: bool = False) -> tuple[int, int]:
    """(kept, selective) bytes one main block holds for its backward at latent shape (B, h, w) with L caption
    tokens, beyond a whole recompute: when it keeps its activations, and when it recomputes selectively
    (0 unless `selective`).

    Measured as differences between forwards (the last blocks keeping activations, recomputing selectively or
    whole) on random inputs of that shape; inputs that need no gradient keep no more than real ones.
    """
    b, h, w, cap_len = shape
    arch, dev = backbone.arch, backbone.device
    gen = torch.Generator(device=dev).manual_seed(0)
    inputs = (torch.randn(b, arch.in_channels, h, w, generator=gen, device=dev, dtype=dtype),
              torch.rand(b, generator=gen, device=dev),
              torch.randn(b, cap_len, arch.cap_feat_dim, generator=gen, device=dev, dtype=dtype), None)
    key = (b, cap_len + (h // arch.patch_size) * (w // arch.patch_size))
    opts = backbone.options
    saved = opts.keep_activations.get(key), opts.selective_blocks.get(key)
    sel = 0
    try:
        with torch.random.fork_rng(devices=[dev]):  # adapter dropout must not shift the run's random stream
            base = _held_by_forward(backbone, adapters, inputs, 0, key)
            more = _held_by_forward(backbone, adapters, inputs, _PROBE_BLOCKS, key)
            if selective:
                sel = _held_by_forward(backbone, adapters, inputs, 0, key, _PROBE_BLOCKS) - base
    finally:
        for table, value in zip((opts.keep_activations, opts.selective_blocks), saved):
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
    return max(0, (more - base) // _PROBE_BLOCKS), max(0, sel // _PROBE_BLOCKS)


def shape_key(backbone, shape: tuple[int, int, int, int]) -> tuple[int, int]:
    """(batch, joint tokens) of latent shape (B, h, w, L): the key of ForwardOptions.keep_activations."""
    p = backbone.arch.patch_size
    return shape[0], shape[3] + (shape[1] // p) * (shape[2] // p)


def plan_checkpointing(backbone, adapters, shape: tuple[int, int, int, int], peak: int, cfg: TrainConfig,
                       dtype: torch.dtype) -> tuple[int, int]:
    """Set which blocks keep activations and which recompute selectively at `shape` (B, h, w, L) after a fully
    checkpointed micro-step that peaked at `peak` bytes; returns the (kept, selective) bytes per block (for
    `refine_plan`)."""
    arch = backbone.arch
    key = shape_key(backbone, shape)
    per_block = block_bytes(backbone, adapters, shape, dtype, selective=cfg.selective_recompute)
    n_blocks = arch.n_layers + 2 * arch.n_refiner_layers
    room = budget_bytes(cfg, backbone.device) * (1 - MARGIN) - peak
    sel, keep = allocate(room, n_blocks, 0, 0, per_block[1], per_block[0])
    backbone.options.keep_activations[key], backbone.options.selective_blocks[key] = keep, sel
    log.info("checkpointing auto at batch %d, %d tokens: of %d blocks %d keep activations and %d recompute "
             "selectively (step peak %.2f GiB; per block %.2f GiB kept, %.2f GiB selective; budget %.2f GiB)",
             key[0], key[1], n_blocks, keep, sel, peak / 2**30, per_block[0] / 2**30, per_block[1] / 2**30,
             budget_bytes(cfg, backbone.device) / 2**30)
    return per_block


def refine_plan(backbone, shape: tuple[int, int, int, int], peak: int, per_block: tuple[int, int],
                cfg: TrainConfig) -> int:
    """Correct the plan once from the peak a micro-step with it measured (kept blocks free their memory
    before any recomputation starts, so the first estimate is cautious); returns the new kept count."""
    key = shape_key(backbone, shape)
    opts = backbone.options
    n_blocks = backbone.arch.n_layers + 2 * backbone.arch.n_refiner_layers
    room = budget_bytes(cfg, backbone.device) * (1 - MARGIN) - peak
    keep, sel = opts.keep_activations.get(key, 0), opts.selective_blocks.get(key, 0)
    new_sel, new = allocate(room, n_blocks, sel, keep, per_block[1], per_block[0])
    if (new_sel, new) != (sel, keep):
        opts.keep_activations[key], opts.selective_blocks[key] = new, new_sel
        log.info("checkpointing auto at batch %d, %d tokens: %d blocks keep activations, %d recompute "
                 "selectively (measured peak %.2f GiB with %d and %d)", key[0], key[1], new, new_sel,
                 peak / 2**30, keep, sel)
    return new


def with_oom_advice(e: BaseException) -> BaseException:
    """CUDA out-of-memory keeps its type (ComfyUI unloads models on it) with our levers added."""
    if isinstance(e, torch.OutOfMemoryError):
        return torch.OutOfMemoryError(
            f"{e}\nLumina2 training ran out of GPU memory. A resumable checkpoint was written. Try a smaller "
            "batch_size (with grad_accum to keep the effective batch), a smaller largest bucket (resolution), "
            "checkpointing 'on', or a quantised base (model.base_precision)")
    return e
