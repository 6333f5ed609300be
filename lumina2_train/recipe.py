"""The Lumina2 training recipe, written once: σ convention, timestep sampling, target, loss, prompts,
latent scaling and the flow Euler sampler with CFG. No ComfyUI imports, no model code.

The convention (every other module follows it; only backbones convert to a network's own time):
    σ ∈ [0, 1] is the noise level: 0 = clean latent x, 1 = pure noise ε.
    x_σ = (1 − σ)·x + σ·ε
    the velocity a backbone returns is  v = dx_σ/dσ = ε − x,  and the training target is ε − x.
    Sampling integrates dx/dσ = v from σ = 1 down to σ = 0 (Euler: x ← x + (σ_next − σ)·v).
The official Lumina code uses t = 1 − σ and predicts x − ε; ComfyUI's NextDiT takes σ and returns
ε − x; diffusers' Lumina2Transformer2DModel takes 1 − σ and returns x − ε (docs/recipe.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

# ---------------------------------------------------------------- prompts (docs/recipe.md, Text)

SYSTEM_PROMPT_TEXT = {
    "superior": "You are an assistant designed to generate superior images with the superior degree of "
                "image-text alignment based on textual prompts or user prompts.",
    "alignment": "You are an assistant designed to generate high-quality images with the highest degree of "
                 "image-text alignment based on textual prompts.",
    "base": "You are an assistant designed to generate high-quality images based on user prompts.",
    "none": "",
}
PROMPT_SEPARATOR = " <Prompt Start> "


# The families' prompt formats (docs/recipe.md, Text and Z-Image text). Names as backbones/family.py.
LUMINA2, ZIMAGE = "lumina2", "zimage"
PROMPT_FAMILIES = (LUMINA2, ZIMAGE)
# Z-Image's Qwen3 chat turn: what diffusers' ZImagePipeline gets from apply_chat_template(add_generation_prompt,
# enable_thinking=True) for one user message, and ComfyUI's ZImageTokenizer.llama_template.
ZIMAGE_PROMPT_TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
# A system turn as Qwen's chat template writes one (Z-Image's pipelines send none; only a custom prompt uses it).
ZIMAGE_SYSTEM_TURN = "<|im_start|>system\n{}<|im_end|>\n"
ZIMAGE_MAX_TOKENS = 512  # ZImagePipeline's max_sequence_length: the templated prompt is cut there
LUMINA2_CAPTION_TOKENS = 256  # Lumina-Image-2.0's training caption length (the cache.max_caption_tokens default)


def caption_tokens(family: str) -> int:
    """Tokens a family trains its captions with: Lumina2 256, Z-Image 512 (its pipeline's limit)."""
    return ZIMAGE_MAX_TOKENS if family == ZIMAGE else LUMINA2_CAPTION_TOKENS


def _require_family(family: str) -> None:
    if family not in PROMPT_FAMILIES:
        raise ValueError(f"prompt family {family!r} is unknown; choose one of {', '.join(PROMPT_FAMILIES)}")


def system_prompt_text(key: str, custom: str = "", family: str = LUMINA2) -> str:
    """The exact system-prompt string for a choice ('custom' uses `custom`).

    For Z-Image the presets are Lumina2's Gemma prefixes, which Z-Image never saw: every choice but 'custom'
    gives "" (its pipelines send no system prompt).
    """
    _require_family(family)
    if key == "custom":
        return custom.strip()
    return SYSTEM_PROMPT_TEXT[key] if family == LUMINA2 else ""


def format_prompt(caption: str, system_prompt: str, family: str = LUMINA2) -> str:
    """The text given to the text encoder.

    Lumina2 (Gemma2): `SYSTEM <Prompt Start> caption` (as ComfyUI's CLIPTextEncodeLumina2), the bare caption
    without a system prompt. Z-Image (Qwen3): the caption in ZIMAGE_PROMPT_TEMPLATE, after a system turn only
    when a system prompt is given. The tokenizer adds nothing (no BOS for Qwen3).
    """
    _require_family(family)
    if family == ZIMAGE:
        turn = ZIMAGE_SYSTEM_TURN.format(system_prompt) if system_prompt else ""
        return turn + ZIMAGE_PROMPT_TEMPLATE.format(caption)
    return f"{system_prompt}{PROMPT_SEPARATOR}{caption}" if system_prompt else caption


# The caption-dropout text: the whole string, system prompt included, becomes "" (official recipe).
DROPPED_PROMPT = ""


def dropped_prompt(family: str = LUMINA2) -> str:
    """What a dropped caption is encoded as, and the empty negative.

    Lumina2: "" (the whole text, system prompt included; official recipe). Z-Image: the template around an
    empty caption, which is what ZImagePipeline encodes for its default negative (negative_prompt "") and
    what ComfyUI's CLIP Text Encode gives for an empty text, so caption dropout trains the unconditional
    branch that CFG samples with. (diffusers' Z-Image LoRA script has no caption dropout.)
    """
    _require_family(family)
    return ZIMAGE_PROMPT_TEMPLATE.format("") if family == ZIMAGE else DROPPED_PROMPT


# ---------------------------------------------------------------- latents (docs/recipe.md, Latents)

LATENT_SHIFT = 0.1159
LATENT_SCALE = 0.3611
LATENT_CHANNELS = 16
PIXELS_PER_TOKEN = 16  # VAE /8 × patch 2


def latent_in(raw: torch.Tensor) -> torch.Tensor:
    """Raw Flux-AE latent -> the scaled space the DiT trains in."""
    return (raw - LATENT_SHIFT) * LATENT_SCALE


def latent_out(z: torch.Tensor) -> torch.Tensor:
    """Scaled latent -> raw Flux-AE latent for decoding."""
    return z / LATENT_SCALE + LATENT_SHIFT


# ---------------------------------------------------------------- timesteps (docs/recipe.md, Timesteps)

SHIFT_BASE_TOKENS, SHIFT_MAX_TOKENS = 256, 4096
SHIFT_BASE_MU, SHIFT_MAX_MU = 0.5, 1.15


def resolution_shift(height_px: int, width_px: int) -> float:
    """Resolution-dependent shift s = exp(μ) (SimpleTuner auto-shift, kohya flux_shift, diffusion-pipe).

    μ grows linearly with the image-token count L = (H/16)(W/16): 0.5 at 256 tokens, 1.15 at 4096 (1024²).
    μ is clamped to [0.5, 1.15]: buckets above 1 MP use the 1024² value, which is what the official
    script uses for every size, instead of an extrapolated shift (2048² would give s ≈ 25).
    """
    tokens = (height_px // PIXELS_PER_TOKEN) * (width_px // PIXELS_PER_TOKEN)
    slope = (SHIFT_MAX_MU - SHIFT_BASE_MU) / (SHIFT_MAX_TOKENS - SHIFT_BASE_TOKENS)
    mu = SHIFT_BASE_MU + (tokens - SHIFT_BASE_TOKENS) * slope
    return math.exp(min(max(mu, SHIFT_BASE_MU), SHIFT_MAX_MU))


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """σ' = s·σ / (1 + (s − 1)·σ): moves mass toward noise for s > 1 (shift σ, never t = 1 − σ)."""
    return shift * sigma / (1 + (shift - 1) * sigma)


@dataclass(frozen=True)
class TimestepSampling:
    distribution: str = "logit_normal"  # logit_normal | uniform
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift_mode: str = "resolution"  # resolution | static | none
    static_shift: float = 3.0

    def shift_for(self, height_px: int, width_px: int) -> float:
        if self.shift_mode == "resolution":
            return resolution_shift(height_px, width_px)
        return self.static_shift if self.shift_mode == "static" else 1.0


def sample_sigmas(n: int, spec: TimestepSampling, height_px: int, width_px: int,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """n training noise levels σ ∈ (0, 1) for a batch from one bucket. Shape (n,), float32, CPU."""
    if spec.distribution == "logit_normal":
        u = torch.randn(n, generator=generator) * spec.logit_std + spec.logit_mean
        sigma = torch.sigmoid(u)
    elif spec.distribution == "uniform":
        sigma = torch.rand(n, generator=generator)
    else:
        raise ValueError(f"unknown timestep distribution {spec.distribution!r}")
    return shift_sigma(sigma, spec.shift_for(height_px, width_px))


# ---------------------------------------------------------------- noise, target, loss (docs/recipe.md, Noise, time and target)

def _bcast(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return sigma.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def add_noise(x: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_σ = (1 − σ)·x + σ·ε."""
    s = _bcast(sigma, x)
    return (1 - s) * x + s * noise


def velocity_target(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The training target ε − x (what every backbone's `velocity` approximates)."""
    return noise - x


def loss_weights(sigma: torch.Tensor, weighting: str, gamma: float = 5.0) -> torch.Tensor:
    """Per-sample loss weights. 'none' is the official recipe (all ones).

    min_snr: min(SNR, γ)/SNR with SNR = ((1 − σ)/σ)², so near-clean samples weigh less (Hang et al.).
    cosmap: SD3's cosine-map weighting 2 / (π (1 − 2σ + 2σ²)).
    """
    sigma = sigma.float().clamp(1e-4, 1 - 1e-4)
    if weighting == "none":
        return torch.ones_like(sigma)
    if weighting == "min_snr":
        snr = ((1 - sigma) / sigma) ** 2
        return torch.clamp(snr, max=gamma) / snr
    if weighting == "cosmap":
        return 2.0 / (math.pi * (1 - 2 * sigma + 2 * sigma**2))
    raise ValueError(f"unknown loss weighting {weighting!r}")


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error per sample, in fp32. `mask` (B, 1|C, H, W) in [0, 1] restricts the mean."""
    err = (pred.float() - target.float()) ** 2
    if mask is None:
        return err.flatten(1).mean(1)
    m = mask.float().expand_as(err)
    return (err * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)


def flow_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted per-sample MSE, averaged over the batch (a scalar)."""
    per = per_sample_mse(pred, target, mask)
    return (per if weights is None else per * weights.to(per.device)).mean()


# ---------------------------------------------------------------- sampling (docs/recipe.md, Validation sampling)

Velocity = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SamplerSettings:
    steps: int = 20
    shift: float = 6.0  # static shift of the sampling schedule (the model's scheduler and ComfyUI use 6.0)
    guidance: float = 4.0
    cfg_renorm: float = 1.0  # 0 = off
    cfg_trunc: float = 1.0  # guidance only while t = 1 − σ < cfg_trunc
    guidance_rescale: float = 0.0  # 0 = off; φ of "Common Diffusion Noise Schedules are Flawed"


def sampling_sigmas(steps: int, shift: float) -> torch.Tensor:
    """steps+1 noise levels from 1 down to 0, shifted like ComfyUI's ModelSamplingDiscreteFlow."""
    return shift_sigma(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift).float()


def guide(cond: torch.Tensor, uncond: torch.Tensor, settings: SamplerSettings) -> torch.Tensor:
    """CFG on velocities, then the official renorm (cap ‖g‖ at r·‖cond‖ per sample) and rescale."""
    g = uncond + settings.guidance * (cond - uncond)
    dims = tuple(range(1, cond.dim()))
    if settings.cfg_renorm > 0:
        max_norm = torch.linalg.vector_norm(cond, dim=dims, keepdim=True) * settings.cfg_renorm
        norm = torch.linalg.vector_norm(g, dim=dims, keepdim=True)
        g = torch.where(norm > max_norm, g * (max_norm / norm.clamp_min(1e-12)), g)
    if settings.guidance_rescale > 0:
        std_c = cond.std(dim=dims, keepdim=True)
        std_g = g.std(dim=dims, keepdim=True).clamp_min(1e-12)
        g = settings.guidance_rescale * g * (std_c / std_g) + (1 - settings.guidance_rescale) * g
    return g


@torch.no_grad()
def sample(velocity: Velocity, noise: torch.Tensor, cond: tuple[torch.Tensor, torch.Tensor],
           uncond: tuple[torch.Tensor, torch.Tensor] | None, settings: SamplerSettings) -> torch.Tensor:
    """Flow Euler sampling from pure noise (σ = 1) to a clean latent (σ = 0).

    Args:
        velocity: `(x_σ, σ, cap_feats, cap_mask) -> ε − x` (a backbone's `velocity`).
        noise: (B, 16, h, w) starting latent.
        cond, uncond: (cap_feats (B, L, D), cap_mask (B, L)); uncond None disables CFG.
    """
    x = noise
    sigmas = sampling_sigmas(settings.steps, settings.shift).to(noise.device)
    use_cfg = uncond is not None and settings.guidance != 1.0
    for i in range(settings.steps):
        sigma = sigmas[i].expand(x.shape[0])
        v = velocity(x, sigma, *cond)
        if use_cfg and (1.0 - float(sigmas[i])) < settings.cfg_trunc:
            v = guide(v, velocity(x, sigma, *uncond), settings)
        x = x + (sigmas[i + 1] - sigmas[i]) * v.to(x.dtype)
    return x


# ---------------------------------------------------------------- per-family defaults (docs/recipe.md, Z-Image training)

# The noise levels and sampler each NextDiT member trains and previews with; one home. Lumina2's are the config
# defaults (config/train.py, config/outputs.py); a member's values replace the defaults a run leaves unchanged.
# Both Z-Image variants train with what diffusers' Z-Image DreamBooth script does with the model's scheduler:
# σ uniform (its default weighting_scheme "none"), shifted by the scheduler's static shift 3 (Tongyi-MAI/Z-Image's
# DEFAULT_SCHEDULER_SHIFT; ComfyUI samples every Z-Image with shift 3).


@dataclass(frozen=True)
class FamilyRecipe:
    key: str  # lumina2 | zimage-turbo | zimage-base
    title: str
    timesteps: TimestepSampling
    sampler: SamplerSettings


ZIMAGE_TIMESTEPS = TimestepSampling("uniform", shift_mode="static", static_shift=3.0)
FAMILY_RECIPES = {
    "lumina2": FamilyRecipe("lumina2", "Lumina-Image-2.0", TimestepSampling(), SamplerSettings()),
    # 8 flow-Euler steps on σ = shift₃(linspace(1, 0, 9)), no CFG: Turbo is CFG-distilled (the official
    # README's num_inference_steps=9 runs 8 DiT forwards on this grid; diffusers' guidance_scale 0 = ours 1)
    "zimage-turbo": FamilyRecipe("zimage-turbo", "Z-Image-Turbo", ZIMAGE_TIMESTEPS,
                                 SamplerSettings(steps=8, shift=3.0, guidance=1.0, cfg_renorm=0.0)),
    # 50 steps with CFG (the official model zoo: 50 steps, CFG). diffusers' ZImagePipeline default guidance_scale
    # 5 computes cond + 5·(cond − uncond) = uncond + 6·(cond − uncond): ours 6. cfg_normalization off (ours 0),
    # cfg_truncation 1 (always guided)
    "zimage-base": FamilyRecipe("zimage-base", "Z-Image (Base)", ZIMAGE_TIMESTEPS,
                                SamplerSettings(steps=50, shift=3.0, guidance=6.0, cfg_renorm=0.0)),
}


def family_recipe(key: str) -> FamilyRecipe:
    """The recipe of 'lumina2', 'zimage-turbo' or 'zimage-base'."""
    if key not in FAMILY_RECIPES:
        raise ValueError(f"unknown family recipe {key!r}; known: {', '.join(FAMILY_RECIPES)}")
    return FAMILY_RECIPES[key]


def diffusers_guidance(guidance_scale: float) -> float:
    """diffusers' Z-Image `guidance_scale` s (cond + s·(cond − uncond)) as our CFG scale (uncond + g·(cond − uncond)):
    g = 1 + s; s = 0 is no guidance."""
    return 1.0 + guidance_scale
