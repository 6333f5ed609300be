"""Which training recipe a run uses (docs/recipe.md, Z-Image training).

The NextDiT member comes from the weights (backbones/family.py). Z-Image-Turbo and Z-Image (Base) have the same
tensors, so for Z-Image the variant is `model.variant`, or with 'auto' the model's file or folder name. The
member's recipe (recipe.FAMILY_RECIPES) then fills every timestep and sampler setting the run left at its
default; a value the user changed wins. No ComfyUI imports.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

from .. import recipe
from ..backbones import family
from ..config import RunConfig
from ..errors import ModelError

log = logging.getLogger(__name__)

# TrainConfig field -> TimestepSampling field; the ValidationConfig fields that are SamplerSettings fields
TRAIN_FIELDS = {"timestep_sampling": "distribution", "logit_mean": "logit_mean", "logit_std": "logit_std",
                "shift_mode": "shift_mode", "static_shift": "static_shift"}
SAMPLER_FIELDS = ("steps", "shift", "guidance", "cfg_renorm", "cfg_trunc", "guidance_rescale")
TURBO_WITHOUT_TRAINING_ADAPTER = (
    "%s: Z-Image-Turbo is step-distilled, and a LoRA trained on it directly tends to undo the distillation (its "
    "images drift to soft, generic ones at 8 steps). Set adapter.training_adapter (Configure Adapter's "
    "training_adapter) to a de-distillation LoRA for Z-Image-Turbo, or train on Z-Image (Base); docs/recipe.md, "
    "'The training adapter'")
_DE_TURBO = re.compile(r"de[-_ ]?turbo")  # a de-distilled Turbo (neither recipe is known to fit it)
_ZIMAGE_NAME = re.compile(r"z[-_ ]?image")


def variant_from_name(source: str | None) -> str | None:
    """'turbo' or 'base' read from a model path's last four parts (a Hugging Face cache path names the repository
    three folders above transformer/), None when the name does not say."""
    if not source:
        return None
    name = " ".join(Path(str(source)).parts[-4:]).lower()
    if _DE_TURBO.search(name):
        return None
    if "turbo" in name:
        return "turbo"
    if "base" in name or _ZIMAGE_NAME.search(name):
        return "base"
    return None


def with_recipe(cfg: RunConfig, key: str) -> RunConfig:
    """`cfg` with recipe `key`'s values in every timestep / sampler setting left at its default."""
    fam = recipe.family_recipe(key)
    train_defaults, val_defaults = type(cfg.train)(), type(cfg.validation)()
    train = {f: getattr(fam.timesteps, t) for f, t in TRAIN_FIELDS.items()
             if getattr(cfg.train, f) == getattr(train_defaults, f)}
    val = {f: getattr(fam.sampler, f) for f in SAMPLER_FIELDS
           if getattr(cfg.validation, f) == getattr(val_defaults, f)}
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train),
                               validation=dataclasses.replace(cfg.validation, **val))


def _previews(cfg: RunConfig) -> bool:
    return bool(cfg.validation.prompts or cfg.validation.prompt_library)


def recipe_key(cfg: RunConfig, arch, *, source: str | None, where: str) -> str | None:
    """'lumina2', 'zimage-turbo', 'zimage-base', or None for a Z-Image whose variant is unknown and does not
    matter to this run (no previews, or preview settings the user chose)."""
    if arch.family != family.ZIMAGE:
        if cfg.model.variant != "auto":
            log.warning("model.variant '%s' applies to Z-Image only; this is %s, so it is ignored",
                        cfg.model.variant, family.NAMES.get(arch.family, arch.family))
        return arch.family
    variant = cfg.model.variant if cfg.model.variant != "auto" else variant_from_name(source)
    if variant is not None:
        return f"zimage-{variant}"
    turbo, base = with_recipe(cfg, "zimage-turbo"), with_recipe(cfg, "zimage-base")
    if _previews(cfg) and turbo.validation != base.validation:
        raise ModelError(
            f"{where}: this is Z-Image, and Z-Image-Turbo and Z-Image (Base) have the same weights' shapes; the name "
            f"{source!r} does not say which, and the validation previews sample differently for each (Turbo 8 "
            "steps without CFG, Base 50 steps with CFG). Set model.variant to 'turbo' or 'base' (or choose the "
            "validation steps and guidance yourself)")
    return None


def choose_recipe(cfg: RunConfig, arch, *, source: str | None, where: str) -> RunConfig:
    """The run's config with its member's recipe applied (family.require_recipe first), logged.

    Args:
        source: the model's file or folder (its name may tell Z-Image-Turbo from Base), or None.
        where: the field or input the model came from, for messages ('model.transformer', 'model').
    Raises:
        ModelError: a member without a training recipe; a Z-Image whose variant matters but is unknown.
    """
    family.require_recipe(arch, where)
    key = recipe_key(cfg, arch, source=source, where=where)
    out = with_recipe(cfg, key or "zimage-turbo")  # unknown variant: the timesteps both share, previews as set
    if key is None:
        out = dataclasses.replace(out, validation=cfg.validation)
    _log_choice(cfg, out, key, source)
    if key == "zimage-turbo" and not cfg.adapter.training_adapter:
        log.warning(TURBO_WITHOUT_TRAINING_ADAPTER, where)
    return out


def _log_choice(cfg: RunConfig, out: RunConfig, key: str | None, source: str | None) -> None:
    t, v = out.train, out.validation
    kept = [f"train.{f}" for f in TRAIN_FIELDS if getattr(cfg.train, f) != getattr(type(cfg.train)(), f)]
    kept += [f"validation.{f}" for f in SAMPLER_FIELDS
             if getattr(cfg.validation, f) != getattr(type(cfg.validation)(), f)]
    title = recipe.family_recipe(key).title if key else "Z-Image (variant unknown: the timesteps both variants share)"
    how = "" if key is None or not key.startswith("zimage") else (
        " (model.variant)" if cfg.model.variant != "auto" else f" (from the name {source!r})")
    shift = {"static": f"static shift {t.static_shift:g}", "resolution": "resolution shift"}.get(t.shift_mode,
                                                                                                   "no shift")
    log.info("training recipe: %s%s; sigma %s, %s; previews %d steps, shift %g, cfg %g%s", title, how,
             t.timestep_sampling, shift, v.steps, v.shift, v.guidance,
             f"; your settings kept: {', '.join(kept)}" if kept else "")
