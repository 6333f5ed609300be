"""Optimisers and learning-rate schedules by name (registries shared by validation, the UI and errors).

Optional packages are imported only when chosen; a missing one raises OptionalDependencyError naming the
pip command, and `check_available()` finds that out before any model loads. No ComfyUI imports.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from ..config import OPTIMIZERS as OPTIMIZER_NAMES
from ..config import TrainConfig
from ..errors import ConfigError, OptionalDependencyError


@dataclass(frozen=True)
class OptimizerSpec:
    build: Callable  # (params, cfg, device_type) -> torch.optim.Optimizer
    package: str = ""  # import name of the optional package ("" = torch only)
    pip: str = ""
    cuda_only: bool = False
    note: str = ""


def _import(name: str, feature: str, pip: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        raise OptionalDependencyError(name, feature, pip) from None


def _adamw(params, cfg: TrainConfig, device_type: str):
    return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             weight_decay=cfg.weight_decay, fused=device_type == "cuda" or None)


def _adamw_bf16(params, cfg: TrainConfig, device_type: str):
    optimi = _import("optimi", "train.optimizer 'adamw_bf16'", "torch-optimi")
    return optimi.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
                        kahan_sum=True)


def _adamw8bit(params, cfg: TrainConfig, device_type: str):
    bnb = _import("bitsandbytes", "train.optimizer 'adamw8bit'", "bitsandbytes")
    return bnb.optim.AdamW8bit(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                               weight_decay=cfg.weight_decay)


def _lion(params, cfg: TrainConfig, device_type: str):
    lion = _import("lion_pytorch", "train.optimizer 'lion'", "lion-pytorch")
    return lion.Lion(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def _prodigy(params, cfg: TrainConfig, device_type: str):
    prodigyopt = _import("prodigyopt", "train.optimizer 'prodigy'", "prodigyopt")
    return prodigyopt.Prodigy(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                              weight_decay=cfg.weight_decay, safeguard_warmup=cfg.warmup_steps > 0,
                              use_bias_correction=True)


def _stableadamw(params, cfg: TrainConfig, device_type: str):
    optimi = _import("optimi", "train.optimizer 'optimi-stableadamw'", "torch-optimi")
    return optimi.StableAdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                              weight_decay=cfg.weight_decay)


def _schedulefree(params, cfg: TrainConfig, device_type: str):
    sf = _import("schedulefree", "train.optimizer 'adamw_schedulefree'", "schedulefree")
    return sf.AdamWScheduleFree(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps)


def _adafactor(params, cfg: TrainConfig, device_type: str):
    from transformers.optimization import Adafactor

    return Adafactor(params, lr=cfg.lr, weight_decay=cfg.weight_decay, scale_parameter=False,
                     relative_step=False, warmup_init=False, beta1=cfg.betas[0] or None)


OPTIMIZERS: dict[str, OptimizerSpec] = {
    "adamw": OptimizerSpec(_adamw, note="torch AdamW, fused on CUDA"),
    "adamw_bf16": OptimizerSpec(_adamw_bf16, "optimi", "torch-optimi",
                                note="AdamW with Kahan-compensated updates for bf16 weights"),
    "adamw8bit": OptimizerSpec(_adamw8bit, "bitsandbytes", "bitsandbytes", cuda_only=True),
    "lion": OptimizerSpec(_lion, "lion_pytorch", "lion-pytorch"),
    "prodigy": OptimizerSpec(_prodigy, "prodigyopt", "prodigyopt", note="set train.lr to 1.0"),
    "optimi-stableadamw": OptimizerSpec(_stableadamw, "optimi", "torch-optimi"),
    "adamw_schedulefree": OptimizerSpec(_schedulefree, "schedulefree", "schedulefree",
                                        note="has its own warm-up; use scheduler 'constant'"),
    "adafactor": OptimizerSpec(_adafactor, note="transformers' Adafactor with a fixed lr"),
}
assert set(OPTIMIZERS) == set(OPTIMIZER_NAMES), "config.OPTIMIZERS and optim.OPTIMIZERS must agree"


def check_available(cfg: TrainConfig, device_type: str) -> None:
    """Raise before any model loads if the chosen optimiser cannot run here."""
    spec = OPTIMIZERS.get(cfg.optimizer)
    if spec is None:
        raise ConfigError(f"train.optimizer '{cfg.optimizer}' is unknown; choose one of {', '.join(OPTIMIZERS)}")
    if spec.package and importlib.util.find_spec(spec.package) is None:
        raise OptionalDependencyError(spec.package, f"train.optimizer '{cfg.optimizer}'", spec.pip)
    if spec.cuda_only and device_type != "cuda":
        raise ConfigError(f"train.optimizer '{cfg.optimizer}' runs only on a CUDA GPU (this run is on "
                          f"{device_type}). Choose 'adamw' or 'adamw_bf16'")


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: TrainConfig, device_type: str = "cpu"):
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ConfigError("adapter: nothing to train (no parameter requires a gradient). Check adapter.targets")
    check_available(cfg, device_type)
    return OPTIMIZERS[cfg.optimizer].build(params, cfg, device_type)


def set_optimizer_mode(optimizer, training: bool) -> None:
    """Schedule-free optimisers keep two weight sequences: switch to the averaged one to evaluate or save."""
    mode = getattr(optimizer, "train" if training else "eval", None)
    if callable(mode) and hasattr(optimizer, "eval"):
        mode()


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
