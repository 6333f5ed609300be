"""The headless pipeline: dataset -> cache -> train -> adapter file, from a RunConfig and local weight files.

The CLI's `train` and `demo` commands run this: the models and the cache come from files here, the run itself is
run.py's prepare -> train -> publish, as for the Train node (comfyui/train.py). No ComfyUI imports.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import torch

from . import run
from .backbones.quant import quantize_base
from .cache import build_cache
from .config import RunConfig, parse_block_spec
from .data import scan_dataset
from .encoders.hf import HFEncoders
from .errors import ConfigError
from .files.loading import layer_count, load_backbone
from .train import TrainHooks, TrainResult
from .train import distributed as dist
from .train.recipe_choice import choose_recipe
from .train.validation import cached_negative, named_prompts

log = logging.getLogger(__name__)


def check_model_paths(cfg: RunConfig) -> None:
    """Every weight path named in the config exists, and adapter.blocks fits the transformer's layers (checked
    before anything loads)."""
    problems = []
    for field in ("transformer", "text_encoder", "vae"):
        value = getattr(cfg.model, field)
        if not value:
            problems.append(f"model.{field} is empty; give the path of the local weights")
        elif not Path(value).exists():
            problems.append(f"model.{field} '{value}' does not exist; check the path")
    problems += _lora_file_problems("adapter.init_from", cfg.adapter.init_from)
    problems += _lora_file_problems("adapter.training_adapter", cfg.adapter.training_adapter)
    if not problems:
        problems += _block_problems(cfg)
    if problems:
        raise ConfigError(problems)


def _lora_file_problems(field: str, value: str) -> list[str]:
    """A LoRA file setting (adapter.init_from, adapter.training_adapter) names an existing file, and a .safetensors
    one has a readable header (no tensor loads)."""
    if not value:
        return []
    p = Path(value)
    if not p.exists():
        return [f"{field} '{value}' does not exist; check the path"]
    if p.is_dir():
        return [f"{field} '{value}' is a folder where a file is expected; give the LoRA .safetensors file"]
    if p.suffix == ".safetensors":
        from safetensors import safe_open

        from .files.weights_errors import FIXES, problem

        try:
            with safe_open(str(p), framework="pt") as f:
                f.keys()
        except Exception as e:  # safetensors raises its own error types for bad headers
            return [f"{field} '{value}' {problem(e)} ({str(e)[:200]}). {FIXES[field]}"]
    return []


def _block_problems(cfg: RunConfig) -> list[str]:
    """adapter.blocks against the layers of model.transformer, read from its config or header (nothing loads)."""
    n = layer_count(cfg.model.transformer) if cfg.adapter.blocks.strip() != "all" else None
    if n is None:
        return []
    try:
        parse_block_spec(cfg.adapter.blocks, n)
    except ValueError as e:
        return [f"adapter.blocks {e}: model.transformer {cfg.model.transformer} has {n} layers (0-{n - 1}). "
                "Choose indices in that range, or 'all'"]
    return []


def load_base(cfg: RunConfig, device: torch.device):
    """The DiT on `device`. With an 8-bit base and quantize_via 'cpu' it is stored in 8 bits before it moves,
    so the device never holds the full-precision weights (a full fine-tune then copies the rounded base)."""
    fmt = cfg.model.storage_format
    if fmt == "no_change" or cfg.model.quantize_via != "cpu" or device.type == "cpu":
        return load_backbone(cfg.model.transformer, cfg.model.dtype, device)
    backbone = load_backbone(cfg.model.transformer, cfg.model.dtype, "cpu")
    quantize_base(backbone, fmt)
    backbone.tree.to(device)
    return backbone


def build_training_cache(cfg: RunConfig, encoders, cache_root: Path,
                         progress: Callable[[int, int], None] | None = None):
    """Scan the datasets (strict policy check) and build or reuse the fingerprinted cache, its prompts in the
    format of the text encoder's family (Gemma2: Lumina2, Qwen3: Z-Image)."""
    dataset = scan_dataset(cfg.data).require_usable()
    named = [p for _, p in named_prompts(cfg.validation)]
    prompts = [*named, *cached_negative(cfg.validation.negative_prompt)] if named else []
    return build_cache(dataset, encoders, cfg.cache, root=cache_root, extra_prompts=prompts, progress=progress,
                       family=encoders.text_family)


def run_training(cfg: RunConfig, *, run_dir: Path | None = None, hooks: TrainHooks | None = None,
                 progress: Callable[[int, int], None] | None = None, device: torch.device | None = None,
                 lora_path: Path | None = None) -> TrainResult:
    """Validate, cache (encoders load only on a miss, then are released), load the DiT and train.

    The trackers of `cfg.tracking` and the checkpoint uploads of `cfg.hub` join `hooks`; with `hub.push` the run
    folder (model card included) is uploaded at the end, and a failed upload raises HubError after every local
    file is written.

    Under torchrun (WORLD_SIZE > 1) this process joins the process group and trains on its own GPU; rank 0
    picks the run folder, builds the cache (the others then find every entry) and alone writes files.
    """
    cfg.validate()
    check_model_paths(cfg)
    world = dist.init_from_env()
    plan = run.prepare(cfg, world, device=device, run_dir=run_dir, output=lora_path)
    cfg, device = plan.cfg, plan.device
    encoders = HFEncoders.from_paths(cfg.model.text_encoder, cfg.model.vae, cfg.model.tokenizer, device=device,
                                     numerics=cfg.model.text_encoder_numerics)
    cache_root = Path(cfg.cache.dir) if cfg.cache.dir else Path(cfg.save.output_dir) / "cache"
    if not world.is_main:
        dist.barrier(world)  # rank 0 encodes what is missing first
    cache = build_training_cache(cfg, encoders, cache_root, progress if world.is_main else None)
    if world.is_main:
        dist.barrier(world)
    encoders.release()
    backbone = load_base(cfg, device)
    cache.require_family(backbone.arch.family, "model.transformer")
    # the member's recipe fills the timestep / sampler settings left at their defaults (Z-Image: model.variant)
    cfg = choose_recipe(cfg, backbone.arch, source=cfg.model.transformer, where="model.transformer")
    plan = dataclasses.replace(plan, cfg=cfg)

    def decode(latents: torch.Tensor) -> torch.Tensor:
        return encoders.latent_encoder().decode(latents.to(device)).float().cpu()

    try:
        result = run.train(plan, backbone, cache, hooks,
                           decode=decode if (cfg.validation.prompts or cfg.validation.prompt_library) else None)
    finally:
        encoders.release()
    run.publish(plan, result)
    return result
