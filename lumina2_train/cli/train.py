"""`train CONFIG` / `train --simpletuner config.json`: run a TOML/JSON run config, or a SimpleTuner config.json
with its multidatabackend.json, against local weights (diffusers folder or ComfyUI files). Under
`torchrun --nproc_per_node N -m lumina2_train train CONFIG` each process trains on its own GPU
(docs/distributed.md)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("lumina2_train")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="a .toml or .json run config (see docs/cli.md)")
    p.add_argument("--simpletuner", metavar="CONFIG_JSON", help="import a SimpleTuner config.json and its "
                   "data_backend_config instead, reporting every key (docs/simpletuner.md)")
    p.add_argument("--resume", metavar="PATH", help="continue from a run folder or checkpoint folder")
    p.add_argument("--steps", type=int, help="override train.steps")
    p.add_argument("--check", action="store_true", help="validate the config and the dataset, then stop")


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from ..pipeline import check_model_paths, run_training
    from ..train import distributed as dist
    from .progress import tqdm_hooks, tqdm_progress

    cfg = _load(args)
    if args.steps:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=args.steps))
    if args.resume:
        cfg = dataclasses.replace(cfg, resume_from=str(Path(args.resume).resolve()))
    cfg.validate()
    check_model_paths(cfg)
    if args.check:
        from ..run import check_output_folders

        check_output_folders(cfg, create=False)  # a check leaves nothing behind; a run creates them
        from ..data import scan_dataset

        handle = scan_dataset(cfg.data).require_usable()
        log.info("config and dataset are usable: %d images", len(handle.items))
        return 0
    world = dist.init_from_env()  # under torchrun: one process per GPU, rank 0 reports and writes
    if not world.is_main:
        log.setLevel(logging.WARNING)
    hooks, close_bar = tqdm_hooks(cfg.train.steps) if world.is_main else (None, lambda: None)
    progress, close_progress = tqdm_progress("cache")
    ok = False
    try:
        result = run_training(cfg, hooks=hooks, progress=progress)
        ok = True
    finally:
        close_progress()
        close_bar()
        dist.close_process_group(wait=ok)
    log.info("LoRA: %s (step %d); run folder: %s", result.lora_path, result.step, result.run_dir)
    return 0


def _load(args: argparse.Namespace):
    """The RunConfig from CONFIG, or imported from --simpletuner (the key report is logged)."""
    from ..config import load_run_config
    from ..errors import ConfigError

    if bool(args.config) == bool(args.simpletuner):
        raise ConfigError("train: give either a run config or --simpletuner config.json (got "
                          f"{'both' if args.config else 'neither'}). See docs/cli.md")
    if args.config:
        return load_run_config(args.config)
    from ..simpletuner import import_simpletuner

    cfg, report = import_simpletuner(args.simpletuner)
    log.info("%s", report.as_text())
    return cfg
