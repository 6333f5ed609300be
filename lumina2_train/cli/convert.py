"""`convert IN OUT [--to comfyui|diffusers|kohya] [--family auto|lumina2|zimage]`: rewrite a Lumina2 or Z-Image
LoRA in another trainer's layout.

Reads with the same safe readers as training (safetensors; .pt/.ckpt/.bin only through
torch.load(weights_only=True)) and writes atomically. Plain LoRA only: LoHa/LoKr/DoRA files are already
in ComfyUI's layout. The family decides the diffusers names (files/lora_names.py); `auto` takes it from our
metadata (`lumina2t.family`, a `z-image/...` modelspec architecture), else from the module names, else from the
shapes (a qkv of 3·dim rows is Z-Image's, any other Lumina2's; a released model's width). A file none of these
tell converts to the native layouts as it is (their names are the same in both) and is an error naming
--family for `--to diffusers`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("lumina2_train")
FORMATS = ("comfyui", "diffusers", "kohya")
DTYPES = ("keep", "bf16", "fp16", "fp32")
FAMILIES = ("auto", "lumina2", "zimage")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="a Lumina2 or Z-Image LoRA: .safetensors (or .pt/.ckpt/.bin holding plain tensors)")
    p.add_argument("output", help="the .safetensors file to write")
    p.add_argument("--to", choices=FORMATS, default="comfyui", help="layout to write (default comfyui)")
    p.add_argument("--family", choices=FAMILIES, default="auto",
                   help="the model the LoRA is for: lumina2 (Lumina-Image-2.0) or zimage (Z-Image); auto (default) "
                        "reads it from the file's metadata, module names or shapes")
    p.add_argument("--dtype", choices=DTYPES, default="keep", help="tensor type to write (default: as read)")
    p.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")


def run(args: argparse.Namespace) -> int:
    from ..errors import FormatError
    from ..files import formats, lora_names
    from ..files.consumers import arch_from_shapes
    from ..files.file_metadata import written_metadata

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
    names = lora_names.module_names(sd, source_format)
    family = args.family
    if family != "auto":
        lora_names.require_family(names, family, str(src), source_format == "kohya",
                                  fix=f"Leave out --family {family}, or give --family auto")
    mods = formats.read_lora(sd)
    shapes = {n: (m.up.shape[0], m.down.shape[1]) for n, m in mods.items()}  # the model's widths
    if family == "auto":
        family = family_of(src, metadata, names, shapes, source_format, args.to)
    arch = arch_from_shapes(shapes, family)
    dtype = args.dtype if args.dtype != "keep" else _dtype_of(sd)
    md = {**metadata, "lumina2t.converted_from": source_format}  # the alpha keys made to match the file
    out = formats.lora_state_dict(mods, args.to, arch)
    formats.warn_consumers(args.to, True, mods, arch)
    formats.save_state_dict(out, dst, dtype, written_metadata(out, md, family))
    what = f" ({lora_names.NAMES[family]})" if family else ""
    log.info("%s: %d modules converted from %s to %s%s", dst, len(mods), source_format, args.to, what)
    return 0


def family_of(src: Path, metadata: dict, names: list[str], shapes: dict, layout: str, to: str) -> str | None:
    """The family the file says (our metadata), else what its names or shapes tell; None when nothing tells and
    the output's names are the same in both (not diffusers)."""
    from ..errors import FormatError
    from ..files import lora_names

    said = metadata.get("lumina2t.family")
    if said not in lora_names.FAMILIES:
        said = lora_names.ZIMAGE if metadata.get("modelspec.architecture", "").startswith("z-image") else None
    seen = lora_names.family_from_names(names, str(src), layout == "kohya") or lora_names.family_from_shapes(shapes)
    if said and seen and said != seen:
        raise FormatError(f"{src}: its metadata says {lora_names.NAMES[said]} (lumina2t.family), its modules are "
                          f"{lora_names.NAMES[seen]}'s. Add --family lumina2 or --family zimage to choose")
    if said or seen or to != "diffusers":
        return said or seen
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    raise FormatError(f"{src}: cannot tell whether this LoRA is for Lumina-Image-2.0 or Z-Image: its modules "
                      f"({shown}) have the same names and shapes in both and its metadata does not say, and the "
                      "two name them differently in diffusers. Add --family lumina2 or --family zimage")


def _dtype_of(sd: dict) -> str:
    import torch

    names = {torch.bfloat16: "bf16", torch.float16: "fp16"}
    first = next((t for t in sd.values() if t.is_floating_point() and t.dim()), None)
    return names.get(first.dtype, "fp32") if first is not None else "fp32"
