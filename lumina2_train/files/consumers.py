"""Which program loads which LoRA file, and the zero-filled pairs that let diffusers load our default file.

diffusers' Lumina2 loader (`Lumina2Pipeline.load_lora_weights`; its converter
`_convert_non_diffusers_lumina2_lora_to_diffusers`, as read in diffusers 0.42.1) reads a
`diffusion_model.<module>.lora_A/lora_B` file only when:
  - for each block kind in the file (noise_refiner, context_refiner, layers), blocks 0..n−1 all carry
    attention.qkv, attention.out, feed_forward.w1/w2/w3 and (not context_refiner, which has none)
    adaLN_modulation.1: it counts the block indices and pops every one of those keys (KeyError otherwise);
  - no other key is left (final layer, embedders: ValueError);
  - the fused qkv splits as 2304/768/768 rows (hard-coded: the 2B model's widths).
We therefore write the missing block modules as zero pairs (ΔW = 0 exactly, the trained rank so that every
diffusers version gives each module scale 1.0) and say so in the metadata (`lumina2t.zero_filled`); our
readers drop all-zero pairs. What still cannot load is warned about at save time.

Z-Image (`arch.family == "zimage"`) needs no zero pairs: diffusers' `ZImagePipeline.load_lora_weights` loads a
`transformer.<diffusers name>` file as it is, and ComfyUI 0.33's loader maps native, kohya and diffusers names
(tests/comfy/test_zimage_lora_formats.py). Its converter (`_convert_non_diffusers_z_image_lora_to_diffusers`,
diffusers 0.42.1) strips the `diffusion_model.` prefix of a native-named file and nothing more; a kohya file's
names it splits at every `_`, which maps the fused qkv (split in three equal parts) and `attention_out`, not the
embedders and final layer. The pairs it leaves under no module name (ZIMAGE_DIFFUSERS_SKIPS) are skipped
("unexpected keys"): warned at save. Pure names and shapes; no tensors, no ComfyUI imports.
"""

from __future__ import annotations

import re

from ..backbones.nextdit import ArchConfig
from . import lora_names

DIFFUSERS_QKV_SPLIT = (2304, 768, 768)  # diffusers' converter splits every qkv LoRA so
BLOCK_MODULES = ("attention.qkv", "attention.out", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3",
                 "adaLN_modulation.1")
_BLOCK = re.compile(r"^(layers|noise_refiner|context_refiner)\.(\d+)\.(.+)$")

# native module names diffusers' Z-Image converter does not turn into module names, per layout we write
ZIMAGE_DIFFUSERS_SKIPS = {"comfyui": ("attention.qkv", "attention.out", "x_embedder", "final_layer."),
                          "kohya": ("x_embedder", "final_layer.")}
ZIMAGE_WIDTHS = (3840, 10240)  # Z-Image's dim and FFN width, for widths a file does not show
COMFYUI_IGNORES_DIFFUSERS = (
    "ComfyUI does not load a 'diffusers'-format Lumina2 LoRA: its LoRA loader (0.3.64 and 0.33.0) maps no "
    "'transformer.<...>.attn.to_q' names of this model, so every key is skipped ('lora key not loaded'). For "
    "ComfyUI save the 'comfyui' format, which diffusers loads too (docs/nodes.md, 'Which file loads where')")
DIFFUSERS_IGNORES_LYCORIS = (
    "diffusers cannot load this file: its Lumina2 loader reads plain lora_A/lora_B pairs only (LoHa and LoKr "
    "fail in its converter, DoRA's dora_scale is dropped). ComfyUI loads it (docs/nodes.md, 'Which file loads "
    "where')")


def block_modules(kind: str) -> tuple[str, ...]:
    """The modules diffusers' converter expects in every block of `kind`."""
    return BLOCK_MODULES[:-1] if kind == "context_refiner" else BLOCK_MODULES


def module_shape(rest: str, arch: ArchConfig) -> tuple[int, int]:
    """(out, in) of a block module (`attention.qkv`, ...) of a NextDiT with these shapes."""
    return {"attention.qkv": (sum(arch.qkv_split), arch.dim), "attention.out": (arch.dim, arch.dim),
            "feed_forward.w1": (arch.ffn_hidden, arch.dim), "feed_forward.w2": (arch.dim, arch.ffn_hidden),
            "feed_forward.w3": (arch.ffn_hidden, arch.dim),
            "adaLN_modulation.1": (4 * arch.dim, arch.t_dim)}[rest]


def diffusers_problems(names, arch: ArchConfig) -> list[str]:
    """Why a 'comfyui' LoRA on these modules cannot load in diffusers even with zero-filled pairs ([] = it can)."""
    names = list(names)
    outside = sorted(n for n in names if not _in_converter_set(n))
    problems = []
    if outside:
        shown = ", ".join(outside[:3]) + (f" and {len(outside) - 3} more" if len(outside) > 3 else "")
        problems.append(f"its converter reads block modules only, not {shown} (targets 'final'/'embedders')")
    if tuple(arch.qkv_split) != DIFFUSERS_QKV_SPLIT:
        problems.append(f"its converter splits qkv as {'/'.join(map(str, DIFFUSERS_QKV_SPLIT))} rows (the 2B "
                        f"model's widths); this model's are {'/'.join(map(str, arch.qkv_split))}")
    return problems


