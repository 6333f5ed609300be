"""Optimisers and learning-rate schedules by name (registries shared by validation, the UI and errors).

Optional packages are imported only when chosen; a missing one raises OptionalDependencyError naming the
pip command. No ComfyUI imports.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from ..config import TrainConfig
from ..errors import ConfigError


def _adamw(params, cfg: TrainConfig, device_type: str):
    return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             weight_decay=cfg.weight_decay, fused=device_type == "cuda" or None)


OPTIMIZERS: dict[str, Callable] = {"adamw": _adamw}


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: TrainConfig, device_type: str = "cpu"):
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ConfigError("adapter: nothing to train (no parameter requires a gradient). Check adapter.targets")
    if cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer '{cfg.optimizer}' is not available in this version; "
                          f"choose one of {', '.join(sorted(OPTIMIZERS))}")
    return OPTIMIZERS[cfg.optimizer](params, cfg, device_type)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of cfg.lr after `step` optimizer steps (0-based), warm-up included."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / (cfg.warmup_steps + 1)
    if cfg.scheduler in ("constant", "constant_with_warmup"):
        return 1.0
    span = max(cfg.steps - cfg.warmup_steps, 1)
    progress = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    floor = cfg.min_lr_ratio
    if cfg.scheduler == "linear":
        return floor + (1 - floor) * (1 - progress)
    if cfg.scheduler == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.scheduler == "cosine_with_restarts":
        cycle = (progress * cfg.num_cycles) % 1.0 if progress < 1.0 else 1.0
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * cycle))
    if cfg.scheduler == "polynomial":
        return floor + (1 - floor) * (1 - progress) ** cfg.power
    raise ConfigError(f"train.scheduler '{cfg.scheduler}' is unknown")


def build_scheduler(optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
