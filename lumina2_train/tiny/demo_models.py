"""The demo's models: tiny Lumina2-shaped models that can show what a LoRA learns. Nothing is downloaded.

Random tiny models (tiny/__init__.py) decode every latent to noise, so a before/after picture made with them
shows nothing. `write_demo_models` builds, deterministically and in seconds on a CPU:

* the tiny Gemma2 text encoder, with a tokenizer that also learned the demo's words (vocabulary 512), so
  "red" or "circle" is one token instead of a handful of letters;
* the hand-built colour VAE (tiny/colour_vae.py): latents hold 8×8-pixel block colours, decoded back as blocks;
* the tiny DiT (TINY_DIT, random init), then **pre-trained to draw flat colours**: a full fine-tune with the
  library's own trainer (pipeline.run_training, adapter.kind 'full') on random flat-colour images with
  random captions (words from PRETRAIN_WORDS, none of the demo's). It learns to turn noise into one flat colour
  whatever the caption says; it never sees a shape or a demo caption.

The demo's LoRA then has something to learn that shows: the demo set's shapes and colours, per caption.
"""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path

log = logging.getLogger("lumina2_train")

DEMO_VOCAB = 512
PRETRAIN_WORDS = ("apple river stone cloud window garden candle forest mirror ladder violin harbor desert "
                  "lantern meadow tower pebble shadow velvet ember").split()
PRETRAIN = dict(images=64, steps=300, batch_size=8, lr=2e-3)  # about 10 s of one CPU core


def demo_corpus() -> tuple[str, ...]:
    """The sentences the demo tokenizer learns besides its built-in corpus: every demo caption and the
    pre-training words."""
    from ..demo import SHAPES

    return (*(s[4] for s in SHAPES), " ".join(PRETRAIN_WORDS))


def write_flat_colours(folder: Path, n: int, seed: int) -> Path:
    """n 64×64 images of one random colour each, with a caption of three random PRETRAIN_WORDS."""
    from PIL import Image

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        colour = tuple(rng.randrange(256) for _ in range(3))
        Image.new("RGB", (64, 64), colour).save(folder / f"flat_{i:03d}.png")
        (folder / f"flat_{i:03d}.txt").write_text(" ".join(rng.sample(PRETRAIN_WORDS, 3)) + "\n", encoding="utf-8")
    return folder


def pretrain_config(models: dict, dataset: Path, work: Path, seed: int):
    """The full fine-tune that teaches the random tiny DiT to draw flat colours (fp32, no validation)."""
    from ..config import (
        AdapterConfig,
        CacheConfig,
        DataConfig,
        DatasetConfig,
        ModelConfig,
        RunConfig,
        SaveConfig,
        TrainConfig,
    )

    return RunConfig(
        data=DataConfig(datasets=(DatasetConfig(path=str(dataset), resolution=64, min_size_px=32),), seed=seed),
        model=ModelConfig(transformer=str(models["transformer"]), text_encoder=str(models["text_encoder"]),
                          tokenizer=str(models["tokenizer"]), vae=str(models["vae"]), dtype="fp32"),
        cache=CacheConfig(dir=str(work / "cache"), system_prompt="none"),
        adapter=AdapterConfig(kind="full", targets=()),
        train=TrainConfig(steps=PRETRAIN["steps"], batch_size=PRETRAIN["batch_size"], lr=PRETRAIN["lr"],
                          precision="fp32", checkpointing="off", seed=seed, warmup_steps=10, caption_dropout=0.1),
        save=SaveConfig(output_dir=str(work / "runs"), name="flat_colours", dtype="fp32"),
    )


def write_demo_models(root: str | Path, seed: int = 0) -> dict:
    """Write the demo's diffusers-layout models under `root` (see the module docstring); returns the paths
    {"root", "transformer", "text_encoder", "tokenizer", "vae"} like write_tiny_diffusers. The pre-training run
    (its dataset, cache and run folder) stays in `root/pretrain/` for inspection."""
    from ..pipeline import run_training
    from . import write_tiny_diffusers
    from .colour_vae import save_colour_vae

    root = Path(root)
    models = write_tiny_diffusers(root, seed=seed, extra_corpus=demo_corpus(), vocab_size=DEMO_VOCAB)
    models["vae"] = save_colour_vae(root)
    work = root / "pretrain"
    if work.exists():
        shutil.rmtree(work)
    dataset = write_flat_colours(work / "flat_colours", PRETRAIN["images"], seed)
    log.info("Pre-training the tiny DiT to draw flat colours: a full fine-tune with this library's trainer, "
             "%d steps on %d random flat-colour images with random captions.", PRETRAIN["steps"],
             PRETRAIN["images"])
    result = run_training(pretrain_config(models, dataset, work, seed), run_dir=work / "run")
    shutil.rmtree(models["transformer"])
    shutil.copytree(result.run_dir / "transformer", models["transformer"])
    log.info("pre-training loss: %.3f (first 20 steps) -> %.3f (last 20)", _mean(result.losses[:20]),
             _mean(result.losses[-20:]))
    return models


def _mean(xs) -> float:
    return sum(xs) / max(len(xs), 1)