def diffusers_fill(names, arch: ArchConfig) -> dict[str, tuple[int, int]]:
    """Block modules missing for diffusers' converter -> their (out, in); {} when filling cannot help."""
    names = set(names)
    if arch.is_zimage or diffusers_problems(names, arch):  # Z-Image's loader needs no zero pairs
        return {}
    last: dict[str, int] = {}
    for name in names:
        kind, idx, _ = _BLOCK.match(name).groups()
        last[kind] = max(last.get(kind, -1), int(idx))
    return {f"{kind}.{i}.{rest}": module_shape(rest, arch) for kind, n in sorted(last.items())
            for i in range(n + 1) for rest in block_modules(kind) if f"{kind}.{i}.{rest}" not in names}


def arch_from_shapes(shapes: dict[str, tuple[int, int]], family: str | None = None) -> ArchConfig:
    """The shapes a file's modules imply ({native name: (out, in)}), for writing without the model at hand
    (convert, the Save Adapter node). The family is `family`, else what the names or shapes tell
    (lora_names.py), else Lumina2. q rows = dim; k = v rows (Lumina2's GQA; Z-Image's = dim); widths the file
    does not show come from the released model (ArchConfig's defaults, Z-Image's 3840/10240)."""
    family = family or lora_names.family_hint(shapes) or lora_names.family_from_shapes(shapes) or lora_names.LUMINA2
    default = ArchConfig()
    dims = {rest: shape for name, shape in shapes.items() if (m := _BLOCK.match(name)) for rest in [m.group(3)]}
    zimage = family == lora_names.ZIMAGE
    if "attention.qkv" in dims:
        dim = dims["attention.qkv"][1]
        kv = dim if zimage else (dims["attention.qkv"][0] - dim) // 2
    else:
        dim = next((dims[r][1] for r in ("attention.out", "feed_forward.w1", "feed_forward.w3") if r in dims),
                   ZIMAGE_WIDTHS[0] if zimage else default.dim)
        kv = dim if zimage or dim != default.dim else default.qkv_split[1]
    ffn = dims["feed_forward.w1"][0] if "feed_forward.w1" in dims else \
        dims["feed_forward.w2"][1] if "feed_forward.w2" in dims else ZIMAGE_WIDTHS[1] if zimage else default.ffn_hidden
    if not zimage and (dim, kv) == (default.dim, default.qkv_split[1]):
        return ArchConfig(ffn_hidden=ffn)
    # head_dim 1 gives the (q, kv, kv) split
    return ArchConfig(dim=dim, n_heads=dim, n_kv_heads=kv, ffn_hidden=ffn, family=family)


def save_warnings(fmt: str, plain_lora: bool, names, arch: ArchConfig) -> list[str]:
    """What a user must know about where the file about to be written loads."""
    if arch.is_zimage:
        return zimage_save_warnings(fmt, plain_lora, names)
    if fmt == "diffusers":
        return [COMFYUI_IGNORES_DIFFUSERS]
    if fmt != "comfyui":
        return []
    if not plain_lora:
        return [DIFFUSERS_IGNORES_LYCORIS]
    problems = diffusers_problems(names, arch)
    if not problems:
        return []
    return ["diffusers' Lumina2Pipeline.load_lora_weights cannot load this file: " + "; ".join(problems) +
            ". ComfyUI loads it; for diffusers, convert it with `python -m lumina2_train convert IN OUT --to "
            "diffusers` (docs/cli.md)"]


def zimage_save_warnings(fmt: str, plain_lora: bool, names) -> list[str]:
    """A Z-Image file: ComfyUI 0.33 loads every layout; diffusers' Z-Image loader reads diffusers names only."""
    if fmt == "diffusers":
        return []
    if not plain_lora:
        return ["diffusers' ZImagePipeline.load_lora_weights does not load this Z-Image file as trained: it reads "
                "LoRA (and LoKr) weights under diffusers' module names, so LoHa weights, DoRA's dora_scale and "
                "native names such as attention.qkv are not loaded. ComfyUI 0.33 loads it (docs/nodes.md, "
                "'Which file loads where')"]
    skipped = sorted(n for n in names if _local(n).startswith(ZIMAGE_DIFFUSERS_SKIPS[fmt]))
    if not skipped:
        return []
    shown = ", ".join(skipped[:3]) + (f" and {len(skipped) - 3} more" if len(skipped) > 3 else "")
    return [f"diffusers' ZImagePipeline.load_lora_weights skips the {shown} pairs of this '{fmt}' Z-Image file "
            "(its loader reads diffusers' names: to_q/to_k/to_v, to_out.0, all_x_embedder, all_final_layer). "
            "ComfyUI 0.33 loads every key; for diffusers, save the 'diffusers' format or convert it with "
            "`python -m lumina2_train convert IN OUT --to diffusers` (docs/cli.md)"]


def _local(name: str) -> str:
    """A block module's name inside its block (`attention.qkv`); a top-level name as it is."""
    m = _BLOCK.match(name)
    return m.group(3) if m else name


def _in_converter_set(name: str) -> bool:
    m = _BLOCK.match(name)
    return bool(m) and m.group(3) in block_modules(m.group(1))
