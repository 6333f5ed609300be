"""Measuring: step timing with device synchronisation, peak memory, the card's bf16 matmul rate, FLOPs per
sample from torch.utils.flop_counter, and an attention-kernel comparison. No ComfyUI imports.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from .. import recipe
from ..backbones.nextdit import ForwardOptions
from ..train.step import Batch, micro_step_loss

GIB = 2**30


@dataclass
class Timing:
    step_s: float  # median over the timed steps
    steps_s: list[float]
    warmup_s: list[float]
    peak_gib: float  # max_memory_allocated over the timed steps
    warmup_peak_gib: float
    last_loss: float

    @property
    def compile_warmup_s(self) -> float:
        """Warm-up time beyond what the same number of steady steps take (compilation, planning)."""
        return max(0.0, sum(self.warmup_s) - len(self.warmup_s) * self.step_s)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], float], device: torch.device, warmup: int, steps: int) -> Timing:
    """Run `step` warmup + steps times; peak memory counts the timed steps only (steady state)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times, loss = [], float("nan")
    warm_peak = 0.0
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        loss = step()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if i == warmup - 1 and cuda:
            warm_peak = torch.cuda.max_memory_allocated(device) / GIB
            torch.cuda.reset_peak_memory_stats(device)
    peak = torch.cuda.max_memory_allocated(device) / GIB if cuda else 0.0
    return Timing(statistics.median(times[warmup:]), times[warmup:], times[:warmup], peak, warm_peak, float(loss))


def matmul_tflops(device: torch.device, n: int = 8192, reps: int = 10) -> float:
    """The card's bf16 matmul rate on random data (an n³ product; mean of `reps` after 3 warm-ups)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def step_flops(backbone, adapters: dict, batch: Batch, *, dtype: torch.dtype) -> dict[str, int]:
    """FLOPs of one training micro-step (forward + backward) of our step on `batch`, counted by
    torch.utils.flop_counter with no checkpointing and no compilation.

    Attention runs on the math backend while counting, so its matrix products are counted as such on
    every device (fused kernels are not registered everywhere). Returns {'total', 'forward'}.
    """
    saved = backbone.options
    backbone.options = ForwardOptions(cudnn_attention=False)
    gen = torch.Generator().manual_seed(0)
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            with FlopCounterMode(display=False) as fwd:
                loss, _ = micro_step_loss(backbone, adapters, batch, recipe.TimestepSampling(), weighting="none",
                                          gamma=5.0, gen=gen, device=backbone.device, dtype=dtype)
            with FlopCounterMode(display=False) as bwd:
                loss.backward()
    finally:
        backbone.options = saved
    f, b = fwd.get_total_flops(), bwd.get_total_flops()
    return {"total": f + b, "forward": f}


def attention_ops(backbone, adapters: dict, batch: Batch, *, dtype: torch.dtype) -> list[str]:
    """The attention operators one eager forward of our step runs with the run's own options (which kernel)."""
    saved = backbone.options
    backbone.options = ForwardOptions(cudnn_attention=saved.cudnn_attention)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            backbone.velocity(batch.latents.to(backbone.device, dtype), torch.full((batch.latents.shape[0],), 0.5,
                              device=backbone.device), batch.cap_feats.to(backbone.device, dtype), None, adapters)
    finally:
        backbone.options = saved
    return sorted({str(op) for op in fc.get_flop_counts().get("Global", {}) if "attention" in str(op)})


def attention_kernels(device: torch.device, batch: int, tokens: int, heads: int = 24, kv_heads: int = 8,
                      head_dim: int = 96, reps: int = 10) -> dict[str, float]:
    """Forward + backward milliseconds of one attention call at the training shape, per kernel choice."""
    gen = torch.Generator(device=device).manual_seed(0)

    def rnd(h):
        return torch.randn(batch, h, tokens, head_dim, generator=gen, device=device, dtype=torch.bfloat16)

    q, k, v = rnd(heads), rnd(kv_heads), rnd(kv_heads)
    rep = heads // kv_heads
    ke, ve = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    mask = torch.ones(batch, 1, 1, tokens, dtype=torch.bool, device=device)
    mask[0, ..., -16:] = False
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)  # (B, H, N, d) views of (B, N, H, d) memory
    cases = {
        "flash, native GQA, no mask": ([SDPBackend.FLASH_ATTENTION], (k, v), None, True),
        "cuDNN, expanded k/v, q a transposed view": ([SDPBackend.CUDNN_ATTENTION], (ke, ve), None, False, qt),
        "cuDNN, expanded k/v, no mask (ours)": ([SDPBackend.CUDNN_ATTENTION], (ke, ve), None, False),
        "flash, expanded k/v, no mask (diffusers)": ([SDPBackend.FLASH_ATTENTION], (ke, ve), None, False),
        "efficient, expanded k/v, padding mask": ([SDPBackend.EFFICIENT_ATTENTION], (ke, ve), mask, False),
    }
    out = {}
    for name, (backends, (kk, vv), m, gqa, *qq) in cases.items():
        try:
            out[name] = _time_attention(backends, qq[0] if qq else q, kk, vv, m, gqa, reps, device)
        except RuntimeError as e:  # a kernel this build or card does not offer
            out[name] = float("nan")
            out[name + " error"] = str(e).splitlines()[0][:120]
    return out


def _time_attention(backends, q, k, v, mask, gqa: bool, reps: int, device) -> float:
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    with sdpa_kernel(backends):
        for i in range(reps + 2):
            if i == 2:
                _sync(device)
                t0 = time.perf_counter()
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
            o.backward(torch.ones_like(o))
    _sync(device)
    return (time.perf_counter() - t0) / reps * 1e3
