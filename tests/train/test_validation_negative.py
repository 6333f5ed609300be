"""The validation negative: an empty one is the dropped caption "" (no system prompt), as caption dropout, the
official sampler and diffusers' Lumina2Pipeline use; a non-empty one is formatted with the system prompt."""

import dataclasses

import torch

from lumina2_train import recipe
from lumina2_train.config import ValidationConfig
from lumina2_train.train.validation import sample_latents, sampler_settings

V = ValidationConfig(prompts=("a red cube",), negative_prompt="", width=32, height=32, steps=3, guidance=4.0)


def _expected(backbone, v, cond, uncond):
    def velocity(x, sigma, feats, mask):
        return backbone.velocity(x, sigma, feats, mask, {}).float()

    noise = torch.randn(1, 16, v.height // 8, v.width // 8, generator=torch.Generator().manual_seed(v.seed))
    return recipe.sample(velocity, noise, (cond[None], None), (uncond[None], None), sampler_settings(v))


def test_an_empty_negative_uses_the_dropped_caption_features(tiny_backbone, tensor_cache):
    # tensor_cache.prompts[""] stands for "SYSTEM <Prompt Start> " (the conditioned empty caption), .empty for ""
    assert not torch.equal(tensor_cache.prompts[""], tensor_cache.empty)
    cond = tensor_cache.prompt_features("a red cube")
    got = sample_latents(tiny_backbone, {}, tensor_cache, V, list(V.prompts), device="cpu", dtype=torch.float32)
    torch.testing.assert_close(got, _expected(tiny_backbone, V, cond, tensor_cache.empty), rtol=0, atol=0)
    joined = _expected(tiny_backbone, V, cond, tensor_cache.prompts[""])
    assert (got - joined).abs().max() > 1e-4  # the old, system-prompt-joined negative gives another image
    blank = dataclasses.replace(V, negative_prompt="  ")  # whitespace only counts as empty
    torch.testing.assert_close(sample_latents(tiny_backbone, {}, tensor_cache, blank, list(V.prompts), device="cpu",
                                              dtype=torch.float32), got, rtol=0, atol=0)


def test_a_written_negative_is_formatted_like_every_prompt(tiny_backbone, tensor_cache):
    v = dataclasses.replace(V, negative_prompt="a red cube")
    cond = tensor_cache.prompt_features("a red cube")
    got = sample_latents(tiny_backbone, {}, tensor_cache, v, list(V.prompts), device="cpu", dtype=torch.float32)
    torch.testing.assert_close(got, _expected(tiny_backbone, v, cond, cond), rtol=0, atol=0)
