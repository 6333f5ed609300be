"""The headless pipeline: dataset -> cache -> train -> LoRA, from a RunConfig and local weight files.

The CLI's `train` and `demo` commands run this; the ComfyUI nodes run the same stages with ComfyUI's
models instead of files. No ComfyUI imports.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from .backbones import family
from .config import RunConfig
from .errors import ConfigError
from .train import TrainHooks, TrainResult, train_lora

log = logging.getLogger(__name__)


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def unique_run_dir(output_dir: str | Path, name: str) -> Path:
    """Create output_dir/name, or name_2, name_3, ... if taken: two runs never write into one folder.

    Raises:
        PathError: `name` is not a safe name (absolute, '..', reserved, ...; see paths.py).
    """
    from .storage.paths import new_run_folder, relative_parts

    return new_run_folder(output_dir, relative_parts(name, "save.name")[-1])


def default_run_dir(cfg: RunConfig) -> Path:
    """A resumed run continues in its own folder; a new run gets a fresh one."""
    if cfg.resume_from:
        from .train.checkpoint import resolve_checkpoint

        return resolve_checkpoint(cfg.resume_from).parent.parent  # <run>/checkpoints/step_N
    return unique_run_dir(cfg.save.output_dir, cfg.save.name)


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
    problems += _init_from_problems(cfg.adapter.init_from)
    if not problems:
        problems += _block_problems(cfg)
    if problems:
        raise ConfigError(problems)


def _init_from_problems(value: str) -> list[str]:
    """adapter.init_from is an existing file, and a .safetensors one has a readable header (no tensor loads)."""
    if not value:
        return []
    p = Path(value)
    if not p.exists():
        return [f"adapter.init_from '{value}' does not exist; check the path"]
    if p.is_dir():
        return [f"adapter.init_from '{value}' is a folder where a file is expected; give the LoRA .safetensors file"]
    if p.suffix == ".safetensors":
        from safetensors import safe_open

        from .files.weights_errors import FIXES, problem

        try:
            with safe_open(str(p), framework="pt") as f:
                f.keys()
        except Exception as e:  # safetensors raises its own error types for bad headers
            return [f"adapter.init_from '{value}' {problem(e)} ({str(e)[:200]}). {FIXES['adapter.init_from']}"]
    return []


def _block_problems(cfg: RunConfig) -> list[str]:
    """adapter.blocks against the layers of model.transformer, read from its config or header (nothing loads)."""
    from .backbones.loading import layer_count
    from .config import parse_block_spec

    n = layer_count(cfg.model.transformer) if cfg.adapter.blocks.strip() != "all" else None
    if n is None:
        return []
    try:
        parse_block_spec(cfg.adapter.blocks, n)
    except ValueError as e:
        return [f"adapter.blocks {e}: model.transformer {cfg.model.transformer} has {n} layers (0-{n - 1}). "
                "Choose indices in that range, or 'all'"]
    return []


def check_output_folders(cfg: RunConfig, *, output_what: str = "save.output_dir", cache: bool = True,
                         create: bool = True) -> None:
    """Every folder the run writes can be written, checked before any model loads (created unless `create` is
    off): the output folder (`output_what` names it: save.output_dir, or ComfyUI's output folder), the cache
    folder (`cache`), tracking.log_dir and, when resuming, the resumed run's folder and its subfolders.

    Raises:
        PathError: naming the setting, the folder, what is wrong (a file in its place, a parent that cannot be
            created, no permission, a read-only file system) and the fix.
    """
    from .storage.paths import writable_folder

    writable_folder(cfg.save.output_dir, what=output_what, create=create)
    if cache:
        if cfg.cache.dir:
            writable_folder(cfg.cache.dir, what="cache.dir", create=create)
        else:
            writable_folder(Path(cfg.save.output_dir) / "cache", what=f"{output_what} (its cache/ folder; or set "
                            "cache.dir)", create=create)
    if cfg.tracking.log_dir:
        writable_folder(cfg.tracking.log_dir, what="tracking.log_dir", create=create)
    if cfg.resume_from:
        run_dir = default_run_dir(cfg)  # the checkpoint's run folder: the resumed run writes there
        for sub in ("checkpoints", "loras", "samples", "logs"):
            writable_folder(run_dir / sub, what=f"resume_from (the resumed run writes in {run_dir})", create=False)


def load_base(cfg: RunConfig, device: torch.device):
    """The DiT on `device`. With an 8-bit base and quantize_via 'cpu' it is stored in 8 bits before it moves,
    so the device never holds the full-precision weights (a full fine-tune then copies the rounded base)."""
    from .backbones.loading import load_backbone
    from .backbones.quant import quantize_base

    fmt = cfg.model.storage_format
    if fmt == "no_change" or cfg.model.quantize_via != "cpu" or device.type == "cpu":
        return load_backbone(cfg.model.transformer, cfg.model.dtype, device)
    backbone = load_backbone(cfg.model.transformer, cfg.model.dtype, "cpu")
    quantize_base(backbone, fmt)
    backbone.tree.to(device)
    return backbone


def build_training_cache(cfg: RunConfig, encoders, cache_root: Path,
                         progress: Callable[[int, int], None] | None = None):
    """Scan the datasets (strict policy check) and build or reuse the fingerprinted cache."""
    from .cache import build_cache
    from .data import scan_dataset

    dataset = scan_dataset(cfg.data).require_usable()
    from .train.validation import cached_negative, named_prompts

    named = [p for _, p in named_prompts(cfg.validation)]
    prompts = [*named, *cached_negative(cfg.validation.negative_prompt)] if named else []
    return build_cache(dataset, encoders, cfg.cache, root=cache_root, extra_prompts=prompts, progress=progress)


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
    from .encoders.hf import HFEncoders
    from .train import distributed as dist
    from .train.optim import check_available
    from .train.trackers import check_trackers

    cfg.validate()
    check_model_paths(cfg)
    world = dist.init_from_env()
    device = device or (dist.device_of(world) if world.is_distributed else pick_device())
    if dist.distributed_errors(cfg, world):
        raise ConfigError(dist.distributed_errors(cfg, world))
    check_available(cfg.train, device.type)
    check_trackers(cfg)
    if world.is_main:
        check_output_folders(cfg)
    run_dir = dist.broadcast_object((run_dir or default_run_dir(cfg)) if world.is_main else None, world)
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
    family.require_recipe(backbone.arch, "model.transformer")

    def decode(latents: torch.Tensor) -> torch.Tensor:
        return encoders.latent_encoder().decode(latents.to(device)).float().cpu()

    try:
        result = _train_with_trackers(cfg, backbone, cache, hooks, run_dir=run_dir, lora_path=lora_path,
                                      decode=decode if (cfg.validation.prompts or cfg.validation.prompt_library)
                                      else None)
    finally:
        encoders.release()
    if cfg.hub.push and world.is_main:
        from .publish.hub import push_run

        push_run(cfg, result)
    return result


def _train_with_trackers(cfg: RunConfig, backbone, cache, hooks: TrainHooks | None, *, run_dir: Path,
                         **kwargs) -> TrainResult:
    """train_lora with the tracker and hub-checkpoint hooks of the config added to `hooks`."""
    from .publish.hub import hub_hooks
    from .train import combine_hooks
    from .train.distributed import current_world
    from .train.trackers import tracker_hooks

    if not current_world().is_main:  # trackers and uploads belong to rank 0
        return train_lora(cfg, backbone, cache, hooks, run_dir=run_dir, **kwargs)
    tracking, close = tracker_hooks(cfg, run_dir)
    try:
        return train_lora(cfg, backbone, cache, combine_hooks(hooks, tracking, hub_hooks(cfg)), run_dir=run_dir,
                          **kwargs)
    finally:
        close()
