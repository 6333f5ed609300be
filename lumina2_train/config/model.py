"""Model and adapter settings: where the base weights come from, how they are stored, what trains."""

from __future__ import annotations

from dataclasses import dataclass

from .choices import (
    ADAPTER_KINDS,
    BASE_COMPUTES,
    BASE_PRECISIONS,
    LORA_INITS,
    PRECISIONS,
    TARGET_GROUPS,
    TARGET_PRESETS,
    TEXT_NUMERICS,
    _choice,
    _range,
)


@dataclass(frozen=True)
class ModelConfig:
    """Where the base weights come from (CLI). Inside ComfyUI the MODEL/CLIP/VAE inputs replace this."""

    transformer: str = ""  # diffusers Lumina2 folder (with transformer/), or a ComfyUI diffusion-model / all-in-one file
    text_encoder: str = ""  # diffusers text_encoder folder, HF Gemma2 folder, or ComfyUI text-encoder file
    tokenizer: str = ""  # optional; defaults to the text encoder's folder / the tokenizer inside the file
    vae: str = ""  # diffusers vae folder or a ComfyUI/Flux ae.safetensors
    # comfyui: captions encoded as ComfyUI's Gemma2 encodes prompts at inference (no attention soft-capping,
    # norm scales rounded as ComfyUI stores them); transformers: transformers' Gemma2 (docs/recipe.md)
    text_encoder_numerics: str = "comfyui"
    dtype: str = "bf16"  # compute dtype of the frozen base
    base_precision: str = "no_change"  # storage of the frozen base: fp8 | int8 (backbones/quant.py), *-torchao
    quantize_via: str = "accelerator"  # cpu | accelerator
    # the frozen base's block GEMMs: bf16 (exact) | fp8 (e4m3 tensor cores, row-wise scales; opt-in, changes
    # the numbers slightly: docs/benchmarks.md) | fp8_emulated (the same maths on any device, slow; tests)
    base_compute: str = "bf16"

    @property
    def storage_format(self) -> str:
        """8-bit storage of the frozen base ('fp8', 'int8') or 'no_change'. SimpleTuner's names
        'int8-torchao' / 'fp8-torchao' select the same per-row storage (backbones/quant.py; torchao is not
        needed)."""
        return {"int8-torchao": "int8", "fp8-torchao": "fp8"}.get(self.base_precision, self.base_precision)

    def errors(self, at: str = "model") -> list[str]:
        out = _choice(f"{at}.dtype", self.dtype, PRECISIONS)
        out += _choice(f"{at}.base_precision", self.base_precision, BASE_PRECISIONS)
        out += _choice(f"{at}.quantize_via", self.quantize_via, ("cpu", "accelerator"))
        out += _choice(f"{at}.base_compute", self.base_compute, BASE_COMPUTES)
        out += _choice(f"{at}.text_encoder_numerics", self.text_encoder_numerics, TEXT_NUMERICS)
        return out


@dataclass(frozen=True)
class AdapterConfig:
    kind: str = "lora"
    rank: int = 16
    alpha: float = 16.0  # scale = alpha / rank
    dropout: float = 0.0
    init: str = "default"  # default: kaiming-uniform down, zero up (PEFT); gaussian: N(0, 1/rank) down
    targets: tuple[str, ...] = TARGET_PRESETS["attention"]
    blocks: str = "all"  # main-layer indices: 'all' or e.g. '0-12,20,25'
    refiners: bool = True  # also adapt noise_refiner / context_refiner blocks
    use_dora: bool = False
    lokr_factor: int = -1  # LoKr: -1 = as square as possible
    init_from: str = ""  # continue from an existing LoRA file (any format formats.py reads)

    def errors(self, at: str = "adapter") -> list[str]:
        out = _choice(f"{at}.kind", self.kind, ADAPTER_KINDS)
        out += _choice(f"{at}.init", self.init, LORA_INITS)
        out += _range(f"{at}.rank", self.rank, 1, 1024)
        out += _range(f"{at}.alpha", self.alpha, 0.0)
        out += _range(f"{at}.dropout", self.dropout, 0.0, 0.99)
        for t in self.targets:
            out += _choice(f"{at}.targets", t, TARGET_GROUPS)
        if self.kind in ADAPTER_KINDS:
            out += self._kind_errors(at)
        if self.blocks != "all":
            try:
                parse_block_spec(self.blocks, 10_000)
            except ValueError as e:
                out.append(f"{at}.blocks {e}")
        return out

    def _kind_errors(self, at: str) -> list[str]:
        """What this kind's policy (adapters/kinds.py) rules out: no targets, an init_from file."""
        from ..adapters.kinds import kind_of  # here: the adapters package imports this module

        kind, out = kind_of(self), []
        if not self.targets and kind.needs_targets:
            out.append(f"{at}.targets is empty; choose at least one of {', '.join(TARGET_GROUPS)}")
        if self.init_from and not kind.init_from:
            out.append(f"{at}.init_from is set but kind is '{self.kind}': a {kind.title} starts from the model it "
                       "is given; load a fine-tuned model file as that model instead, or clear init_from")
        return out

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def parse_block_spec(spec: str, n_layers: int) -> tuple[int, ...]:
    """'all' or '0-3,7' -> sorted indices; raises ValueError naming the bad part."""
    if spec.strip() == "all":
        return tuple(range(n_layers))
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        lo, _, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"'{spec}' has '{part}', which is not an index or a range like 0-12") from None
        if a > b or a < 0 or b >= n_layers:
            raise ValueError(f"'{spec}' has '{part}', outside 0-{n_layers - 1}")
        out.update(range(a, b + 1))
    if not out:
        raise ValueError(f"'{spec}' selects no block; write 'all' or indices like 0-12,20")
    return tuple(sorted(out))
