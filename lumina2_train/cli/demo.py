"""`demo`: the whole pipeline on the bundled demo data, with tiny Lumina2-shaped models that can show learning.

demo models (tiny/demo_models.py: a hand-built colour VAE, a tiny DiT pre-trained to draw flat colours) ->
cache -> train a LoRA -> LoRA file in ComfyUI format -> before/after sample grid PNG, per-prompt colour error
(colour_errors.json) -> loss curve PNG.
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
    p.add_argument("--steps", type=int, default=600, help="optimizer steps of the LoRA (default 600)")
    p.add_argument("--seed", type=int, default=0, help="seed of the tiny models and the run")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1: the models are so "
                   "small that more threads mostly wait on each other)")


def demo_config(out: Path, models: dict, dataset: Path, steps: int, seed: int):
    """The demo's LoRA run. No system prompt ('none': the tiny tokenizer would make the official one ~80
    tokens, five times the 16 image tokens); a static shift of 6 in training and sampling puts the steps at the
    high noise levels where the caption decides what is drawn."""
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
        cache=CacheConfig(dir=str(out / "cache"), system_prompt="none"),
        adapter=AdapterConfig(rank=16, alpha=16.0, targets=("attention", "ffn", "adaln")),
        train=TrainConfig(steps=steps, batch_size=4, lr=4e-3, scheduler="cosine", precision="fp32", checkpointing="off", seed=seed,
                          warmup_steps=5, caption_dropout=0.1, shift_mode="static", static_shift=6.0),
        validation=ValidationConfig(prompts=VALIDATION_PROMPTS, width=64, height=64, steps=16, shift=6.0,
                                    guidance=1.0, seed=seed),
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


def report_colours(validations, dataset: Path, path: Path) -> dict:
    """Log and write (JSON) each prompt's colour error before and after training (demo.colour_errors)."""
    from ..demo import colour_errors

    first, last = validations[0], validations[-1]
    before = colour_errors(first.images, first.prompts, dataset)
    after = colour_errors(last.images, last.prompts, dataset)
    log.info("colour error per prompt (distance of the sample's mean colour from its training image's, "
             "0-255 RGB; measured):")
    for prompt, b, a in zip(first.prompts, before, after):
        log.info("  %-50s before %6.1f  after %6.1f", prompt, b, a)
    errors = {p: {"before": round(b, 2), "after": round(a, 2)} for p, b, a in zip(first.prompts, before, after)}
    path.write_text(json.dumps(errors, indent=2))
    return errors


def run(args: argparse.Namespace) -> int:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(max(args.threads, 1))
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)  # a caller's own setting (tests run the demo in-process)


def _run(args: argparse.Namespace) -> int:
    from ..config import to_dict
    from ..demo import write_demo_dataset
    from ..pipeline import run_training
    from ..plot import plot_losses
    from ..tiny.demo_models import write_demo_models
    from .progress import tqdm_hooks, tqdm_progress

    out = Path(args.output).resolve()
    from ..storage.paths import writable_folder

    writable_folder(out, what="demo --output")
    log.info("Demo: TINY Lumina2-shaped models (a 2-layer DiT 96 wide, a 2-layer Gemma2 32 wide, a hand-built "
             "VAE that stores 8x8-pixel block colours). The DiT starts random and is first pre-trained to draw "
             "flat colours; the LoRA then learns the demo set's shapes and colours. For real weights see README "
             "'Train from a config'.")
    models = write_demo_models(out / "models", seed=args.seed)
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
    report_colours(result.validations, dataset, out / "colour_errors.json")
    plot_losses(result.losses, title="demo: training loss").save(out / "loss.png")
    log.info("LoRA (ComfyUI format): %s", result.lora_path)
    log.info("before/after samples:  %s (top: the pre-trained base, flat colours; bottom: with the LoRA)", grid)
    log.info("colour errors:         %s", out / "colour_errors.json")
    log.info("loss curve:            %s", out / "loss.png")
    log.info("run folder:            %s (config.json, checkpoints/, samples/)", result.run_dir)
    log.info("The same run from its config: python -m lumina2_train train %s", out / "demo_config.json")
    return 0
