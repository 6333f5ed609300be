"""LoRA module names in every layout we read, for both NextDiT family members, and the family a file is for.

A LoRA key is `<prefix><module>.<suffix>`. The module is named one of four ways:
    native        layers.3.attention.qkv        ComfyUI, official code, our 'comfyui' files (both families)
    diffusers     layers.3.attn.to_q            Lumina2Transformer2DModel (Lumina2)
                  layers.3.attention.to_q       ZImageTransformer2DModel (Z-Image; to_out.0, all_x_embedder.2-1,
                                                all_final_layer.2-1.linear, the rest as native)
    kohya         layers_3_attention_qkv        either of the above with `.` written `_`, after `lora_unet_`
and the prefix is `diffusion_model.`, `transformer.`, `lora_unet_` or none. Where a name means a module in
both families (`feed_forward.w1`, `attention.qkv`, `x_embedder`, ...) it means the same native module in both,
so only names that one family has tell the family. The native <-> diffusers mapping itself is
backbones/keys.py's; this module lists the adaptable Linears' names and resolves a name to (native module, qkv
part). No tensors are read here and nothing imports ComfyUI.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..backbones.family import LUMINA2, NAMES, ZIMAGE
from ..backbones.keys import native_to_diffusers
from ..backbones.nextdit import ArchConfig
from ..backbones.tree import linear_names
from ..errors import FormatError

FAMILIES = (LUMINA2, ZIMAGE)
PREFIXES = ("diffusion_model.", "transformer.")
LORA_SUFFIXES = ("lora_A.weight", "lora_B.weight", "lora_down.weight", "lora_up.weight", "alpha")
_BLOCK = re.compile(r"^(layers|noise_refiner|context_refiner)\.(\d+)\.(.+)$")
_KOHYA_BLOCK = re.compile(r"^(layers|noise_refiner|context_refiner)_(\d+)_(.+)$")
# the widths of the released models: a file that shows one tells the family
RELEASED_WIDTHS = {2304: LUMINA2, 3840: ZIMAGE}
Resolved = tuple[str, "int | None"]


def _tables(family: str) -> tuple[dict[str, Resolved], dict[str, Resolved]]:
    """(block suffix -> (native suffix, qkv part)), (top-level name -> (native name, None)) for one family:
    every adaptable Linear under its native and its diffusers name."""
    names = linear_names(ArchConfig(n_layers=1, n_refiner_layers=0, family=family))
    block: dict[str, Resolved] = {}
    top: dict[str, Resolved] = {}
    for name in names:
        m = _BLOCK.match(name)
        target = native_to_diffusers(name, family)
        if m:
            rest, strip = m.group(3), len(f"{m.group(1)}.{m.group(2)}.")
            block[rest] = (rest, None)
            parts = target if isinstance(target, tuple) else (target,)
            for i, dname in enumerate(parts):
                block.setdefault(dname[strip:], (rest, i if isinstance(target, tuple) else None))
        else:
            top[name] = (name, None)
            top.setdefault(target, (name, None))
    return block, top


_DOTTED = {f: _tables(f) for f in FAMILIES}
_UNDERSCORED = {f: tuple({k.replace(".", "_"): v for k, v in t.items()} for t in _DOTTED[f]) for f in FAMILIES}
_NATIVE = {f: ({k for k, v in _DOTTED[f][0].items() if v == (k, None)},
               {k for k, v in _DOTTED[f][1].items() if v == (k, None)}) for f in FAMILIES}


def resolve(name: str, family: str, underscored: bool = False) -> Resolved | None:
    """(native module, qkv part index or None) of a module name in `family`; None if it names no Linear there."""
    block, top = (_UNDERSCORED if underscored else _DOTTED)[family]
    m = (_KOHYA_BLOCK if underscored else _BLOCK).match(name)
    if m and m.group(3) in block:
        rest, part = block[m.group(3)]
        return f"{m.group(1)}.{m.group(2)}.{rest}", part
    return top.get(name)


def is_native(name: str) -> bool:
    """The name is a native (ComfyUI) module name of some family member."""
    m = _BLOCK.match(name)
    return any((m.group(3) in _NATIVE[f][0]) if m else (name in _NATIVE[f][1]) for f in FAMILIES)


def diffusers_only(name: str) -> bool:
    """The name is a diffusers module name and no native one (`attention.to_q`, `attn.to_out.0`, ...)."""
    return not is_native(name) and any(resolve(name, f) for f in FAMILIES)


def strip_prefix(key: str, layout: str) -> str:
    if layout == "kohya":
        return key.removeprefix("lora_unet_")
    return next((key[len(p):] for p in PREFIXES if key.startswith(p)), key)


def module_names(keys: Iterable[str], layout: str) -> list[str]:
    """The module names of plain-LoRA keys (suffix and the layout's prefix removed), each once."""
    modules = {next((k[: -len(sfx) - 1] for sfx in LORA_SUFFIXES if k.endswith("." + sfx)), k) for k in keys}
    return sorted(strip_prefix(m, layout) for m in modules)


def families_of(names: Iterable[str], underscored: bool = False) -> dict[str, set[str]]:
    """{module name: the families it names a Linear in} (an empty set: none)."""
    return {n: {f for f in FAMILIES if resolve(n, f, underscored)} for n in names}


def family_from_names(names: Iterable[str], source: str, underscored: bool = False) -> str | None:
    """The family these module names belong to; None when every name is in both. FormatError for names that
    are in neither or that mix the two."""
    found = families_of(names, underscored)
    unknown = sorted(n for n, fs in found.items() if not fs)
    if unknown:
        raise FormatError(f"{source}: {_shown(unknown)} {'is' if len(unknown) == 1 else 'are'} not an adaptable "
                          "module of a Lumina-Image-2.0 or Z-Image NextDiT. Give a LoRA made for one of those "
                          "models")
    only = {f: sorted(n for n, fs in found.items() if fs == {f}) for f in FAMILIES}
    if only[LUMINA2] and only[ZIMAGE]:
        raise FormatError(f"{source}: mixes Lumina-Image-2.0 module names ({_shown(only[LUMINA2])}) with Z-Image "
                          f"ones ({_shown(only[ZIMAGE])}). Give a LoRA made for one model")
    return next((f for f in FAMILIES if only[f]), None)


def family_hint(names: Iterable[str]) -> str | None:
    """The one family whose own names appear among these native or diffusers names; None if none or both."""
    seen = {next(iter(fs)) for fs in families_of(names).values() if len(fs) == 1}
    return seen.pop() if len(seen) == 1 else None


def require_family(names: Iterable[str], family: str, source: str, underscored: bool = False,
                   fix: str = "") -> None:
    """FormatError when some of these names are only the other family member's than `family` (the model's);
    `fix` replaces the message's advice. Names of neither member are left to the caller."""
    if family not in FAMILIES:
        return
    other = next(f for f in FAMILIES if f != family)
    found = sorted(n for n, fs in families_of(names, underscored).items() if fs == {other})
    if found:
        raise FormatError(f"{source}: this is a {NAMES[other]} LoRA ({_shown(found)}), and the model is "
                          f"{NAMES[family]}. " + (fix or f"Give a LoRA made for {NAMES[family]}"))


def family_from_shapes(shapes: dict[str, tuple[int, int]]) -> str | None:
    """The family native (out, in) shapes tell: a fused qkv of 3·dim rows is Z-Image's (no grouped kv heads),
    any other Lumina2's; else a released model's width (2304 Lumina2, 3840 Z-Image); None when they do not."""
    for name, (out_f, in_f) in shapes.items():
        if name.endswith("attention.qkv"):
            return ZIMAGE if out_f == 3 * in_f else LUMINA2
    for name, (_, in_f) in shapes.items():
        m = _BLOCK.match(name)
        if m and m.group(3) in ("attention.out", "feed_forward.w1", "feed_forward.w3") and in_f in RELEASED_WIDTHS:
            return RELEASED_WIDTHS[in_f]
    return None


def _shown(names: list[str]) -> str:
    return ", ".join(f"'{n}'" for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
