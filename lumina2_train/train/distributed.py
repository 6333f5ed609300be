"""Several processes under `torchrun`: who this process is, how the ranks agree, learning-rate scaling and
the settings that cannot run distributed. One process per GPU, NCCL on GPUs and gloo on the CPU; rank 0
writes every file (train/parallel.py wraps the step: DDP for adapters, FSDP2 for full fine-tunes).
A plain `python -m lumina2_train train` is a world of one and never touches torch.distributed.
No ComfyUI imports.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..adapters.kinds import kind_of
from ..config import RunConfig, TrainConfig
from ..errors import Lumina2TrainError

log = logging.getLogger(__name__)
SCALE_LR = ("none", "linear", "sqrt")


class StoppedByPeer(Lumina2TrainError):
    """Another process stopped the run (cancel, interrupt, non-finite loss); this one stopped with it."""


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.size > 1


def current_world() -> World:
    """This process's place in the initialised process group (a world of one when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def init_from_env() -> World:
    """Join the process group that torchrun describes (WORLD_SIZE > 1): NCCL with one GPU per process
    (cuda:LOCAL_RANK), gloo on the CPU. A run started without torchrun stays a world of one."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return current_world()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    else:
        dist.init_process_group("gloo")
    world = current_world()
    log.info("process %d of %d (%s)", world.rank, world.size, dist.get_backend())
    return world


def close_process_group(wait: bool = True) -> None:
    """Leave the process group; `wait`: first meet every rank (a rank tearing down while a peer still talks
    to it can abort in gloo). Pass False when a peer may be gone (after a failure of this rank alone)."""
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def device_of(world: World) -> torch.device:
    """The device this process trains on: its own GPU (cuda:LOCAL_RANK), else the CPU."""
    return torch.device("cuda", world.local_rank) if torch.cuda.is_available() else torch.device("cpu")


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def any_rank(flag: bool, world: World) -> bool:
    """True on every rank when `flag` is true on any rank (a collective: every rank must call it)."""
    if not world.is_distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_over_ranks(values: list[float], world: World) -> list[float]:
    """The mean of each value over the ranks (NaN anywhere stays NaN everywhere)."""
    if not world.is_distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return (t / world.size).tolist()


def broadcast_object(obj, world: World):
    """Rank 0's `obj` on every rank (a picklable value: a run folder, a temporary path)."""
    if not world.is_distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: World) -> None:
    if world.is_distributed:
        dist.barrier()


def effective_batch_size(train: TrainConfig, world: World) -> int:
    """Samples per optimizer step: batch_size × grad_accum × processes."""
    return train.batch_size * train.grad_accum * world.size


def lr_factor(train: TrainConfig, world: World) -> float:
    """train.scale_lr: 'none' 1, 'linear' the effective batch, 'sqrt' its square root."""
    n = effective_batch_size(train, world)
    return {"none": 1.0, "linear": float(n), "sqrt": math.sqrt(n)}[train.scale_lr]


def uses_sharding(cfg: RunConfig, world: World) -> bool:
    """FSDP2 shards a full fine-tune run on several processes; adapters are replicated (DDP)."""
    return world.is_distributed and kind_of(cfg.adapter).shards


def distributed_errors(cfg: RunConfig, world: World) -> list[str]:
    """Settings that cannot run on `world.size` processes, one line each with the fix."""
    if not world.is_distributed:
        return []
    t, out, n = cfg.train, [], world.size
    if t.optimizer_in_backward:
        out.append(f"train.optimizer_in_backward updates each weight before the gradients of the {n} processes "
                   "are averaged; turn it off (a sharded full fine-tune already splits the gradients)")
    if uses_sharding(cfg, world):
        if t.optimizer_states != "fp32" or t.optimizer != "adamw":
            out.append(f"train.optimizer_states '{t.optimizer_states}' / optimizer '{t.optimizer}': a full "
                       "fine-tune sharded with FSDP2 trains with optimizer 'adamw' and optimizer_states 'fp32' "
                       "(each process keeps only its shard of the moments)")
        if t.checkpointing == "auto":
            out.append("train.checkpointing 'auto' plans from extra forwards that a sharded full fine-tune cannot "
                       "run outside its step; choose 'on' or 'off'")
        if t.use_ema or t.rollout_probability > 0:
            out.append("train.use_ema / train.rollout_probability are not available for a sharded full "
                       "fine-tune yet; turn them off, or train on one process")
    return out


def log_batch_and_lr(train: TrainConfig, world: World) -> None:
    """Say how the effective batch and the learning rate follow from the settings (once, rank 0)."""
    if not world.is_main:
        return
    n = effective_batch_size(train, world)
    lr = train.lr * lr_factor(train, world)
    log.info("effective batch %d = batch_size %d × grad_accum %d × %d process(es); lr %.3g (train.lr %.3g, "
             "scale_lr '%s')", n, train.batch_size, train.grad_accum, world.size, lr, train.lr, train.scale_lr)
