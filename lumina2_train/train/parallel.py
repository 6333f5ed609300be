"""The trainable step as a module, so PyTorch's distributed wrappers see its parameters: DDP for adapters
(replicated, gradients averaged in backward), FSDP2 (`fully_shard`, one unit per transformer block) for full
fine-tunes, and sharded checkpoints through torch.distributed.checkpoint (DCP), which reshards on load, so a
run resumes on another number of processes. The frozen base is neither synced nor sharded: each process
holds it, as on one GPU. No ComfyUI imports.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from torch import nn

from ..adapters.kinds import kind_of
from .distributed import World, uses_sharding

log = logging.getLogger(__name__)
SHARDED = "sharded"  # the DCP folder inside a checkpoint folder


class StepModule(nn.Module):
    """Owns the trainable modules and runs the velocity of one micro-step through them.

    Plain and DDP: the AdapterSet is its child. FSDP2: its children are one `BlockUnit` per transformer
    block and `rest` (embedders and final layer); the AdapterSet is only referenced (its modules are the
    same objects), so no parameter is reachable twice.
    """

    def __init__(self, backbone, adapters, units: dict[str, nn.Module] | None = None):
        super().__init__()
        self.backbone = backbone  # not a Module: never registered, synced or sharded
        self.by_name = adapters.as_dict()  # a plain dict: not registered
        if units:
            self.units = nn.ModuleDict({k.replace(".", "__"): u for k, u in units.items()})
            in_units = {id(m) for u in units.values() for m in u.modules()}
            self.rest = nn.ModuleList(m for m in self.by_name.values() if id(m) not in in_units)
        else:
            self.adapters = adapters

    def forward(self, x_sigma, sigma, cap_feats, cap_mask):
        return self.backbone.velocity(x_sigma, sigma, cap_feats, cap_mask, self.by_name)


class BlockUnit(nn.Module):
    """One transformer block's trainable copies: FSDP2's unit. Its forward runs the block (nextdit._runner
    calls it), so the unit's hooks gather its weights before the block and free them after it."""

    def __init__(self, modules: list[nn.Module]):
        super().__init__()
        self.mods = nn.ModuleList(modules)

    def forward(self, run, *args):
        return run(*args)


def _block_units(adapters) -> dict[str, BlockUnit]:
    """Block prefix ('layers.3', 'noise_refiner.0', ...) -> the unit of that block's adapter modules."""
    groups: dict[str, list[nn.Module]] = {}
    for name, mod in adapters.items():
        parts = name.split(".")
        if parts[0] in ("layers", "noise_refiner", "context_refiner") and len(parts) > 2:
            groups.setdefault(f"{parts[0]}.{parts[1]}", []).append(mod)
    return {prefix: BlockUnit(mods) for prefix, mods in groups.items()}


class Strategy:
    """How the micro-step runs over the processes: one process, DDP or FSDP2 (`name`).

    `module` is the step module (wrapped for DDP, sharded for FSDP2); `forward` is what the micro-step calls
    for the velocity (None: the backbone itself, one process); `units` are the FSDP2 block units the forward
    calls each block through (ForwardOptions.units).
    """

    name = "single"
    is_sharded = False  # the trained weights are split over the processes (no previews, no held-out loss)

    def __init__(self, module: nn.Module, units: dict[str, nn.Module] | None = None):
        self.module = module
        self.units = dict(units or {})

    @property
    def forward(self):
        return None

    def micro_step(self, is_last: bool):
        """Gradients are averaged across processes only on the last micro-step of an accumulated step."""
        return contextlib.nullcontext()

    def gathered(self):
        """Meanwhile every rank holds the whole trained weights (FSDP2 all-gathers them: a collective)."""
        return contextlib.nullcontext()


class DataParallel(Strategy):
    """Adapters replicated on every process; DDP averages their gradients in backward."""

    name = "ddp"

    @property
    def forward(self):
        return self.module

    def micro_step(self, is_last: bool):
        return contextlib.nullcontext() if is_last else self.module.no_sync()


class FullySharded(Strategy):
    """A full fine-tune sharded with FSDP2: one unit per transformer block, the rest in the step module."""

    name = "fsdp2"
    is_sharded = True

    @property
    def forward(self):
        return self.module

    def micro_step(self, is_last: bool):
        self.module.set_requires_gradient_sync(is_last)
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def gathered(self):
        from torch.distributed.fsdp import FSDPModule

        units = [m for m in self.module.modules() if isinstance(m, FSDPModule)]
        for unit in units:
            unit.unshard()
        try:
            yield
        finally:
            for unit in units:
                unit.reshard()


def build_strategy(backbone, adapters, cfg, world: World) -> Strategy:
    """The strategy for `world`: one process, DDP (adapters) or FSDP2 (a full fine-tune on several).

    FSDP2 shards the adapters' parameters in place (they become DTensors): build the optimizer afterwards.
    """
    if not world.is_distributed:
        return Strategy(StepModule(backbone, adapters))
    if not uses_sharding(cfg, world):
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [backbone.device.index] if backbone.device.type == "cuda" else None
        return DataParallel(DDP(StepModule(backbone, adapters), device_ids=ids))
    from torch.distributed.fsdp import fully_shard

    units = _block_units(adapters)
    for unit in units.values():
        fully_shard(unit)
    module = StepModule(backbone, adapters, units)
    fully_shard(module)
    return FullySharded(module, units)


def grad_norm_of(params: list[torch.Tensor], max_norm: float) -> float:
    """clip_grad_norm_ over (possibly sharded) gradients; the norm of every shard together, on every rank."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    full = getattr(norm, "full_tensor", None)  # DTensor under FSDP2
    return float(full() if full is not None else norm)


# ---------------------------------------------------------------- sharded checkpoints (DCP)

def uses_dcp(cfg, low_memory: bool) -> bool:
    """A full fine-tune with torch AdamW checkpoints through DCP (sharded on several processes, and
    loadable on any number); LoRA-family adapters and the low-memory optimizer keep the single-file form."""
    return kind_of(cfg.adapter).shards and not low_memory


def _state(adapters, optimizer, ema) -> dict:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(adapters, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    if ema is not None:
        state["ema"] = ema.state_dict()
    return state


def save_sharded(folder: Path, adapters, optimizer, ema=None) -> None:
    """Every rank writes its shards of the weights and optimizer states into `folder` (a collective)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    dcp.save(_state(adapters, optimizer, ema), checkpoint_id=str(folder), no_dist=not dist.is_initialized())


def load_sharded(folder: Path, adapters, optimizer, ema=None) -> None:
    """Load a DCP checkpoint written by any number of processes into this run's (sharded or whole) modules."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = _state(adapters, optimizer, ema)
    dcp.load(state, checkpoint_id=str(folder), no_dist=not dist.is_initialized())
    set_state_dict(adapters, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
