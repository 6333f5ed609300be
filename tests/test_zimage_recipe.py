"""The per-member recipes (recipe.FAMILY_RECIPES) and how a run picks one (train/recipe_choice.py): the pinned
Z-Image values, Turbo vs Base from model.variant or the name, defaults filled and explicit choices kept."""

import dataclasses
import logging

import pytest
import torch

from lumina2_train import recipe
from lumina2_train.backbones.arch import ArchConfig
from lumina2_train.config import ModelConfig, RunConfig, TrainConfig, ValidationConfig
from lumina2_train.errors import ModelError
from lumina2_train.train.recipe_choice import SAMPLER_FIELDS, TRAIN_FIELDS, choose_recipe, variant_from_name

ZIMAGE, LUMINA2 = ArchConfig(family="zimage"), ArchConfig()


def test_the_pinned_recipes():
    turbo, base = recipe.family_recipe("zimage-turbo"), recipe.family_recipe("zimage-base")
    # diffusers' Z-Image DreamBooth script: u uniform (weighting_scheme 'none'), the scheduler's static shift 3
    for r in (turbo, base):
        assert r.timesteps == recipe.TimestepSampling("uniform", shift_mode="static", static_shift=3.0)
    assert turbo.sampler == recipe.SamplerSettings(steps=8, shift=3.0, guidance=1.0, cfg_renorm=0.0, cfg_trunc=1.0,
                                                   guidance_rescale=0.0)
    assert base.sampler == recipe.SamplerSettings(steps=50, shift=3.0, guidance=6.0, cfg_renorm=0.0, cfg_trunc=1.0,
                                                  guidance_rescale=0.0)
    assert base.sampler.guidance == recipe.diffusers_guidance(5.0)  # ZImagePipeline's default guidance_scale
    with pytest.raises(ValueError, match="unknown family recipe 'flux'"):
        recipe.family_recipe("flux")


def test_lumina2s_recipe_is_the_config_defaults():
    """One home: the config's defaults are Lumina2's recipe, so 'left at its default' means 'the member's'."""
    lumina = recipe.family_recipe("lumina2")
    t, v = TrainConfig(), ValidationConfig()
    assert {f: getattr(t, f) for f in TRAIN_FIELDS} == {f: getattr(lumina.timesteps, s) for f, s in TRAIN_FIELDS.items()}
    assert {f: getattr(v, f) for f in SAMPLER_FIELDS} == {f: getattr(lumina.sampler, f) for f in SAMPLER_FIELDS}
    assert choose_recipe(RunConfig(), LUMINA2, source="x.safetensors", where="model") == RunConfig()


def test_turbo_grid_is_the_official_eight_forwards():
    """Tongyi-MAI/Z-Image's scheduler: linspace(1, 0, 9) shifted by 3, the last (σ = 0) step skipped; diffusers'
    get_default_z_image_sigmas(8) = linspace(1, 1/8, 8) then 0: the same 8 noise levels."""
    ours = recipe.sampling_sigmas(8, 3.0).double()
    s = torch.cat([torch.linspace(1, 1 / 8, 8, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    torch.testing.assert_close(ours, 3 * s / (1 + 2 * s), atol=1e-6, rtol=0)


def test_training_sigmas_follow_the_zimage_schedule():
    """Uniform u through the static shift 3: the median σ is shift₃(0.5) = 0.75 at every resolution."""
    spec = recipe.family_recipe("zimage-turbo").timesteps
    gen = torch.Generator().manual_seed(0)
    for px in (256, 1024):
        sigma = recipe.sample_sigmas(40_000, spec, px, px, gen)
        assert abs(sigma.median().item() - 0.75) < 0.01
        assert abs((sigma < 0.5).float().mean().item() - 0.25) < 0.01  # shift₃⁻¹(0.5) = 0.25


@pytest.mark.parametrize("name, variant", [
    ("/m/z_image_turbo_bf16.safetensors", "turbo"),
    ("/hf/models--Tongyi-MAI--Z-Image-Turbo/snapshots/0123abc/transformer", "turbo"),
    ("/m/Z-Image", "base"),
    ("/m/z_image_bf16.safetensors", "base"),
    ("/m/my_base_finetune.safetensors", "base"),
    ("/m/Z-Image-De-Turbo", None),
    ("/m/my_model.safetensors", None),
    (None, None),
])
def test_the_variant_from_the_name(name, variant):
    assert variant_from_name(name) == variant


def _cfg(variant="auto", prompts=("a cat",), **val):
    return RunConfig(model=ModelConfig(variant=variant), validation=ValidationConfig(prompts=prompts, **val))


def test_defaults_take_the_variants_recipe_and_explicit_values_win(caplog):
    with caplog.at_level(logging.INFO, logger="lumina2_train.train.recipe_choice"):
        turbo = choose_recipe(_cfg(), ZIMAGE, source="/m/z_image_turbo_bf16.safetensors", where="model")
    assert (turbo.train.timestep_sampling, turbo.train.shift_mode, turbo.train.static_shift) == ("uniform", "static", 3.0)
    assert (turbo.validation.steps, turbo.validation.guidance, turbo.validation.shift) == (8, 1.0, 3.0)
    assert "Z-Image-Turbo (from the name '/m/z_image_turbo_bf16.safetensors')" in caplog.text
    base = choose_recipe(_cfg("base"), ZIMAGE, source="/m/z_image_turbo_bf16.safetensors", where="model")
    assert (base.validation.steps, base.validation.guidance, base.validation.cfg_renorm) == (50, 6.0, 0.0)
    mine = dataclasses.replace(_cfg("base", steps=12), train=TrainConfig(shift_mode="none"))
    with caplog.at_level(logging.INFO, logger="lumina2_train.train.recipe_choice"):
        kept = choose_recipe(mine, ZIMAGE, source=None, where="model")
    assert kept.train.shift_mode == "none" and kept.train.timestep_sampling == "uniform"
    assert kept.validation.steps == 12 and kept.validation.guidance == 6.0
    assert "your settings kept: train.shift_mode, validation.steps" in caplog.text
    assert kept.model == mine.model and kept.adapter == mine.adapter and kept.save == mine.save


def test_an_unknown_variant_is_asked_for_only_where_it_matters():
    with pytest.raises(ModelError, match=r"model: this is Z-Image.*'/m/my_model\.safetensors' does not say.*Set "
                                         r"model\.variant to 'turbo' or 'base'"):
        choose_recipe(_cfg(), ZIMAGE, source="/m/my_model.safetensors", where="model")
    # no previews: the timesteps both variants share, validation untouched
    quiet = choose_recipe(_cfg(prompts=()), ZIMAGE, source="/m/my_model.safetensors", where="model")
    assert quiet.train.shift_mode == "static" and quiet.validation == ValidationConfig()
    # previews whose sampler the user chose: nothing depends on the variant
    chosen = _cfg(steps=10, guidance=3.0, shift=2.0)
    assert choose_recipe(chosen, ZIMAGE, source=None, where="model").validation == chosen.validation


def test_the_variant_setting_is_checked():
    assert "model.variant 'fast' is unknown; choose one of auto, turbo, base" in RunConfig(
        model=ModelConfig(variant="fast")).errors()
