"""`demo`: the whole pipeline on the bundled demo data with tiny random Lumina2-shaped models.

cache -> train -> LoRA file in ComfyUI format -> before/after sample grid PNG -> loss curve PNG. The models
are tiny and random: the run proves the machinery, it does not learn to draw.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger("lumina2_train")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", default="lumina2_demo", help="folder for models, data, cache and results "
                   "(default ./lumina2_demo)")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps (default 60)")
    p.add_argument("--seed", type=int, default=0, help="seed of the tiny models and the run")


def demo_config(out: Path, models: dict, dataset: Path, steps: int, seed: int):
    from ..config import (
        AdapterConfig,
        CacheConfig,
        DataConfig,
        DatasetConfig,
        ModelConfig,
        RunConfig,
        SaveConfig,
        TrainConfig,
        ValidationConfig,
    )
    from ..demo import VALIDATION_PROMPTS

    return RunConfig(
        data=DataConfig(datasets=(DatasetConfig(path=str(dataset), resolution=64, min_size_px=32),), seed=seed),
        model=ModelConfig(transformer=str(models["transformer"]), text_encoder=str(models["text_encoder"]),
                          tokenizer=str(models["tokenizer"]), vae=str(models["vae"]), dtype="fp32"),
        cache=CacheConfig(dir=str(out / "cache")),
        adapter=AdapterConfig(rank=8, alpha=8.0, targets=("attention", "ffn", "adaln")),
        train=TrainConfig(steps=steps, batch_size=2, lr=2e-3, precision="fp32", checkpointing="off", seed=seed,
                          warmup_steps=5, caption_dropout=0.1),
        validation=ValidationConfig(prompts=VALIDATION_PROMPTS, width=64, height=64, steps=12, seed=seed),
        save=SaveConfig(output_dir=str(out / "runs"), name="demo_lora", every_n_steps=max(steps // 2, 1)),
    )


def before_after(validations, path: Path) -> Path:
    """Top row: samples before training; bottom row: after. Labelled."""
    import torch
    from PIL import ImageDraw

    from ..train.validation import image_grid

    before, after = validations[0].images, validations[-1].images
    grid = image_grid(torch.cat([before, after]), columns=len(before))
    scale = max(1, 256 // grid.height)
    grid = grid.resize((grid.width * scale, grid.height * scale), resample=0)
    draw = ImageDraw.Draw(grid)
    draw.text((4, 2), "before", fill=(255, 0, 255))
    draw.text((4, grid.height // 2 + 2), "after", fill=(255, 0, 255))
    grid.save(path)
    return path


def run(args: argparse.Namespace) -> int:
    from ..config import to_dict
    from ..demo import write_demo_dataset
    from ..pipeline import run_training
    from ..plot import plot_losses
    from ..tiny import write_tiny_diffusers
    from .progress import tqdm_hooks, tqdm_progress

    out = Path(args.output).resolve()
    from ..storage.paths import writable_folder

    writable_folder(out, what="demo --output")
    log.info("Demo: tiny RANDOM Lumina2-shaped models (a 2-layer DiT, a 2-layer Gemma2, a small Flux-shaped VAE).")
    log.info("They run the real pipeline end to end but cannot draw; for real weights see README 'Train from a "
             "config'.")
    models = write_tiny_diffusers(out / "models", seed=args.seed)
    dataset = write_demo_dataset(out / "dataset")
    cfg = demo_config(out, models, dataset, args.steps, args.seed)
    (out / "demo_config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    hooks, close_bar = tqdm_hooks(cfg.train.steps)
    progress, close_progress = tqdm_progress("cache")
    try:
        result = run_training(cfg, run_dir=out / "run", hooks=hooks, progress=progress)
    finally:
        close_progress()
        close_bar()
    grid = before_after(result.validations, out / "before_after.png")
    plot_losses(result.losses, title="demo: training loss").save(out / "loss.png")
    log.info("LoRA (ComfyUI format): %s", result.lora_path)
    log.info("before/after samples:  %s", grid)
    log.info("loss curve:            %s", out / "loss.png")
    log.info("run folder:            %s (config.json, checkpoints/, samples/)", result.run_dir)
    log.info("The same run from its config: python -m lumina2_train train %s", out / "demo_config.json")
    return 0
