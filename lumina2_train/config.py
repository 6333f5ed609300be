"""The one typed configuration tree (`RunConfig`) used by the nodes and the CLI alike.

Defaults live only here. `validate()` reports every problem at once, each naming its dotted field
path. `from_dict()` rejects unknown keys by name; `to_dict()` / `from_dict()` round-trip exactly.
Choice lists are module constants so node widgets, validation and error text share one source.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .paths import name_problem

try:  # Python 3.11+
    import tomllib
except ImportError:  # Python 3.10 (ComfyUI still supports it)
    import tomli as tomllib

CAPTION_STRATEGIES = ("textfile", "filename", "jsonl", "csv", "instance")
RESOLUTION_TYPES = ("pixel_area", "shortest_side")
CROP_STYLES = ("center", "random", "none")
CROP_ASPECTS = ("preserve", "square")
CAPTION_POLICIES = ("error", "skip", "empty")
FILE_POLICIES = ("error", "skip")  # unreadable/corrupt images, non-UTF-8 captions
DUPLICATE_POLICIES = ("error", "skip", "keep")  # images sharing one caption file (same stem)
BUCKET_STEPS = (16, 32, 64)
SYSTEM_PROMPTS = ("superior", "alignment", "base", "none", "custom")
ADAPTER_KINDS = ("lora", "lokr", "loha", "full")
TARGET_GROUPS = ("attention", "ffn", "adaln", "final", "embedders")
TARGET_PRESETS = {
    "attention": ("attention",),  # diffusers / SimpleTuner default
    "attention_ffn": ("attention", "ffn"),
    "all": ("attention", "ffn", "adaln"),  # kohya / diffusion-pipe: every Linear of every block
}
LORA_INITS = ("default", "gaussian")
OPTIMIZERS = ("adamw", "adamw_bf16", "adamw8bit", "lion", "prodigy", "optimi-stableadamw",
              "adamw_schedulefree", "adafactor")
SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
TIMESTEP_SAMPLINGS = ("logit_normal", "uniform")
SHIFT_MODES = ("resolution", "static", "none")
LOSS_WEIGHTINGS = ("none", "min_snr", "cosmap")
PRECISIONS = ("bf16", "fp32")
CHECKPOINTING = ("on", "off", "auto")
OPTIMIZER_STATES = ("fp32", "8bit")
BASE_PRECISIONS = ("no_change", "fp8", "int8", "int8-torchao", "fp8-torchao")
SAVE_DTYPES = ("bf16", "fp16", "fp32")
LORA_FORMATS = ("comfyui", "kohya", "diffusers")
NONFINITE_POLICIES = ("stop", "skip")


def _choice(at: str, value: Any, options: tuple | dict) -> list[str]:
    if value in options:
        return []
    return [f"{at} '{value}' is unknown; choose one of {', '.join(map(str, options))}"]


def _range(at: str, value: float, lo: float | None = None, hi: float | None = None) -> list[str]:
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        lims = f">= {lo}" if hi is None else (f"<= {hi}" if lo is None else f"between {lo} and {hi}")
        return [f"{at} must be {lims} (got {value})"]
    return []


def _colour(at: str, value: str) -> list[str]:
    from PIL import ImageColor  # Pillow is a dependency; imported here to keep config import light

    try:
        ImageColor.getrgb(value)
        return []
    except ValueError:
        return [f"{at} '{value}' is not a colour; use a name like 'white' or '#rrggbb'"]


@dataclass(frozen=True)
class ModelConfig:
    """Where the base weights come from (CLI). Inside ComfyUI the MODEL/CLIP/VAE inputs replace this."""

    transformer: str = ""  # diffusers Lumina2 folder (with transformer/), or a ComfyUI diffusion-model / all-in-one file
    text_encoder: str = ""  # diffusers text_encoder folder, HF Gemma2 folder, or ComfyUI text-encoder file
    tokenizer: str = ""  # optional; defaults to the text encoder's folder / the tokenizer inside the file
    vae: str = ""  # diffusers vae folder or a ComfyUI/Flux ae.safetensors
    dtype: str = "bf16"  # compute dtype of the frozen base
    base_precision: str = "no_change"  # storage of the frozen base: fp8 | int8 (backbones/quant.py), *-torchao
    quantize_via: str = "accelerator"  # cpu | accelerator

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
        return out


@dataclass(frozen=True)
class DatasetConfig:
    """One folder (or metadata file) of images with captions; several make a run (multidatabackend)."""

    path: str = ""
    caption_strategy: str = "textfile"
    caption_extension: str = ".txt"
    metadata_file: str = ""  # jsonl/csv with path + caption columns (relative paths resolve against `path`)
    instance_prompt: str = ""  # the caption of every image for caption_strategy 'instance'
    recursive: bool = True
    repeats: int = 1
    resolution: int = 1024  # pixel_area: target area = resolution²; shortest_side: the short side in px
    resolution_type: str = "pixel_area"
    bucket_step_px: int = 16
    min_size_px: int = 256  # images whose short side is smaller are skipped
    max_size_px: int = 0  # 0 = no limit; images whose long side is larger are downsampled before bucketing
    target_downsample_px: int = 0  # long side after that downsample; 0 = max_size_px
    max_aspect_ratio: float = 4.0  # long/short side above this is skipped
    crop_style: str = "center"
    crop_aspect: str = "preserve"
    flip: bool = False  # also cache the horizontally flipped latent, drawn at random
    missing_caption: str = "error"
    empty_caption: str = "error"
    invalid_caption: str = "error"  # caption that is not UTF-8 or cannot be read: error | skip
    duplicate_stem: str = "error"  # textfile captions shared by a.png and a.jpg: error | skip | keep
    bad_image: str = "skip"  # zero-byte, truncated, not an image, unreadable: error | skip (reported either way)
    background: str = "white"  # colour that transparent pixels are composited on (name or #rrggbb)
    shuffle_tags: bool = False
    keep_tags: int = 0  # with shuffle_tags: keep the first N comma-separated tags in place
    is_regularisation: bool = False
    loss_weight: float = 1.0  # prior-loss weight for regularisation sets
    mask_strategy: str = "none"  # none | alpha | folder (masked loss: white/opaque trains, black is ignored)
    mask_folder: str = ""  # for 'folder': masks with the image's relative path and stem, any image type
    missing_mask: str = "error"  # with mask_strategy 'folder': an image without a mask file: error | skip

    def errors(self, at: str) -> list[str]:
        out = [] if self.path else [f"{at}.path is empty; give the folder that holds the images"]
        out += _choice(f"{at}.caption_strategy", self.caption_strategy, CAPTION_STRATEGIES)
        out += _choice(f"{at}.resolution_type", self.resolution_type, RESOLUTION_TYPES)
        out += _choice(f"{at}.bucket_step_px", self.bucket_step_px, BUCKET_STEPS)
        out += _choice(f"{at}.crop_style", self.crop_style, CROP_STYLES)
        out += _choice(f"{at}.crop_aspect", self.crop_aspect, CROP_ASPECTS)
        out += _choice(f"{at}.missing_caption", self.missing_caption, CAPTION_POLICIES)
        out += _choice(f"{at}.empty_caption", self.empty_caption, CAPTION_POLICIES)
        out += _choice(f"{at}.invalid_caption", self.invalid_caption, FILE_POLICIES)
        out += _choice(f"{at}.duplicate_stem", self.duplicate_stem, DUPLICATE_POLICIES)
        out += _choice(f"{at}.bad_image", self.bad_image, FILE_POLICIES)
        out += _choice(f"{at}.mask_strategy", self.mask_strategy, ("none", "alpha", "folder"))
        out += _range(f"{at}.repeats", self.repeats, 1)
        out += _range(f"{at}.resolution", self.resolution, 64, 4096)
        out += _range(f"{at}.min_size_px", self.min_size_px, 0)
        out += _range(f"{at}.max_size_px", self.max_size_px, 0)
        out += _range(f"{at}.target_downsample_px", self.target_downsample_px, 0)
        out += _colour(f"{at}.background", self.background)
        out += _range(f"{at}.max_aspect_ratio", self.max_aspect_ratio, 1.0)
        out += _range(f"{at}.keep_tags", self.keep_tags, 0)
        out += _range(f"{at}.loss_weight", self.loss_weight, 0.0)
        if self.caption_strategy == "instance" and not self.instance_prompt:
            out.append(f"{at}.instance_prompt is empty but caption_strategy is 'instance'; write the prompt")
        if self.caption_strategy in ("jsonl", "csv") and not self.metadata_file:
            out.append(f"{at}.metadata_file is empty but caption_strategy is '{self.caption_strategy}'; "
                       "give the metadata file")
        out += _choice(f"{at}.missing_mask", self.missing_mask, FILE_POLICIES)
        if self.mask_strategy == "folder" and not self.mask_folder:
            out.append(f"{at}.mask_folder is empty but mask_strategy is 'folder'; give the mask folder")
        return out


@dataclass(frozen=True)
class DataConfig:
    datasets: tuple[DatasetConfig, ...] = ()
    seed: int = 0  # bucket crops and random choices made while scanning

    def errors(self, at: str = "data") -> list[str]:
        if not self.datasets:
            return [f"{at}.datasets is empty; add at least one dataset folder"]
        return [e for i, d in enumerate(self.datasets) for e in d.errors(f"{at}.datasets[{i}]")]


@dataclass(frozen=True)
class CacheConfig:
    dir: str = ""  # cache root; empty = '<output_dir>/cache'
    system_prompt: str = "superior"
    custom_system_prompt: str = ""
    max_caption_tokens: int = 256
    encode_batch_size: int = 4  # texts per text-encoder call
    # images per VAE call; 1 keeps cached latents bit-identical to on-the-fly (vae_cache_disable) encoding,
    # larger batches are faster but can differ in the last float bits (kernels depend on batch size)
    vae_batch_size: int = 1
    vae_cache_disable: bool = False  # encode latents on the fly during training instead of caching them

    def errors(self, at: str = "cache") -> list[str]:
        out = _choice(f"{at}.system_prompt", self.system_prompt, SYSTEM_PROMPTS)
        out += _range(f"{at}.max_caption_tokens", self.max_caption_tokens, 8, 4096)
        out += _range(f"{at}.encode_batch_size", self.encode_batch_size, 1)
        out += _range(f"{at}.vae_batch_size", self.vae_batch_size, 1)
        if self.system_prompt == "custom" and not self.custom_system_prompt.strip():
            out.append(f"{at}.custom_system_prompt is empty but system_prompt is 'custom'; write the prompt")
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
        if not self.targets and self.kind != "full":
            out.append(f"{at}.targets is empty; choose at least one of {', '.join(TARGET_GROUPS)}")
        if self.kind == "full" and self.init_from:
            out.append(f"{at}.init_from is set but kind is 'full': a full fine-tune starts from the model it is "
                       "given; load a fine-tuned model file as that model instead, or clear init_from")
        if self.kind == "full" and self.init_from:
            out.append(f"{at}.init_from is set but kind is 'full': a full fine-tune starts from the model it is "
                       "given; load a fine-tuned model file as that model instead, or clear init_from")
        if self.blocks != "all":
            try:
                parse_block_spec(self.blocks, 10_000)
            except ValueError as e:
                out.append(f"{at}.blocks {e}")
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


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000  # optimizer steps
    batch_size: int = 1  # per micro-step
    grad_accum: int = 1
    lr: float = 1e-4
    optimizer: str = "adamw"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0 = no clipping
    scheduler: str = "constant"
    warmup_steps: int = 0
    num_cycles: int = 1  # cosine_with_restarts
    power: float = 1.0  # polynomial
    min_lr_ratio: float = 0.0  # linear / cosine / polynomial decay end, as a fraction of lr
    seed: int = 42
    precision: str = "bf16"  # autocast dtype of the forward/backward
    checkpointing: str = "on"
    timestep_sampling: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift_mode: str = "resolution"  # resolution-dependent shift (flux/lumina auto shift), static, none
    static_shift: float = 3.0
    loss_weighting: str = "none"
    min_snr_gamma: float = 5.0
    caption_dropout: float = 0.0
    use_ema: bool = False
    ema_decay: float = 0.999
    ema_every_n_steps: int = 1
    ema_on_cpu: bool = False
    on_nonfinite: str = "stop"
    # Scheduled sampling (EXPERIMENTAL): with this probability a sample's x_σ comes from the model's own
    # Euler rollout from a higher noise level instead of the exact interpolation (train/rollout.py).
    rollout_probability: float = 0.0
    rollout_max_offset: float = 0.2  # the rollout starts at σ + U(0, offset)·(1 − σ)
    rollout_steps: int = 2
    compile: bool = False  # regional torch.compile of the transformer blocks (CUDA)
    # checkpointing 'auto': GiB the run may use on the GPU (0 = 90 % of the card); blocks keep their
    # activations (no recompute) while the measured step still fits (train/memory.py)
    memory_budget_gib: float = 0.0
    optimizer_states: str = "fp32"  # adamw moments: fp32 | 8bit (fp8 with block scales, train/lowmem.py)
    optimizer_in_backward: bool = False  # update each weight as its gradient completes (no gradient buffer)
    # Within a bucket, batch samples of equal caption length first (attention needs no padding mask); only
    # the leftovers mix lengths. Changes the batch order, not what a batch computes.
    group_by_caption_length: bool = True
    # lr × f(batch_size × grad_accum × processes): none | linear | sqrt (train/distributed.py; logged)
    scale_lr: str = "none"

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size * self.grad_accum

    def errors(self, at: str = "train") -> list[str]:
        out = _range(f"{at}.steps", self.steps, 1)
        out += _range(f"{at}.batch_size", self.batch_size, 1)
        out += _range(f"{at}.grad_accum", self.grad_accum, 1)
        out += _range(f"{at}.lr", self.lr, 0.0, 1.0)
        out += _choice(f"{at}.optimizer", self.optimizer, OPTIMIZERS)
        out += _choice(f"{at}.scheduler", self.scheduler, SCHEDULERS)
        out += _choice(f"{at}.precision", self.precision, PRECISIONS)
        out += _choice(f"{at}.checkpointing", self.checkpointing, CHECKPOINTING)
        out += _choice(f"{at}.timestep_sampling", self.timestep_sampling, TIMESTEP_SAMPLINGS)
        out += _choice(f"{at}.shift_mode", self.shift_mode, SHIFT_MODES)
        out += _choice(f"{at}.loss_weighting", self.loss_weighting, LOSS_WEIGHTINGS)
        out += _choice(f"{at}.on_nonfinite", self.on_nonfinite, NONFINITE_POLICIES)
        out += _choice(f"{at}.scale_lr", self.scale_lr, ("none", "linear", "sqrt"))
        out += _range(f"{at}.warmup_steps", self.warmup_steps, 0)
        out += _range(f"{at}.max_grad_norm", self.max_grad_norm, 0.0)
        out += _range(f"{at}.caption_dropout", self.caption_dropout, 0.0, 1.0)
        out += _range(f"{at}.static_shift", self.static_shift, 0.01, 100.0)
        out += _range(f"{at}.logit_std", self.logit_std, 1e-3)
        out += _range(f"{at}.ema_decay", self.ema_decay, 0.0, 1.0)
        out += _range(f"{at}.ema_every_n_steps", self.ema_every_n_steps, 1)
        out += _range(f"{at}.min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        out += _range(f"{at}.num_cycles", self.num_cycles, 1)
        out += _range(f"{at}.rollout_probability", self.rollout_probability, 0.0, 1.0)
        out += _range(f"{at}.rollout_max_offset", self.rollout_max_offset, 0.0, 1.0)
        out += _range(f"{at}.rollout_steps", self.rollout_steps, 1, 50)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            out.append(f"{at}.betas must be two numbers in [0, 1) (got {list(self.betas)})")
        return out + self._memory_errors(at)

    def _memory_errors(self, at: str) -> list[str]:
        out = _range(f"{at}.memory_budget_gib", self.memory_budget_gib, 0.0)
        out += _choice(f"{at}.optimizer_states", self.optimizer_states, OPTIMIZER_STATES)
        if (self.optimizer_states != "fp32" or self.optimizer_in_backward) and self.optimizer != "adamw":
            out.append(f"{at}.optimizer_states / optimizer_in_backward work with optimizer 'adamw' (got "
                       f"'{self.optimizer}'); choose 'adamw' or turn them off")
        if self.optimizer_in_backward and (self.grad_accum != 1 or self.max_grad_norm > 0):
            out.append(f"{at}.optimizer_in_backward needs grad_accum 1 and max_grad_norm 0 (got "
                       f"{self.grad_accum} and {self.max_grad_norm}): both need every gradient at once")
        return out


@dataclass(frozen=True)
class ValidationConfig:
    prompts: tuple[str, ...] = ()
    negative_prompt: str = ""
    guidance: float = 4.0
    cfg_renorm: float = 1.0  # 0 = off; else cap ‖guided‖ at cfg_renorm·‖cond‖ (official renorm_cfg)
    cfg_trunc: float = 1.0  # guidance only while t = 1 − σ < cfg_trunc; 1.0 = always (official 0.25)
    guidance_rescale: float = 0.0
    disable_unconditional: bool = False
    steps: int = 20
    shift: float = 6.0
    seed: int = 0
    width: int = 1024
    height: int = 1024
    every_n_steps: int = 0  # 0 = only before and after training
    use_ema: bool = False
    prompt_library: str = ""  # a JSON file {"name": "prompt", ...}; its prompts join `prompts`
    evaluation_type: str = "none"  # none | clip (CLIP score of each validation image against its prompt)
    clip_model: str = ""  # a local transformers CLIP folder, for evaluation_type 'clip'
    eval_every_n_steps: int = 0  # held-out loss at fixed σ bins; 0 = off
    eval_holdout: int = 0  # items (after repeats are ignored) kept out of training for the held-out loss
    eval_sigmas: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)

    def errors(self, at: str = "validation") -> list[str]:
        out = _range(f"{at}.guidance", self.guidance, 0.0, 100.0)
        out += _range(f"{at}.cfg_renorm", self.cfg_renorm, 0.0, 100.0)
        out += _range(f"{at}.cfg_trunc", self.cfg_trunc, 0.0, 1.0)
        out += _range(f"{at}.guidance_rescale", self.guidance_rescale, 0.0, 1.0)
        out += _range(f"{at}.steps", self.steps, 1, 1000)
        out += _range(f"{at}.shift", self.shift, 0.01, 100.0)
        out += _range(f"{at}.every_n_steps", self.every_n_steps, 0)
        out += _choice(f"{at}.evaluation_type", self.evaluation_type, ("none", "clip"))
        out += _range(f"{at}.eval_every_n_steps", self.eval_every_n_steps, 0)
        out += _range(f"{at}.eval_holdout", self.eval_holdout, 0)
        if self.evaluation_type == "clip" and not self.clip_model:
            out.append(f"{at}.clip_model is empty but evaluation_type is 'clip'; give a local CLIP model folder")
        if self.eval_every_n_steps and not self.eval_holdout:
            out.append(f"{at}.eval_holdout is 0 but eval_every_n_steps is set; hold out at least one image")
        if not all(0.0 < s < 1.0 for s in self.eval_sigmas):
            out.append(f"{at}.eval_sigmas must lie strictly between 0 and 1 (got {list(self.eval_sigmas)})")
        if self.prompt_library:
            from pathlib import Path

            if not Path(self.prompt_library).is_file():
                out.append(f"{at}.prompt_library '{self.prompt_library}' is not a file; give a JSON file "
                           '{"name": "prompt"}')
        for side in ("width", "height"):
            v = getattr(self, side)
            if v < 16 or v % 16:
                out.append(f"{at}.{side} must be a multiple of 16 and at least 16 (got {v})")
        return out


@dataclass(frozen=True)
class SaveConfig:
    output_dir: str = "output/lumina2_train"
    name: str = "lumina2_lora"
    format: str = "comfyui"
    dtype: str = "bf16"
    every_n_steps: int = 0  # resumable checkpoint + LoRA file every N steps; 0 = only at the end
    keep_last: int = 2  # checkpoints kept (older ones are deleted; LoRA files are kept)
    save_ema: bool = True  # with train.use_ema: the LoRA file holds the EMA weights (else the raw ones)

    def errors(self, at: str = "save") -> list[str]:
        out = _choice(f"{at}.format", self.format, LORA_FORMATS)
        out += _choice(f"{at}.dtype", self.dtype, SAVE_DTYPES)
        out += _range(f"{at}.every_n_steps", self.every_n_steps, 0)
        out += _range(f"{at}.keep_last", self.keep_last, 1)
        problem = name_problem(self.name, f"{at}.name")  # absolute, '..', reserved, invisible characters, ...
        if problem or "\\" in self.name:
            out.append(problem or f"{at}.name '{self.name}' holds '\\'; use '/' between subfolders")
        return out


REPORT_TO = ("tensorboard", "wandb", "none")


@dataclass(frozen=True)
class TrackingConfig:
    """Experiment trackers fed by train/trackers.py (hooks); none by default."""

    report_to: tuple[str, ...] = ()  # tensorboard | wandb (offline without network); () or "none" = no tracker
    project: str = "lumina2-train"
    run_name: str = ""  # "" = the run folder's name
    log_every_n_steps: int = 1
    log_dir: str = ""  # tensorboard / wandb files; "" = <run folder>/logs

    def errors(self, at: str = "tracking") -> list[str]:
        out = [e for r in self.report_to for e in _choice(f"{at}.report_to", r, REPORT_TO)]
        out += _range(f"{at}.log_every_n_steps", self.log_every_n_steps, 1)
        if "none" in self.report_to and len(self.report_to) > 1:
            out.append(f"{at}.report_to mixes 'none' with trackers (got {list(self.report_to)}); keep one")
        return out


@dataclass(frozen=True)
class HubConfig:
    """Upload to the Hugging Face Hub after the run (hub.py); the local files are always written first."""

    push: bool = False  # LoRA, model card (README.md), samples and config after training
    push_checkpoints: bool = False  # also each intermediate checkpoint and LoRA as it is saved
    model_id: str = ""  # "user/name", or "name" under your account
    private: bool = False

    def errors(self, at: str = "hub") -> list[str]:
        import re

        out = []
        if (self.push or self.push_checkpoints) and not self.model_id:
            out.append(f"{at}.model_id is empty but {at}.push is set; give the repository, like 'me/my-lora'")
        if self.model_id and not re.fullmatch(r"[\w.-]{1,96}(/[\w.-]{1,96})?", self.model_id):
            out.append(f"{at}.model_id '{self.model_id}' is not a Hub repository name; use 'user/name' with "
                       "letters, digits, '-', '_' and '.'")
        if self.push_checkpoints and not self.push:
            out.append(f"{at}.push_checkpoints needs {at}.push; set both")
        return out


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    save: SaveConfig = field(default_factory=SaveConfig)
    resume_from: str = ""  # a checkpoint folder written by a previous run
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    hub: HubConfig = field(default_factory=HubConfig)

    def errors(self) -> list[str]:
        return (self.data.errors("data") + self.model.errors("model") + self.cache.errors("cache")
                + self.adapter.errors("adapter") + self.train.errors("train")
                + self.validation.errors("validation") + self.save.errors("save")
                + self.tracking.errors("tracking") + self.hub.errors("hub") + self._format_errors())

    def _format_errors(self) -> list[str]:
        """LoHa, LoKr and DoRA files exist only in the comfyui layout (found now, not when the file is saved)."""
        a = self.adapter
        if a.kind in ("loha", "lokr") or (a.kind == "lora" and a.use_dora):
            if self.save.format != "comfyui":
                what = "DoRA" if a.kind == "lora" else a.kind
                return [f"save.format '{self.save.format}' cannot hold a {what} adapter (kohya and diffusers files "
                        "hold plain LoRA); set save.format to comfyui"]
        return []

    def validate(self, *, need_data: bool = True) -> RunConfig:
        errs = self.errors()
        if not need_data:
            errs = [e for e in errs if not e.startswith("data.")]
        if errs:
            raise ConfigError(errs)
        return self

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        return from_dict(cls, d)


def to_dict(obj: Any) -> Any:
    """Dataclass tree -> plain JSON-able dict (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    return obj


def from_dict(cls: type, d: Any, at: str = "") -> Any:
    """Plain dict -> dataclass `cls`; unknown keys and wrong types raise ConfigError naming the path."""
    problems: list[str] = []
    value = _convert(cls, d, at, problems)
    if problems:
        raise ConfigError(problems)
    return value


def _convert(tp: Any, value: Any, at: str, problems: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"{at or 'config'} must be a table/object (got {type(value).__name__})")
            return tp()
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        for key in value:
            if key not in names:
                problems.append(f"{_join(at, key)} is not a known setting; known: {', '.join(sorted(names))}")
        kwargs = {k: _convert(hints[k], v, _join(at, k), problems) for k, v in value.items() if k in names}
        return tp(**kwargs)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value] if isinstance(value, str) else value
        if not isinstance(value, (list, tuple)):
            problems.append(f"{at} must be a list (got {type(value).__name__})")
            return ()
        args = typing.get_args(tp)
        item_types = [args[0]] * len(value) if (len(args) == 2 and args[1] is Ellipsis) else list(args)
        if len(item_types) != len(value):
            problems.append(f"{at} must have {len(item_types)} items (got {len(value)})")
            return tuple(value)
        return tuple(_convert(t, v, f"{at}[{i}]", problems) for i, (t, v) in enumerate(zip(item_types, value)))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        problems.append(f"{at} must be {tp.__name__} (got {value!r})")
    return value


def _join(at: str, key: str) -> str:
    return f"{at}.{key}" if at else key


def load_run_config(path: str | Path) -> RunConfig:
    """Read a TOML or JSON run config; relative dataset/model paths resolve against the file's folder."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such config file. Give the path of a .toml or .json run config")
    try:
        raw = tomllib.loads(p.read_text("utf-8")) if p.suffix == ".toml" else json.loads(p.read_text("utf-8"))
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot be parsed ({e}). Fix the syntax") from None
    return RunConfig.from_dict(_resolve_paths(raw, p.parent))


def _resolve_paths(raw: dict, base: Path) -> dict:
    def fix(v: str) -> str:
        return str((base / v).resolve()) if v and not Path(v).is_absolute() else v

    raw = json.loads(json.dumps(raw))
    for ds in raw.get("data", {}).get("datasets", []):
        for k in ("path", "mask_folder"):
            if k in ds:
                ds[k] = fix(ds[k])
    for k in ("transformer", "text_encoder", "tokenizer", "vae"):
        if k in raw.get("model", {}):
            raw["model"][k] = fix(raw["model"][k])
    for k in ("prompt_library", "clip_model"):
        if k in raw.get("validation", {}):
            raw["validation"][k] = fix(raw["validation"][k])
    return raw
