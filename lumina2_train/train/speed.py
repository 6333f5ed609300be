"""The run's speed and memory settings applied to the backbone: regional torch.compile, checkpointing
(on / off / auto by memory budget), 8-bit storage of the frozen base, and the opt-in fp8 paths (fp8 compute
of the frozen base, fp8 storage of kept activations; backbones/fp8.py). Without the opt-in fp8 paths this
changes how the step runs, never what it computes (up to bf16 rounding and, for an 8-bit base, the stored
weights' rounding). No ComfyUI imports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging

import torch

from ..backbones.fp8 import check_compute, packed_activations
from ..backbones.nextdit import ForwardOptions, block_forward, compile_block
from ..backbones.quant import quantize_base
from ..backbones.selective import compile_selective
from ..config import RunConfig
from ..errors import ConfigError
from .memory import plan_checkpointing, refine_plan, shape_key

log = logging.getLogger(__name__)


def cpu_has_bf16() -> bool:
    """True when this CPU runs bf16 matmuls natively (AVX512-BF16 or AMX, through oneDNN)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The step's autocast dtype for train.precision on `device`.

    "bf16" on a CPU without native bf16 matmuls would run every GEMM through PyTorch's reference kernel, some
    tens of times slower than fp32 (a 3-step run of ComfyUI's smallest Lumina2 took minutes): there the step
    runs in fp32, which is exact where bf16 rounds, and the log says so. GPUs and bf16 CPUs get bf16.
    """
    if precision == "fp32":
        return torch.float32
    if device.type == "cpu" and not cpu_has_bf16():
        log.info("train.precision 'bf16': this CPU has no native bf16 matmuls (%s); the step runs in fp32",
                 torch.backends.cpu.get_cpu_capability())
        return torch.float32
    return torch.bfloat16


GRAPHS_PER_BUCKET = 4  # context refiner, noise refiner, main block; one spare (inference or a new mask shape)


def prepare_base(backbone, cfg: RunConfig) -> None:
    """Store the frozen base as model.base_precision asks and check model.base_compute can run; call after the
    adapters exist, so a full fine-tune copies the unquantised base weights."""
    fmt = cfg.model.storage_format
    if fmt in ("fp8", "int8"):
        saved = quantize_base(backbone, fmt)
        if saved:
            log.info("frozen base stored in %s (%.2f GiB saved)", fmt, saved / 2**30)
    elif fmt != "no_change":
        raise ConfigError(f"model.base_precision '{cfg.model.base_precision}' is not available in this version; "
                          "choose 'fp8' or 'int8' (stored by the library, no extra package)")
    check_compute(cfg.model.base_compute, backbone.device)  # refuses 'fp8' where it cannot run


def forward_options(backbone, cfg: RunConfig, units: dict | None = None) -> ForwardOptions:
    """This run's ForwardOptions: the backbone's current ones (cudnn_attention kept) with the run's settings, a
    fresh activation plan and the FSDP2 block `units` (train/parallel.py). Returned, never written in place."""
    t = cfg.train
    packer = packed_activations(backbone.tree) if t.saved_activations == "fp8" else None
    if cfg.model.base_compute != "bf16" or packer is not None:
        log.info("frozen base GEMMs in %s, kept activations stored in %s", cfg.model.base_compute,
                 t.saved_activations)
    compiled = compiled_sel = None
    if t.compile and backbone.device.type == "cuda":
        compiled = compile_block()  # one compiled function serves every block
        if t.checkpointing == "auto" and t.selective_recompute:
            compiled_sel = compile_selective(block_forward)
    elif t.compile:
        log.info("train.compile is ignored on %s (it compiles for CUDA GPUs)", backbone.device.type)
    return dataclasses.replace(
        backbone.options, checkpoint=t.checkpointing != "off",
        recompute_rng=cfg.adapter.dropout > 0,  # the only randomness inside a block
        keep_activations={}, selective_blocks={}, units=dict(units or {}), base_compute=cfg.model.base_compute,
        packer=packer, compiled_block=compiled, compiled_selective=compiled_sel)


def recompile_limit(cfg: RunConfig, device: torch.device, n_buckets: int) -> int:
    """The dynamo recompile limit the compiled step needs (each bucket shape adds a few graphs: static
    shapes); 0 when nothing is compiled."""
    if not (cfg.train.compile and device.type == "cuda"):
        return 0
    import torch._dynamo

    return max(torch._dynamo.config.recompile_limit, GRAPHS_PER_BUCKET * max(n_buckets, 1) + 4)


def compiled_region(limit: int):
    """Meanwhile dynamo's recompile limit is at least `limit` (restored after: the process's setting is not
    changed for other code, e.g. ComfyUI's own compiled models); a no-op for 0."""
    if not limit:
        return contextlib.nullcontext()
    import torch._dynamo

    return torch._dynamo.config.patch(recompile_limit=limit)


class CheckpointPlanner:
    """For checkpointing 'auto': per new batch shape, plans from a fully checkpointed micro-step, then
    corrects the plan once from the next micro-step's measured peak."""

    def __init__(self, backbone, cfg: RunConfig, dtype: torch.dtype):
        self.backbone, self.cfg, self.dtype = backbone, cfg, dtype
        self.active = cfg.train.checkpointing == "auto" and backbone.device.type == "cuda"
        self._per_block: dict[tuple[int, int], int] = {}  # shapes planned, awaiting their correction
        self._done: set[tuple[int, int]] = set()

    def begin(self, batch) -> tuple[int, int, int, int] | None:
        """Call before a micro-step; returns the shape to measure it for, or None."""
        if not self.active:
            return None
        b, _, h, w = batch.latents.shape
        shape = (b, h, w, batch.cap_feats.shape[1])
        if shape_key(self.backbone, shape) in self._done:
            return None
        torch.cuda.reset_peak_memory_stats(self.backbone.device)
        return shape

    def end(self, shape: tuple[int, int, int, int] | None, adapters: dict) -> None:
        """Call after the micro-step's backward."""
        if shape is None:
            return
        key = shape_key(self.backbone, shape)
        peak = torch.cuda.max_memory_allocated(self.backbone.device)
        if key not in self._per_block:
            self._per_block[key] = plan_checkpointing(self.backbone, adapters, shape, peak, self.cfg.train,
                                                      self.dtype)
        else:
            refine_plan(self.backbone, shape, peak, self._per_block.pop(key), self.cfg.train)
            self._done.add(key)
