"""LoRA file I/O and format detection: the one home of LoRA key names. No ComfyUI imports.

What we write by default ('comfyui'), per adapted native module `<m>` (e.g. `layers.12.attention.qkv`):
    diffusion_model.<m>.lora_A.weight   (rank, in)    the down projection
    diffusion_model.<m>.lora_B.weight   (out, rank)   the up projection with alpha/rank folded in
and no `.alpha` key, so ComfyUI applies scale 1.0 and ΔW = lora_B @ lora_A exactly as trained. The fused qkv is
never split. ComfyUI's LoRA loader maps every key. diffusers' `Lumina2Pipeline.load_lora_weights` loads the same
file when its modules are block modules of a 2B-width model: the block modules its converter also needs are
written as zero pairs (consumers.py; listed in the metadata, dropped by our readers). Why alpha is folded
rather than written: docs/architecture.md. Which file loads where: docs/nodes.md.

Also written: 'kohya' (`lora_unet_<m with _>.lora_down/lora_up/alpha`, unscaled up) and 'diffusers'
(`transformer.<diffusers name>.lora_A/lora_B`, qkv split into to_q/to_k/to_v, scale folded).
Read: all of the above, ComfyUI-style `lora_up/lora_down(+alpha)`, and diffusion-pipe's (same as ours).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..adapters.kinds import kind_of
from ..backbones.keys import QKV_PARTS, diffusers_to_native, native_to_diffusers
from ..backbones.nextdit import ArchConfig
from ..errors import FormatError
from ..storage.atomic import atomic_save_safetensors
from . import consumers
from .file_metadata import lora_metadata, written_metadata

COMFY_PREFIX = "diffusion_model."
KOHYA_PREFIX = "lora_unet_"
DIFFUSERS_PREFIX = "transformer."
log = logging.getLogger(__name__)
SAVE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_KOHYA_NAME = re.compile(
    r"^(?:(layers|noise_refiner|context_refiner)_(\d+)_(attention_qkv|attention_out|feed_forward_w[123]|"
    r"adaLN_modulation_1)|(x_embedder|t_embedder_mlp_[02]|cap_embedder_1|final_layer_linear|"
    r"final_layer_adaLN_modulation_1))$")
_KOHYA_SUFFIX = {"attention_qkv": "attention.qkv", "attention_out": "attention.out",
                 "feed_forward_w1": "feed_forward.w1", "feed_forward_w2": "feed_forward.w2",
                 "feed_forward_w3": "feed_forward.w3", "adaLN_modulation_1": "adaLN_modulation.1"}
_KOHYA_TOP = {"x_embedder": "x_embedder", "t_embedder_mlp_0": "t_embedder.mlp.0",
              "t_embedder_mlp_2": "t_embedder.mlp.2", "cap_embedder_1": "cap_embedder.1",
              "final_layer_linear": "final_layer.linear",
              "final_layer_adaLN_modulation_1": "final_layer.adaLN_modulation.1"}


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
    """PEFT/diffusers names; the fused qkv becomes to_q/to_k/to_v sharing one lora_A (exact)."""
    sd = {}
    for name, m in mods.items():
        target = native_to_diffusers(name)
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
    """Write a LoRA file atomically (temp file + rename)."""
    arch = arch or ArchConfig()
    sd = lora_state_dict(mods, fmt, arch)
    warn_consumers(fmt, True, mods, arch)
    return save_state_dict(sd, path, dtype, written_metadata(sd, metadata))


def save_adapters(adapters, path: str | Path, *, fmt: str = "comfyui", dtype: str = "bf16",
                  arch: ArchConfig | None = None, metadata: dict[str, str] | None = None) -> Path:
    """Write any AdapterSet (LoRA, DoRA, LoHa, LoKr) atomically."""
    arch = arch or ArchConfig()
    sd = adapter_state_dict(adapters, fmt, arch)
    warn_consumers(fmt, kind_of(adapters.config).layout == "lora", adapters.names, arch)
    return save_state_dict(sd, path, dtype, written_metadata(sd, metadata))


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


def detect_format(keys) -> str:
    """'comfyui', 'kohya' or 'diffusers' from key patterns; FormatError lists the prefixes found otherwise."""
    keys = list(keys)
    if keys and all(k.startswith(COMFY_PREFIX) for k in keys):
        return "comfyui"
    if keys and all(k.startswith(KOHYA_PREFIX) for k in keys):
        return "kohya"
    if keys and all(".lora_A." in k or ".lora_B." in k or k.startswith(DIFFUSERS_PREFIX) for k in keys) \
            and any(".attn." in k or "feed_forward.linear_" in k or "norm1.linear" in k or "norm_out." in k
                    for k in keys):
        return "diffusers"
    prefixes = sorted({".".join(k.split(".")[:2]) for k in keys})[:8]
    raise FormatError(
        f"unknown LoRA format: key prefixes found {prefixes}; expected 'diffusion_model.<module>' (ComfyUI, "
        "diffusion-pipe), 'lora_unet_<module>' (kohya) or 'transformer.<module>' (diffusers). Is this a "
        "Lumina2 LoRA?")


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
    for suffix in ("lora_A.weight", "lora_B.weight", "lora_down.weight", "lora_up.weight", "alpha"):
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], suffix
    raise FormatError(f"LoRA key '{key}' has a suffix we do not read (lora_A/lora_B/lora_down/lora_up/alpha)")


def _native_from_kohya(module: str) -> str:
    m = _KOHYA_NAME.match(module)
    if not m:
        raise FormatError(f"kohya LoRA module 'lora_unet_{module}' is not a Lumina2 NextDiT module")
    if m.group(4):
        return _KOHYA_TOP[m.group(4)]
    return f"{m.group(1)}.{m.group(2)}.{_KOHYA_SUFFIX[m.group(3)]}"


def _fuse_qkv(parts: dict[int, LoraModule], arch: ArchConfig) -> LoraModule:
    """diffusers to_q/to_k/to_v LoRAs -> one native qkv LoRA (exact; rank grows unless lora_A is shared)."""
    rows = arch.qkv_split
    first = next(iter(parts.values()))
    in_f = first.down.shape[1]
    ups = [parts[i].up * parts[i].scale if i in parts else None for i in range(3)]
    downs = [parts[i].down if i in parts else None for i in range(3)]
    present = [d for d in downs if d is not None]
    if len(present) == 3 and all(torch.equal(present[0], d) for d in present[1:]):
        return LoraModule(present[0], torch.cat(ups, dim=0), None)
    rank = sum(d.shape[0] for d in present)
    down = torch.cat(present, dim=0)
    up = torch.zeros(sum(rows), rank)
    r0 = 0
    for i in range(3):
        if ups[i] is None:
            continue
        row0, r = sum(rows[:i]), downs[i].shape[0]
        up[row0 : row0 + rows[i], r0 : r0 + r] = ups[i]
        r0 += r
    assert down.shape == (rank, in_f)
    return LoraModule(down, up, None)


def read_lora(source: str | Path | dict[str, torch.Tensor], arch: ArchConfig | None = None) -> dict[str, LoraModule]:
    """Any supported Lumina2 LoRA (file or state dict) -> {native module name: LoraModule}."""
    arch = arch or ArchConfig()
    name = str(source) if not isinstance(source, dict) else "LoRA state dict"
    sd = source if isinstance(source, dict) else load_state_dict(source)[0]
    fmt = detect_format(sd.keys())
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        module, suffix = _split_key(key)
        groups.setdefault(module, {})[suffix] = value
    if fmt == "comfyui":
        return _collect({m[len(COMFY_PREFIX):]: p for m, p in groups.items()}, name)
    if fmt == "kohya":
        return _collect({_native_from_kohya(m[len(KOHYA_PREFIX):]): p for m, p in groups.items()}, name)
    mods = _collect({m.removeprefix(DIFFUSERS_PREFIX): p for m, p in groups.items()}, name)
    out: dict[str, LoraModule] = {}
    qkv: dict[str, dict[int, LoraModule]] = {}
    for dname, mod in mods.items():
        native, part = diffusers_to_native(dname)
        if part is None:
            out[native] = mod
        else:
            qkv.setdefault(native, {})[part] = mod
    out.update({n: _fuse_qkv(p, arch) for n, p in qkv.items()})
    return out


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
        raise FormatError("this LoRA does not fit the loaded Lumina2 model (" + "; ".join(problems[:4]) +
                          (f"; and {len(problems) - 4} more" if len(problems) > 4 else "") +
                          "). It was trained for another model or another size. Give a LoRA trained for this model")


__all__ = ["LoraModule", "QKV_PARTS", "check_fits", "detect_format", "load_state_dict", "lora_metadata",
           "lora_modules", "lora_state_dict", "read_lora", "save_lora"]
