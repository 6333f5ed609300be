"""Model and adapter settings: where the base weights come from, how they are stored, what trains."""

from __future__ import annotations

from dataclasses import dataclass

from .choices import (
    ADAPTER_KINDS,
    BASE_COMPUTES,
    BASE_PRECISIONS,
    LORA_INITS,
    PRECISIONS,
    QUANTIZE_VIA,
    TARGET_GROUPS,
    TARGET_PRESETS,
    TEXT_NUMERICS,
    ZIMAGE_VARIANTS,
)
from .settings import setting, setting_errors


@dataclass(frozen=True)
class ModelConfig:
    """Where the base weights come from (CLI). Inside ComfyUI the MODEL/CLIP/VAE inputs replace this."""

    transformer: str = setting("", "A diffusers Lumina2 folder (with transformer/), or a ComfyUI diffusion-model "
                                   "/ all-in-one file.")
    text_encoder: str = setting("", "A diffusers text_encoder folder, a Hugging Face Gemma2 folder, or a ComfyUI "
                                    "text-encoder file.")
    tokenizer: str = setting("", "Optional; defaults to the text encoder's folder / the tokenizer inside the "
                                 "file.")
    vae: str = setting("", "A diffusers vae folder or a ComfyUI/Flux ae.safetensors.")
    text_encoder_numerics: str = setting(
        "comfyui", "comfyui: captions encoded as ComfyUI's Gemma2 encodes prompts at inference (no attention "
        "soft-capping, norm scales rounded as ComfyUI stores them); transformers: transformers' Gemma2 "
        "(docs/recipe.md).", choices=TEXT_NUMERICS)
    dtype: str = setting("bf16", "Compute dtype of the frozen base.", choices=PRECISIONS)
    base_precision: str = setting("no_change", "Storage of the frozen base: fp8 | int8 (backbones/quant.py); the "
                                               "*-torchao names select the same storage.", choices=BASE_PRECISIONS)
    quantize_via: str = setting("accelerator", "Where the base is quantised: cpu | accelerator.",
                                choices=QUANTIZE_VIA)
    base_compute: str = setting(
        "bf16", "GEMMs of the frozen model's block Linears while training: bf16 (exact) or fp8 (e4m3 tensor cores, "
        "NVIDIA Ada/Hopper; about 1.3x faster at 1024 px, the loss within 0.3 % of bf16's, docs/benchmarks.md). "
        "fp8_emulated: the same maths on any device, slow (for checking). Adapters, loss and previews stay exact.",
        choices=BASE_COMPUTES)
    variant: str = setting(
        "auto", "Z-Image only (the weights do not tell): turbo (Z-Image-Turbo, the 8-step distilled model) or base "
        "(the undistilled Z-Image). auto reads it from the model's file or folder name ('turbo' in it: turbo; "
        "'z-image' / 'z_image' without it, or 'base': base). It picks the recipe's preview sampler (docs/recipe.md, "
        "Z-Image training).", choices=ZIMAGE_VARIANTS)

    @property
    def storage_format(self) -> str:
        """8-bit storage of the frozen base ('fp8', 'int8') or 'no_change'. SimpleTuner's names
        'int8-torchao' / 'fp8-torchao' select the same per-row storage (backbones/quant.py; torchao is not
        needed)."""
        return {"int8-torchao": "int8", "fp8-torchao": "fp8"}.get(self.base_precision, self.base_precision)

    def errors(self, at: str = "model") -> list[str]:
        return setting_errors(self, at)


@dataclass(frozen=True)
class AdapterConfig:
    kind: str = setting(
        "lora", "lora: low-rank pair per layer. loha: Hadamard product of two pairs. lokr: Kronecker product (very "
        "small files). All load in stock ComfyUI. full: train the chosen layers' weights themselves (a copy; the "
        "MODEL is never changed) and save the whole model to models/diffusion_models for Load Diffusion Model; "
        "rank, alpha, dropout, init, DoRA and init_from do not apply, and with no target ticked every layer "
        "trains.", choices=ADAPTER_KINDS)
    rank: int = setting(16, "Rank (dimension) of the adapter.", min=1, max=1024)
    alpha: float = setting(16.0, "Scale = alpha / rank. alpha = rank trains at scale 1.", min=0.0,
                           widget_max=4096.0, step=0.5)
    dropout: float = setting(0.0, "Dropout on the adapter's input during training (0 = off).", min=0.0, max=0.99,
                             step=0.01)
    init: str = setting("default", "default: PEFT's init (kaiming down, zero up). gaussian: N(0, 1/rank) down.",
                        choices=LORA_INITS)
    targets: tuple[str, ...] = setting(TARGET_PRESETS["attention"], "The layer groups to train.",
                                       choices=TARGET_GROUPS)
    blocks: str = setting("all", "Main blocks to adapt: 'all', or indices and ranges like '0-12,20,25' (Lumina2 "
                                 "has 26, numbered 0-25).")
    refiners: bool = setting(True, "Also adapt the 2 noise and 2 context refiner blocks.")
    use_dora: bool = setting(False, "DoRA: learn a per-column magnitude besides the direction (LoRA only).")
    lokr_factor: int = setting(-1, "LoKr: the factor of the Kronecker split; -1 = as square as possible.",
                               widget_min=-1, widget_max=1024)
    init_from: str = setting("", "Continue from an existing LoRA file (any format files/formats.py reads) instead "
                                 "of a fresh adapter.")
    training_adapter: str = setting(
        "", "A LoRA file used under the trained adapter for this run only and never saved into it: for "
            "Z-Image-Turbo, a de-distillation LoRA, so that the new LoRA learns your data rather than undoing the "
            "step distillation. Previews sample without it (the model as it will be used). LoRA, LoHa and LoKr.")

    def errors(self, at: str = "adapter") -> list[str]:
        out = setting_errors(self, at)
        if self.kind in ADAPTER_KINDS:
            out += self._kind_errors(at)
        if self.blocks != "all":
            try:
                parse_block_spec(self.blocks, 10_000)
            except ValueError as e:
                out.append(f"{at}.blocks {e}")
        return out

    def _kind_errors(self, at: str) -> list[str]:
        """What this kind's policy (adapters/kinds.py) rules out: no targets, an init_from or training adapter file."""
        from ..adapters.kinds import kind_of  # here: the adapters package imports this module

        kind, out = kind_of(self), []
        if not self.targets and kind.needs_targets:
            out.append(f"{at}.targets is empty; choose at least one of {', '.join(TARGET_GROUPS)}")
        if self.init_from and not kind.init_from:
            out.append(f"{at}.init_from is set but kind is '{self.kind}': a {kind.title} starts from the model it "
                       "is given; load a fine-tuned model file as that model instead, or clear init_from")
        if self.training_adapter and not kind.additive:
            out.append(f"{at}.training_adapter is set but the adapter is a {kind.title}, which "
                       + ("saves the whole weight, so the training adapter would be in the saved model"
                          if kind.writes_model else "rescales the base weight it trains on, so its saved "
                          "magnitudes would not fit the model without the training adapter")
                       + "; train a LoRA, LoHa or LoKr with it, or clear training_adapter")
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
