"""LoRA file I/O and format detection, for Lumina2 and Z-Image (`arch.family`). No ComfyUI imports.

What we write by default ('comfyui'), per adapted native module `<m>` (e.g. `layers.12.attention.qkv`):
    diffusion_model.<m>.lora_A.weight   (rank, in)    the down projection
    diffusion_model.<m>.lora_B.weight   (out, rank)   the up projection with alpha/rank folded in
and no `.alpha` key, so ComfyUI applies scale 1.0 and ΔW = lora_B @ lora_A exactly as trained. The fused qkv is
never split. ComfyUI's LoRA loader maps every key. diffusers' `Lumina2Pipeline.load_lora_weights` loads the same
Lumina2 file when its modules are block modules of a 2B-width model: the block modules its converter also needs
are written as zero pairs (consumers.py; listed in the metadata, dropped by our readers). Why alpha is folded
rather than written: docs/architecture.md. Which file loads where: docs/nodes.md.

Also written: 'kohya' (`lora_unet_<m with _>.lora_down/lora_up/alpha`, unscaled up) and 'diffusers'
(`transformer.<diffusers name>.lora_A/lora_B`, qkv split into to_q/to_k/to_v, scale folded; Lumina2's or
Z-Image's diffusers names by the family). Read: all of the above, ComfyUI-style `lora_up/lora_down(+alpha)`,
diffusion-pipe's (same as ours), and diffusers names under `diffusion_model.`, `transformer.` or no prefix
(Z-Image's training adapters), `.alpha` keys honoured; the names of every layout: lora_names.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..adapters.kinds import kind_of
from ..backbones.keys import QKV_PARTS, native_to_diffusers
from ..backbones.nextdit import ArchConfig
from ..errors import FormatError
from ..storage.atomic import atomic_save_safetensors
from . import consumers, lora_names
from .file_metadata import lora_metadata, written_metadata

COMFY_PREFIX = "diffusion_model."
KOHYA_PREFIX = "lora_unet_"
DIFFUSERS_PREFIX = "transformer."
log = logging.getLogger(__name__)
SAVE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class LoraModule:
    """One LoRA pair in native terms: ΔW = scale · up @ down, scale = alpha/rank (1.0 when alpha is None)."""

    down: torch.Tensor  # (rank, in)
    up: torch.Tensor  # (out, rank)
    alpha: float | None = None

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.down.shape[0]

    def delta_weight(self) -> torch.Tensor:
        return (self.up.float() @ self.down.float()) * self.scale


# ---------------------------------------------------------------- writing

def lora_modules(adapters) -> dict[str, LoraModule]:
    """AdapterSet (plain LoRA) -> native LoraModules with the scale folded into `up` (alpha None)."""
    out = {}
    for name, mod in adapters.items():
        if not hasattr(mod, "export_tensors") or getattr(mod, "replaces_weight", False):
            raise FormatError(f"the {type(mod).__name__} adapter on {name} can be saved only in the 'comfyui' "
                              "format (kohya and diffusers files hold plain LoRA). Set save.format to comfyui")
        t = mod.export_tensors()
        out[name] = LoraModule(t["down"], t["up"], None)
    return out


def comfyui_state_dict(mods: dict[str, LoraModule]) -> dict[str, torch.Tensor]:
    sd = {}
    for name, m in mods.items():
        sd[f"{COMFY_PREFIX}{name}.lora_A.weight"] = m.down
        sd[f"{COMFY_PREFIX}{name}.lora_B.weight"] = m.up * m.scale
    return sd


def kohya_state_dict(mods: dict[str, LoraModule]) -> dict[str, torch.Tensor]:
    sd = {}
    for name, m in mods.items():
        key = KOHYA_PREFIX + name.replace(".", "_")
        rank = m.down.shape[0]
        sd[f"{key}.lora_down.weight"] = m.down
        sd[f"{key}.lora_up.weight"] = m.up
        sd[f"{key}.alpha"] = torch.tensor(float(rank if m.alpha is None else m.alpha))
    return sd


def diffusers_state_dict(mods: dict[str, LoraModule], arch: ArchConfig) -> dict[str, torch.Tensor]:
    """PEFT/diffusers names of the family (Lumina2Transformer2DModel's or ZImageTransformer2DModel's); the fused
    qkv becomes to_q/to_k/to_v sharing one lora_A (exact)."""
    sd = {}
    for name, m in mods.items():
        try:
            target = native_to_diffusers(name, arch.family)
        except KeyError:
            raise FormatError(f"save.format diffusers: module '{name}' has no diffusers name in "
                              f"{lora_names.NAMES.get(arch.family, arch.family)}. Save it as 'comfyui'") from None
        up = m.up * m.scale
        if isinstance(target, tuple):
            for dname, piece in zip(target, torch.split(up, list(arch.qkv_split), dim=0)):
                sd[f"{DIFFUSERS_PREFIX}{dname}.lora_A.weight"] = m.down.clone()  # safetensors refuses shared storage
                sd[f"{DIFFUSERS_PREFIX}{dname}.lora_B.weight"] = piece.contiguous()
        else:
            sd[f"{DIFFUSERS_PREFIX}{target}.lora_A.weight"] = m.down
            sd[f"{DIFFUSERS_PREFIX}{target}.lora_B.weight"] = up
    return sd


def with_zero_pairs(mods: dict[str, LoraModule], arch: ArchConfig) -> dict[str, LoraModule]:
    """`mods` plus zero pairs (ΔW = 0) for the block modules diffusers' converter needs (docs/nodes.md); at the
    most common trained rank, so that every diffusers version scales every module by 1.0."""
    missing = consumers.diffusers_fill(mods, arch)
    if not missing:
        return mods
    ranks = [m.down.shape[0] for m in mods.values()]
    rank = max(set(ranks), key=ranks.count)
    return {**mods, **{name: LoraModule(torch.zeros(rank, in_f), torch.zeros(out_f, rank))
                       for name, (out_f, in_f) in missing.items()}}


def lora_state_dict(mods: dict[str, LoraModule], fmt: str, arch: ArchConfig) -> dict[str, torch.Tensor]:
    if fmt == "comfyui":
        return comfyui_state_dict(with_zero_pairs(mods, arch))
    if fmt == "kohya":
        return kohya_state_dict(mods)
    if fmt == "diffusers":
        return diffusers_state_dict(mods, arch)
    raise FormatError(f"save.format '{fmt}' is unknown; choose comfyui, kohya or diffusers")


def adapter_state_dict(adapters, fmt: str, arch: ArchConfig) -> dict[str, torch.Tensor]:
    """Any AdapterSet -> a state dict; LoHa, LoKr and DoRA use ComfyUI's suffixes under native paths."""
    if kind_of(adapters.config).layout == "lora":
        return lora_state_dict(lora_modules(adapters), fmt, arch)
    lora_modules(adapters) if fmt != "comfyui" else None  # raises the format error for non-LoRA adapters
    return {f"{COMFY_PREFIX}{name}.{suffix}": t for name, mod in adapters.items()
            for suffix, t in mod.file_tensors().items()}


