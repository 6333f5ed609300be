"""`convert IN OUT [--to comfyui|diffusers|kohya]`: rewrite a Lumina2 LoRA in another trainer's layout.

Reads with the same safe readers as training (safetensors; .pt/.ckpt/.bin only through
torch.load(weights_only=True)) and writes atomically. Plain LoRA only: LoHa/LoKr/DoRA files are already
in ComfyUI's layout.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("lumina2_train")
FORMATS = ("comfyui", "diffusers", "kohya")
DTYPES = ("keep", "bf16", "fp16", "fp32")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="a Lumina2 LoRA: .safetensors (or .pt/.ckpt/.bin holding plain tensors)")
    p.add_argument("output", help="the .safetensors file to write")
    p.add_argument("--to", choices=FORMATS, default="comfyui", help="layout to write (default comfyui)")
    p.add_argument("--dtype", choices=DTYPES, default="keep", help="tensor type to write (default: as read)")
    p.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")


def run(args: argparse.Namespace) -> int:
    from ..errors import FormatError
    from ..files import formats

    src, dst = Path(args.input), Path(args.output)
    if dst.suffix != ".safetensors":
        raise FormatError(f"{dst}: the output must be a .safetensors file (got '{dst.suffix or 'no suffix'}'). "
                          "Name it <name>.safetensors")
    if dst.exists() and (not args.force or dst.resolve() == src.resolve()):
        what = "is the input file" if dst.resolve() == src.resolve() else "exists"
        raise FormatError(f"{dst}: the output {what}. Choose another output name"
                          + ("" if what == "is the input file" else ", or add --force to replace it"))
    from ..storage.paths import writable_file

    writable_file(dst, what="convert OUTPUT")  # before the input is read
    sd, metadata = formats.load_state_dict(src)
    if any(".hada_" in k or ".lokr_" in k or k.endswith(".dora_scale") for k in sd):
        raise FormatError(f"{src}: holds LoHa/LoKr/DoRA weights; convert handles plain LoRA. Those files are "
                          "already in ComfyUI's layout: load them as they are")
    source_format = formats.detect_format(sd.keys())
    arch = arch_from_shapes(sd)
    mods = formats.read_lora(sd, arch)
    dtype = args.dtype if args.dtype != "keep" else _dtype_of(sd)
    md = {**metadata, "lumina2t.converted_from": source_format}  # save_lora makes the alpha keys match the file
    from ..files.consumers import arch_from_shapes as widths_of

    arch = widths_of({n: (m.up.shape[0], m.down.shape[1]) for n, m in mods.items()})  # the model's widths
    formats.save_lora(mods, dst, fmt=args.to, dtype=dtype, arch=arch, metadata=md)
    log.info("%s: %d modules converted from %s to %s", dst, len(mods), source_format, args.to)
    return 0


def arch_from_shapes(sd: dict):
    """An ArchConfig whose qkv split (q, k, v rows) matches the file: only that is needed to convert."""
    from ..backbones.nextdit import ArchConfig

    rows = {}
    for key, t in sd.items():
        for part in ("to_q", "to_k", "to_v"):
            if f".attn.{part}.lora_B." in key:
                rows[part] = t.shape[0]
        if "attention.qkv" in key or "attention_qkv" in key:
            if key.endswith(("lora_A.weight", "lora_down.weight")):
                rows["dim"] = t.shape[1]
            elif key.endswith(("lora_B.weight", "lora_up.weight")):
                rows["qkv"] = t.shape[0]
    if "to_q" in rows and "to_k" in rows:
        q, kv = rows["to_q"], rows["to_k"]
    elif "dim" in rows and "qkv" in rows:
        q, kv = rows["dim"], (rows["qkv"] - rows["dim"]) // 2
    else:
        return ArchConfig()
    return ArchConfig(dim=q, n_heads=q, n_kv_heads=kv)  # head_dim 1: gives the split (q, kv, kv)


def _dtype_of(sd: dict) -> str:
    import torch

    names = {torch.bfloat16: "bf16", torch.float16: "fp16"}
    first = next((t for t in sd.values() if t.is_floating_point() and t.dim()), None)
    return names.get(first.dtype, "fp32") if first is not None else "fp32"
