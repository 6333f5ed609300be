"""The one run orchestrator: `prepare(cfg, world) -> Plan`, `train(plan, backbone, cache, hooks) -> Result`,
`publish(plan, result)`.

The CLI (pipeline.run_training: weights and encoders from files) and the Train node (comfyui/train.py: ComfyUI's
MODEL, a cache built by a node) both run these three steps in this order; each keeps only how it gets its model and
cache and what it does with the result. Everything that can fail on a setting fails in `prepare`, before any
model loads. No ComfyUI imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .config import RunConfig
from .errors import ConfigError
from .publish.hub import hub_hooks, push_run
from .storage.paths import new_run_folder, relative_parts, writable_folder
from .train import Trainer, TrainHooks, TrainResult, combine_hooks
from .train.checkpoint import resolve_checkpoint
from .train.distributed import World, broadcast_object, device_of, distributed_errors
from .train.optim import check_available
from .train.trackers import check_trackers, tracker_hooks

Result = TrainResult  # what `train` returns: the adapters, losses, step, run folder, files written


@dataclass(frozen=True)
class Plan:
    """A checked run: its validated config, the processes and device it runs on, and where it writes."""

    cfg: RunConfig
    world: World
    device: torch.device
    run_dir: Path  # the run folder (a resumed run continues in its own)
    output: Path | None = None  # the adapter file; None: <run_dir>/<save.name>.safetensors


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def unique_run_dir(output_dir: str | Path, name: str) -> Path:
    """Create output_dir/name, or name_2, name_3, ... if taken: two runs never write into one folder.

    Raises:
        PathError: `name` is not a safe name (absolute, '..', reserved, ...; see storage/paths.py).
    """
    return new_run_folder(output_dir, relative_parts(name, "save.name")[-1])


def default_run_dir(cfg: RunConfig) -> Path:
    """A resumed run continues in its own folder; a new run gets a fresh one."""
    if cfg.resume_from:
        return resolve_checkpoint(cfg.resume_from).parent.parent  # <run>/checkpoints/step_N
    return unique_run_dir(cfg.save.output_dir, cfg.save.name)


def check_output_folders(cfg: RunConfig, *, output_what: str = "save.output_dir", cache: bool = True,
                         create: bool = True) -> None:
    """Every folder the run writes can be written, checked before any model loads (created unless `create` is
    off): the output folder (`output_what` names it: save.output_dir, or ComfyUI's output folder), the cache
    folder (`cache`), tracking.log_dir and, when resuming, the resumed run's folder and its subfolders.

    Raises:
        PathError: naming the setting, the folder, what is wrong (a file in its place, a parent that cannot be
            created, no permission, a read-only file system) and the fix.
    """
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


def prepare(cfg: RunConfig, world: World, *, device: torch.device | None = None, run_dir: Path | None = None,
            output: Path | None = None, output_what: str = "save.output_dir", check_cache: bool = True) -> Plan:
    """Check everything a run needs that no model is needed for, and pick its run folder (rank 0 picks; every
    process gets the same one).

    Raises:
        ConfigError: a setting is invalid, cannot run on `world`, or names an optimizer this device lacks.
        OptionalDependencyError: a chosen tracker's package is missing.
        PathError, CheckpointError: save.name is unsafe, a folder the run writes cannot be written (see
            check_output_folders; `output_what` names the output folder, `check_cache` off when the cache was
            written elsewhere), resume_from holds no checkpoint.
    """
    cfg = cfg.validate()
    device = device or (device_of(world) if world.is_distributed else pick_device())
    errors = distributed_errors(cfg, world)
    if errors:
        raise ConfigError(errors)
    check_available(cfg.train, device.type)
    check_trackers(cfg)  # a missing tensorboard / wandb fails here, before any model loads
    if world.is_main:
        check_output_folders(cfg, output_what=output_what, cache=check_cache)
    run_dir = broadcast_object((run_dir or default_run_dir(cfg)) if world.is_main else None, world)
    return Plan(cfg, world, device, Path(run_dir), Path(output) if output else None)


def train(plan: Plan, backbone, cache, hooks: TrainHooks | None = None, *, decode=None,
          workflow: dict | None = None) -> Result:
    """Train `plan` on `backbone` from `cache`; the trackers of cfg.tracking and the checkpoint uploads of
    cfg.hub join `hooks` on rank 0 (trackers and uploads belong to it), and are closed when the run ends."""
    def run(all_hooks: TrainHooks | None) -> Result:
        return Trainer(plan.cfg, backbone, cache, all_hooks, run_dir=plan.run_dir, lora_path=plan.output,
                       decode=decode, workflow=workflow).run()

    if not plan.world.is_main:
        return run(hooks)
    tracking, close = tracker_hooks(plan.cfg, plan.run_dir)
    try:
        return run(combine_hooks(hooks, tracking, hub_hooks(plan.cfg)))
    finally:
        close()


def publish(plan: Plan, result: Result) -> None:
    """With hub.push, upload the run folder (model card included) from rank 0.

    Raises:
        HubError: the upload failed; every local file is written by then.
    """
    if plan.cfg.hub.push and plan.world.is_main:
        push_run(plan.cfg, result)


__all__ = ["Plan", "Result", "check_output_folders", "default_run_dir", "pick_device", "prepare", "publish", "train", "unique_run_dir"]
