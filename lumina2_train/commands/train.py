"""`train CONFIG`: run a TOML/JSON run config against local weights (diffusers folder or ComfyUI files)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("lumina2_train")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="a .toml or .json run config (see docs/cli.md)")
    p.add_argument("--resume", metavar="PATH", help="continue from a run folder or checkpoint folder")
    p.add_argument("--steps", type=int, help="override train.steps")
    p.add_argument("--check", action="store_true", help="validate the config and the dataset, then stop")


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from ..config import load_run_config
    from ..pipeline import check_model_paths, run_training
    from .progress import tqdm_hooks, tqdm_progress

    cfg = load_run_config(args.config)
    if args.steps:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=args.steps))
    if args.resume:
        cfg = dataclasses.replace(cfg, resume_from=str(Path(args.resume).resolve()))
    cfg.validate()
    check_model_paths(cfg)
    if args.check:
        from ..data import scan_dataset

        handle = scan_dataset(cfg.data).require_usable()
        log.info("config and dataset are usable: %d images", len(handle.items))
        return 0
    hooks, close_bar = tqdm_hooks(cfg.train.steps)
    progress, close_progress = tqdm_progress("cache")
    try:
        result = run_training(cfg, hooks=hooks, progress=progress)
    finally:
        close_progress()
        close_bar()
    log.info("LoRA: %s (step %d); run folder: %s", result.lora_path, result.step, result.run_dir)
    return 0
