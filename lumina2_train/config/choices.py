"""Choice lists (node widgets, validation and error text share them) and the checks every section uses."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

CAPTION_STRATEGIES = ("textfile", "filename", "jsonl", "csv", "instance")
RESOLUTION_TYPES = ("pixel_area", "shortest_side")
CROP_STYLES = ("center", "random", "none")
CROP_ASPECTS = ("preserve", "square")
CAPTION_POLICIES = ("error", "skip", "empty")
FILE_POLICIES = ("error", "skip")  # unreadable/corrupt images, non-UTF-8 captions
DUPLICATE_POLICIES = ("error", "skip", "keep")  # images sharing one caption file (same stem)
BUCKET_STEPS = (16, 32, 64)
SYSTEM_PROMPTS = ("superior", "alignment", "base", "none", "custom")
MASK_STRATEGIES = ("none", "alpha", "folder")
ADAPTER_KINDS = ("lora", "loha", "lokr", "full")
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
TEXT_NUMERICS = ("comfyui", "transformers")  # model.text_encoder_numerics (encoders/hf.py)
CHECKPOINTING = ("on", "off", "auto")
OPTIMIZER_STATES = ("fp32", "8bit")
BASE_PRECISIONS = ("no_change", "fp8", "int8", "int8-torchao", "fp8-torchao")
# compute of the frozen base's block GEMMs: exact bf16, fp8 tensor cores, or the same fp8 maths emulated (tests)
BASE_COMPUTES = ("bf16", "fp8", "fp8_emulated")
SAVED_ACTIVATIONS = ("bf16", "fp8")  # what blocks that keep their activations store for backward
SAVE_DTYPES = ("bf16", "fp16", "fp32")
LORA_FORMATS = ("comfyui", "kohya", "diffusers")
NONFINITE_POLICIES = ("stop", "skip")
LR_SCALINGS = ("none", "linear", "sqrt")  # train.scale_lr
QUANTIZE_VIA = ("cpu", "accelerator")
ZIMAGE_VARIANTS = ("auto", "turbo", "base")  # model.variant (train/recipe_choice.py)
EVALUATION_TYPES = ("none", "clip")
SEED_MAX = 2**31 - 1  # seed widgets' upper end


def _choice(at: str, value: Any, options: tuple | dict) -> list[str]:
    if value in options:
        return []
    return [f"{at} '{value}' is unknown; choose one of {', '.join(map(str, options))}"]


def _range(at: str, value: float, lo: float | None = None, hi: float | None = None) -> list[str]:
    if isinstance(value, float) and not math.isfinite(value):
        return [_not_finite(at, value)]
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        lims = f">= {lo}" if hi is None else (f"<= {hi}" if lo is None else f"between {lo} and {hi}")
        return [f"{at} must be {lims} (got {value})"]
    return []


def _not_finite(at: str, value: float) -> str:
    return f"{at} must be a finite number (got {value}); write a number (TOML nan/inf and JSON NaN/Infinity are refused)"


def nonfinite_errors(obj: Any, at: str) -> list[str]:
    """Every float setting of the dataclass tree `obj` that is NaN or infinite, by dotted field path.

    Generic over the fields (nested sections, tuples of sections or of floats), so a float setting added
    later is covered without a line of its own. `_range` words its message the same way, so a caller that
    joins both can drop the repeats.
    """
    if dataclasses.is_dataclass(obj):
        return [e for f in dataclasses.fields(obj) for e in nonfinite_errors(getattr(obj, f.name), f"{at}.{f.name}")]
    if isinstance(obj, (tuple, list)):
        return [e for i, v in enumerate(obj) for e in nonfinite_errors(v, f"{at}[{i}]")]
    if isinstance(obj, float) and not math.isfinite(obj):
        return [_not_finite(at, obj)]
    return []


def _colour(at: str, value: str) -> list[str]:
    from PIL import ImageColor  # Pillow is a dependency; imported here to keep config import light

    try:
        ImageColor.getrgb(value)
        return []
    except ValueError:
        return [f"{at} '{value}' is not a colour; use a name like 'white' or '#rrggbb'"]
