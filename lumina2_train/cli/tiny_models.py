"""`make-tiny-models DIR`: tiny random Lumina2-shaped models in the diffusers layout (DIR/diffusers) and, when
available, ComfyUI's file layout (DIR/comfyui/{diffusion_models,text_encoders,vae})."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("lumina2_train")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="folder to write the models into")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--only", choices=["diffusers", "comfyui"], help="write one layout only")


def run(args: argparse.Namespace) -> int:
    from ..storage.paths import writable_folder
    from ..tiny import write_tiny_diffusers

    root = writable_folder(Path(args.dir), what="make-tiny-models DIR")
    if args.only != "comfyui":
        paths = write_tiny_diffusers(root / "diffusers", seed=args.seed)
        log.info("diffusers layout: %s (transformer/, text_encoder/, tokenizer/, vae/)", paths["root"])
    if args.only != "diffusers":
        from ..tiny.comfy_layout import write_comfy_tiny_models

        paths = write_comfy_tiny_models(root / "comfyui", seed=args.seed)
        log.info("ComfyUI layout: %s", ", ".join(f"{k}={v}" for k, v in paths.items()))
    log.info("These models are tiny and random: they exercise the code, they do not make pictures.")
    return 0
