"""A run's set-up, built once before the first step: adapters on the backbone, the parallelism strategy, the
optimizer and its schedule, the EMA, the batches without the held-out items, and the activation-checkpointing
planner. The Trainer (train/loop.py) holds it; resume loads into its objects, nothing replaces them.
No ComfyUI imports.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..adapters import AdapterSet, build_adapters
from ..cache.source import CacheSource
from ..config import RunConfig
from ..errors import ConfigError
from ..files.init_from import load_init_from
from ..files.training_adapter import load_training_adapter
from .batches import BucketBatches
from .distributed import World, distributed_errors, log_batch_and_lr, lr_factor
from .ema import EMA
from .evaluation import ClipScorer, holdout_indices
from .lowmem import build_low_memory, uses_low_memory_adamw
from .optim import build_optimizer, build_scheduler, set_optimizer_mode
from .parallel import Strategy, build_strategy, uses_dcp
from .resume import data_order
from .speed import CheckpointPlanner, forward_options, prepare_base, recompile_limit


@dataclass(frozen=True)
class RunSetup:
    """What a run trains with; its objects change as it trains, the set-up itself never."""

    adapters: AdapterSet
    strategy: Strategy  # one process, DDP or FSDP2 (train/parallel.py)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    release: object | None  # gradient release (train.optimizer_in_backward): the update runs in backward
    sharded_checkpoints: bool  # checkpoints through DCP (a full fine-tune with torch AdamW)
    ema: EMA | None
    scorer: ClipScorer | None  # validation.evaluation_type 'clip'
    batches: BucketBatches  # the trained items (the held-out ones taken out)
    holdout: list[int]  # validation.eval_holdout's items
    data_order: str  # what a checkpoint's data position points at (train/resume.py)
    planner: CheckpointPlanner  # train.checkpointing 'auto'
    base_hash: str  # the frozen base's fingerprint (after its storage format was applied)
    recompile_limit: int  # dynamo's limit inside the compiled step (speed.compiled_region); 0: not compiled


def build_setup(cfg: RunConfig, backbone, cache: CacheSource, world: World, dtype: torch.dtype) -> RunSetup:
    """Build the set-up of `cfg` on `backbone` and `cache` for this process of `world`; the backbone's
    ForwardOptions and base storage are set for the run here.

    Raises:
        ConfigError: a setting cannot run on `world.size` processes, or the base precision is unavailable.
    """
    errors = distributed_errors(cfg, world)
    if errors:
        raise ConfigError(errors)
    device = backbone.device
    if cfg.adapter.training_adapter:  # under the adapters from the first forward on; part of the base hash
        backbone.training_adapter = load_training_adapter(cfg.adapter.training_adapter, backbone)
    adapters = build_adapters(backbone, cfg.adapter, device, seed=cfg.train.seed)
    if cfg.adapter.init_from:
        load_init_from(adapters, backbone, cfg.adapter.init_from)
    v, t = cfg.validation, cfg.train
    holdout = holdout_indices(len(cache), v.eval_holdout, t.seed)
    buckets = _trained_buckets(cache, set(holdout))
    order = data_order(cache, buckets)
    prepare_base(backbone, cfg)
    strategy = build_strategy(backbone, adapters, cfg, world)  # FSDP2 shards the adapters in place here
    backbone.options = forward_options(backbone, cfg, strategy.units)
    optimizer, release, scheduler = _optimizer(cfg, adapters, world, device)
    ema = EMA(adapters, t.ema_decay, t.ema_every_n_steps, t.ema_on_cpu) if t.use_ema else None
    scorer = ClipScorer(v.clip_model, device) if v.evaluation_type == "clip" else None
    return RunSetup(adapters, strategy, optimizer, scheduler, release,
                    uses_dcp(cfg, uses_low_memory_adamw(t)), ema, scorer, _batches(cfg, cache, buckets, world),
                    holdout, order, CheckpointPlanner(backbone, cfg, dtype), backbone.base_fingerprint(),
                    recompile_limit(cfg, device, len(buckets)))


def _trained_buckets(cache: CacheSource, held: set[int]) -> dict:
    buckets = {b: [i for i in idxs if i not in held] for b, idxs in cache.buckets().items()}
    return {b: idxs for b, idxs in buckets.items() if idxs}


def _optimizer(cfg: RunConfig, adapters: AdapterSet, world: World, device: torch.device):
    """(optimizer at lr × the train.scale_lr factor (logged), its gradient release or None, its schedule)."""
    train = dataclasses.replace(cfg.train, lr=cfg.train.lr * lr_factor(cfg.train, world))
    log_batch_and_lr(cfg.train, world)
    release = None
    if uses_low_memory_adamw(train):
        optimizer, release = build_low_memory(adapters.parameters(), train)
    else:
        optimizer = build_optimizer(adapters.parameters(), train, device.type)
    scheduler = build_scheduler(optimizer, cfg.train)
    set_optimizer_mode(optimizer, training=True)
    return optimizer, release, scheduler


def _batches(cfg: RunConfig, cache: CacheSource, buckets: dict, world: World) -> BucketBatches:
    t = cfg.train
    repeats = {i: cache.repeats(i) for idxs in buckets.values() for i in idxs}
    group = t.group_by_caption_length and t.batch_size * world.size > 1
    lengths = {i: cache.caption_length(i) for i in repeats} if group else None
    return BucketBatches(buckets, repeats, t.batch_size, t.seed, world_size=world.size, caption_lengths=lengths)
