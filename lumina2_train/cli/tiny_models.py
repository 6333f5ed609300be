"""`make-tiny-models DIR [--family lumina2|zimage]`: tiny random NextDiT models of one family in the diffusers
layout (headless; DIR/diffusers for Lumina2, DIR/diffusers_z_image_turbo for Z-Image) and in ComfyUI's file layout
(DIR/comfyui/{diffusion_models,text_encoders,vae}). Lumina2: tiny/__init__.py, tiny/comfy_layout.py; Z-Image:
tiny/zimage.py."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("lumina2_train")
FAMILIES = ("lumina2", "zimage")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="folder to write the models into")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--only", choices=["diffusers", "comfyui"], help="write one layout only")
    p.add_argument("--family", choices=FAMILIES, default="lumina2",
                   help="lumina2 (Lumina-Image-2.0, default) or zimage (Z-Image-Turbo: Qwen3 text encoder; its "
                        "ComfyUI layout is about 2.8 GB)")


def run(args: argparse.Namespace) -> int:
    from ..storage.paths import writable_folder

    root = writable_folder(Path(args.dir), what="make-tiny-models DIR")
    if args.only != "comfyui":
        paths = _write_diffusers(root, args.family, args.seed)
        log.info("diffusers layout: %s (transformer/, text_encoder/, tokenizer/, vae/)", paths["root"])
    if args.only != "diffusers":
        paths = _write_comfyui(root / "comfyui", args.family, args.seed)
        log.info("ComfyUI layout: %s", ", ".join(f"{k}={v}" for k, v in paths.items()))
    log.info("These models are tiny and random: they exercise the code, they do not make pictures.")
    return 0


def _write_diffusers(root: Path, family: str, seed: int) -> dict:
    if family == "zimage":
        from ..tiny.zimage import ZIMAGE_DIFFUSERS_DIR, write_tiny_zimage_diffusers

        return write_tiny_zimage_diffusers(root / ZIMAGE_DIFFUSERS_DIR, seed=seed)
    from ..tiny import write_tiny_diffusers

    return write_tiny_diffusers(root / "diffusers", seed=seed)


def _write_comfyui(folder: Path, family: str, seed: int) -> dict:
    if family == "zimage":
        from ..tiny.zimage import write_comfy_tiny_zimage_models

        log.info("writing the tiny ComfyUI-layout Z-Image models (about 2.8 GB: ComfyUI fixes Z-Image's width) ...")
        return write_comfy_tiny_zimage_models(folder, seed=seed)
    from ..tiny.comfy_layout import write_comfy_tiny_models

    return write_comfy_tiny_models(folder, seed=seed)