ADAPTER_SUFFIXES = ("lora_A.weight", "lora_B.weight", "lora_down.weight", "lora_up.weight", "hada_w1_a",
                    "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "lokr_w1_a", "lokr_w1_b",
                    "lokr_w2_a", "lokr_w2_b", "lokr_w1", "lokr_w2", "lokr_t2", "alpha", "dora_scale", "diff",
                    "diff_b")


def read_adapter_tensors(source: str | Path | dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """A ComfyUI-layout file (any adapter kind) -> {native module: {key suffix: tensor}}."""
    sd = source if isinstance(source, dict) else load_state_dict(source)[0]
    if detect_format(sd.keys()) != "comfyui":
        raise FormatError("LoHa/LoKr/DoRA weights are read from ComfyUI-layout files (diffusion_model.<module>)")
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        rest = key[len(COMFY_PREFIX):]
        suffix = next((sfx for sfx in ADAPTER_SUFFIXES if rest.endswith("." + sfx)), None)
        if suffix is None:
            raise FormatError(f"key '{key}' has a suffix we do not read; known: {', '.join(ADAPTER_SUFFIXES)}")
        out.setdefault(rest[: -len(suffix) - 1], {})[suffix] = value
    return out


def save_lora(mods: dict[str, LoraModule], path: str | Path, *, fmt: str = "comfyui", dtype: str = "bf16",
              arch: ArchConfig | None = None, metadata: dict[str, str] | None = None) -> Path:
    """Write a LoRA file atomically (temp file + rename); `arch`, the model's shapes, also names its family in
    the metadata."""
    family = arch.family if arch is not None else None
    arch = arch or ArchConfig()
    sd = lora_state_dict(mods, fmt, arch)
    warn_consumers(fmt, True, mods, arch)
    return save_state_dict(sd, path, dtype, written_metadata(sd, metadata, family))


def save_adapters(adapters, path: str | Path, *, fmt: str = "comfyui", dtype: str = "bf16",
                  arch: ArchConfig | None = None, metadata: dict[str, str] | None = None) -> Path:
    """Write any AdapterSet (LoRA, DoRA, LoHa, LoKr) atomically."""
    family = arch.family if arch is not None else None
    arch = arch or ArchConfig()
    sd = adapter_state_dict(adapters, fmt, arch)
    warn_consumers(fmt, kind_of(adapters.config).layout == "lora", adapters.names, arch)
    return save_state_dict(sd, path, dtype, written_metadata(sd, metadata, family))


def warn_consumers(fmt: str, plain_lora: bool, names, arch: ArchConfig) -> None:
    """Log, at save time, where the file being written will not load (docs/nodes.md, 'Which file loads where')."""
    for message in consumers.save_warnings(fmt, plain_lora, names, arch):
        log.warning("%s", message)


def save_state_dict(sd: dict[str, torch.Tensor], path: str | Path, dtype: str,
                    metadata: dict[str, str] | None) -> Path:
    sd = {k: v.to(SAVE_DTYPES[dtype]) if v.dim() else v.float() for k, v in sd.items()}
    return atomic_save_safetensors(sd, path, metadata=metadata)


# ---------------------------------------------------------------- reading

def load_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a weights file safely: safetensors, or a pickle through torch.load(weights_only=True) only."""
    p = Path(path)
    if not p.is_file():
        raise FormatError(f"{p}: no such file. Check the path")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(p), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        except (SafetensorError, OSError, ValueError) as e:
            raise FormatError(f"{p}: not a readable safetensors file ({e}). The file may be truncated or "
                              "corrupt: download or export it again") from None
    if p.suffix in (".pt", ".pth", ".ckpt", ".bin"):
        import pickle

        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError) as e:
            raise FormatError(f"{p}: refused to load: this pickle needs more than plain tensors to load "
                              f"({str(e).splitlines()[0][:200]}), and running its code could be unsafe. "
                              "Convert it to .safetensors with a tool you trust") from None
        sd = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise FormatError(f"{p}: holds no flat dictionary of tensors. Give a LoRA weights file")
        return sd, {}
    raise FormatError(f"{p}: unknown file type '{p.suffix}'. Give a .safetensors file (or .pt/.ckpt/.bin)")


def _module_of(key: str) -> str:
    """The key less its adapter suffix (lora_A.weight, alpha, hada_w1_a, ...)."""
    return next((key[: -len(sfx) - 1] for sfx in ADAPTER_SUFFIXES if key.endswith("." + sfx)), key)


def detect_format(keys) -> str:
    """'comfyui' (native names under `diffusion_model.`), 'kohya' (`lora_unet_`) or 'diffusers' (diffusers names
    under `transformer.`, `diffusion_model.` or no prefix: lora_names.py); FormatError lists the prefixes found
    otherwise."""
    keys = list(keys)
    modules = {_module_of(k) for k in keys}
    if keys and all(k.startswith(KOHYA_PREFIX) for k in keys):
        return "kohya"
    if keys and all(k.startswith(COMFY_PREFIX) for k in keys):
        return "diffusers" if any(lora_names.diffusers_only(m[len(COMFY_PREFIX):]) for m in modules) else "comfyui"
    if all(k.startswith(DIFFUSERS_PREFIX) for k in keys):
        names = [m[len(DIFFUSERS_PREFIX):] for m in modules]
    elif not any(k.startswith((COMFY_PREFIX, DIFFUSERS_PREFIX, KOHYA_PREFIX)) for k in keys):
        names = list(modules)
    else:
        names = []
    plain = all(k.endswith(lora_names.LORA_SUFFIXES) for k in keys)
    if names and plain and all(lora_names.families_of(names).values()):
        return "diffusers"
    prefixes = sorted({".".join(k.split(".")[:2]) for k in keys})[:8]
    raise FormatError(
        f"unknown LoRA format: key prefixes found {prefixes}; expected 'diffusion_model.<module>' (ComfyUI, "
        "diffusion-pipe), 'lora_unet_<module>' (kohya) or 'transformer.<module>' (diffusers). Is this a "
        "Lumina-Image-2.0 or Z-Image LoRA?")


def _collect(pairs: dict[str, dict[str, torch.Tensor]], source: str) -> dict[str, LoraModule]:
    out = {}
    for name, parts in pairs.items():
        down = parts.get("lora_A.weight", parts.get("lora_down.weight"))
        up = parts.get("lora_B.weight", parts.get("lora_up.weight"))
        if down is None or up is None:
            raise FormatError(f"{source}: module '{name}' has {sorted(parts)} but needs both a down "
                              "(lora_A/lora_down) and an up (lora_B/lora_up) weight. Give the complete file: "
                              "export it again if it was cut short")
        if not (down.any() or up.any()):
            continue  # a zero pair (ΔW = 0), as written for diffusers' converter: not a trained module
        alpha = parts.get("alpha")
        out[name] = LoraModule(down.float(), up.float(), None if alpha is None else float(alpha))
    return out


def _split_key(key: str) -> tuple[str, str]:
    for suffix in lora_names.LORA_SUFFIXES:
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], suffix
    raise FormatError(f"LoRA key '{key}' has a suffix we do not read (lora_A/lora_B/lora_down/lora_up/alpha)")


def _qkv_rows(native: str, parts: dict[int, LoraModule], arch: ArchConfig | None, family: str,
              source: str) -> list[int]:
    """Rows of q, k, v: the parts' own, the missing ones from the model (`arch`) or the family's rule (q rows =
    width; Z-Image: k, v as q; Lumina2: k as v)."""
    rows = [parts[i].up.shape[0] if i in parts else None for i in range(3)]
    if arch is not None:
        if any(r is not None and r != want for r, want in zip(rows, arch.qkv_split)):
            raise FormatError(f"{source}: the to_q/to_k/to_v pairs of '{native}' have {rows} rows, the model's "
                              f"{list(arch.qkv_split)}. It was trained for another model: give a LoRA for this one")
        return list(arch.qkv_split)
    width = next(iter(parts.values())).down.shape[1]
    rows[0] = rows[0] or width
    if family == lora_names.ZIMAGE:
        return [rows[0]] * 3
    if rows[1] is None and rows[2] is None:
        raise FormatError(f"{source}: '{native}' has a to_q pair only, so the rows of to_k/to_v are unknown. Give "
                          "the file with all three, or read it with the model")
    return [rows[0], rows[1] or rows[2], rows[2] or rows[1]]


def _fuse_qkv(parts: dict[int, LoraModule], rows: list[int], native: str, source: str) -> LoraModule:
    """diffusers to_q/to_k/to_v LoRAs -> one native qkv LoRA (exact; rank grows unless lora_A is shared)."""
    ups = [parts[i].up * parts[i].scale if i in parts else None for i in range(3)]
    downs = [parts[i].down if i in parts else None for i in range(3)]
    present = [d for d in downs if d is not None]
    if len({d.shape[1] for d in present}) > 1:
        raise FormatError(f"{source}: the to_q/to_k/to_v pairs of '{native}' read {[d.shape[1] for d in present]} "
                          "input features; they must be equal. The file is damaged: export it again")
    if len(present) == 3 and all(torch.equal(present[0], d) for d in present[1:]):
        return LoraModule(present[0], torch.cat(ups, dim=0), None)
    down = torch.cat(present, dim=0)
    up = torch.zeros(sum(rows), down.shape[0])
    r0 = 0
    for i in range(3):
        if ups[i] is None:
            continue
        row0, r = sum(rows[:i]), downs[i].shape[0]
        up[row0 : row0 + rows[i], r0 : r0 + r] = ups[i]
        r0 += r
    return LoraModule(down, up, None)


def _to_native(mods: dict[str, LoraModule], names: dict[str, str], arch: ArchConfig | None, family: str,
               source: str, underscored: bool) -> dict[str, LoraModule]:
    """{file module: LoraModule} -> {native module: LoraModule}, the to_q/to_k/to_v parts fused into qkv."""
    held: dict[str, dict[int | None, str]] = {}
    for key in mods:
        native, part = lora_names.resolve(names[key], family, underscored)
        if part in held.setdefault(native, {}) or (held[native] and (part is None or None in held[native])):
            raise FormatError(f"{source}: '{key}' and '{next(iter(held[native].values()))}' both hold '{native}'. "
                              "Keep one of them: the file holds this module twice")
        held[native][part] = key
    out = {}
    for native, parts in held.items():
        if None in parts:
            out[native] = mods[parts[None]]
        else:
            by_part = {i: mods[k] for i, k in parts.items()}
            out[native] = _fuse_qkv(by_part, _qkv_rows(native, by_part, arch, family, source), native, source)
    return out


def read_lora(source: str | Path | dict[str, torch.Tensor], arch: ArchConfig | None = None) -> dict[str, LoraModule]:
    """Any supported Lumina2 or Z-Image LoRA (file or state dict) -> {native module name: LoraModule}.

    The family is `arch.family` when `arch` (the model's shapes) is given, and a file for the other family member
    is refused, naming it; without `arch` the module names tell (a name both members have means the same native
    module in both)."""
    name = str(source) if not isinstance(source, dict) else "LoRA state dict"
    sd = source if isinstance(source, dict) else load_state_dict(source)[0]
    fmt = detect_format(sd.keys())
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        module, suffix = _split_key(key)
        groups.setdefault(module, {})[suffix] = value
    underscored = fmt == "kohya"
    names = {m: lora_names.strip_prefix(m, fmt) for m in groups}
    if arch is not None:
        lora_names.require_family(names.values(), arch.family, name, underscored)
    if fmt == "comfyui":  # native names: check_fits judges the modules against the model
        return _collect({names[m]: p for m, p in groups.items()}, name)
    # None: every name is in both members and means the same module there
    family = lora_names.family_from_names(names.values(), name, underscored) or (arch or ArchConfig()).family
    return _to_native(_collect(groups, name), names, arch, family, name, underscored)


def check_fits(mods: dict[str, LoraModule], backbone) -> None:
    """FormatError when a LoRA does not fit the backbone (other model: unknown modules or shapes)."""
    problems = []
    known = set(backbone.linear_names())
    for name, m in mods.items():
        if name not in known:
            problems.append(f"'{name}' is not a module of this model")
            continue
        out_f, in_f = backbone.linear(name).weight.shape
        if m.down.shape[0] != m.up.shape[1]:
            problems.append(f"'{name}' has a down of rank {m.down.shape[0]} and an up of rank {m.up.shape[1]}")
        elif m.down.shape[1] != in_f or m.up.shape[0] != out_f:
            problems.append(f"'{name}' is {m.up.shape[0]}x{m.down.shape[1]}, the model's is {out_f}x{in_f}")
    if problems:
        model = "Z-Image" if backbone.arch.is_zimage else "Lumina2"
        raise FormatError(f"this LoRA does not fit the loaded {model} model (" + "; ".join(problems[:4]) +
                          (f"; and {len(problems) - 4} more" if len(problems) > 4 else "") +
                          "). It was trained for another model or another size. Give a LoRA trained for this model")


__all__ = ["LoraModule", "QKV_PARTS", "check_fits", "detect_format", "load_state_dict", "lora_metadata",
           "lora_modules", "lora_state_dict", "read_lora", "save_lora"]
