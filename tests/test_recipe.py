"""Pins the σ convention, the timestep shift, the target, the loss and the sampler (RECIPE.md)."""

import math

import pytest
import torch

from lumina2_train import recipe


def test_oracle_velocity_gives_zero_loss_and_sampler_returns_the_data():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 4, 4, generator=gen)
    eps = torch.randn(2, 16, 4, 4, generator=gen)
    sigma = torch.tensor([0.3, 0.8])
    x_sigma = recipe.add_noise(x, eps, sigma)

    def oracle(x_s, s, feats, mask):  # exact velocity toward noise for data concentrated at x
        return (x_s - x) / s.view(-1, 1, 1, 1)

    target = recipe.velocity_target(x, eps)
    assert recipe.flow_loss(oracle(x_sigma, sigma, None, None), target).item() == pytest.approx(0.0, abs=1e-10)
    settings = recipe.SamplerSettings(steps=7, shift=6.0, guidance=1.0)
    out = recipe.sample(oracle, eps, (None, None), None, settings)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=1e-5)


def test_noise_convention_endpoints():
    x, eps = torch.ones(1, 1, 2, 2), torch.full((1, 1, 2, 2), -1.0)
    assert torch.equal(recipe.add_noise(x, eps, torch.tensor([0.0])), x)
    assert torch.equal(recipe.add_noise(x, eps, torch.tensor([1.0])), eps)
    assert torch.equal(recipe.velocity_target(x, eps), eps - x)


@pytest.mark.parametrize(("side", "expected"), [(512, 1.88), (768, 2.33), (1024, 3.16)])
def test_resolution_shift_values(side, expected):
    assert recipe.resolution_shift(side, side) == pytest.approx(expected, abs=0.01)


def test_resolution_shift_is_clamped_above_one_megapixel():
    assert recipe.resolution_shift(2048, 2048) == pytest.approx(recipe.resolution_shift(1024, 1024))
    assert recipe.resolution_shift(64, 64) == pytest.approx(math.exp(0.5))


def test_median_sigma_at_1024_is_about_0_76():
    spec = recipe.TimestepSampling()
    sig = recipe.sample_sigmas(200_000, spec, 1024, 1024, torch.Generator().manual_seed(0))
    assert sig.median().item() == pytest.approx(0.76, abs=0.01)
    # shifting t instead of σ (kohya #2201) would put the median near 0.24: the direction matters
    assert sig.mean().item() > 0.6


def test_shift_moves_toward_noise_and_keeps_endpoints():
    s = torch.tensor([0.0, 0.25, 0.5, 1.0])
    out = recipe.shift_sigma(s, 3.0)
    assert out[0] == 0 and out[-1] == 1
    assert torch.all(out[1:3] > s[1:3])


def test_uniform_and_static_options():
    gen = torch.Generator().manual_seed(0)
    uni = recipe.sample_sigmas(50_000, recipe.TimestepSampling("uniform", shift_mode="none"), 512, 512, gen)
    assert uni.median().item() == pytest.approx(0.5, abs=0.01)
    st = recipe.sample_sigmas(50_000, recipe.TimestepSampling("uniform", shift_mode="static", static_shift=3.0),
                              512, 512, gen)
    assert st.median().item() == pytest.approx(0.75, abs=0.01)  # 3·0.5 / (1 + 2·0.5)


def test_prompt_format_and_system_prompts_are_exact():
    assert recipe.format_prompt("a cat", recipe.system_prompt_text("base")) == (
        "You are an assistant designed to generate high-quality images based on user prompts. <Prompt Start> a cat")
    assert recipe.SYSTEM_PROMPT_TEXT["superior"].startswith("You are an assistant designed to generate superior")
    assert recipe.format_prompt("x", recipe.system_prompt_text("none")) == "x"
    assert recipe.system_prompt_text("custom", "  Mine.  ") == "Mine."


def test_zimage_prompt_template_and_dropped_prompt_are_pinned():
    # diffusers ZImagePipeline: apply_chat_template([user], add_generation_prompt=True, enable_thinking=True);
    # ComfyUI 0.33 ZImageTokenizer.llama_template: the same string
    assert recipe.ZIMAGE_PROMPT_TEMPLATE == "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
    assert recipe.format_prompt("a cat", "", "zimage") == "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n"
    assert recipe.format_prompt("a cat", "Be brief.", "zimage") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n")
    # the empty negative ZImagePipeline encodes (negative_prompt "") is the template around ""
    assert recipe.dropped_prompt("zimage") == "<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n"
    assert recipe.dropped_prompt("zimage") == recipe.format_prompt("", "", "zimage")
    assert recipe.ZIMAGE_MAX_TOKENS == 512
    # Lumina2 unchanged, and the default family is Lumina2
    assert recipe.dropped_prompt() == recipe.dropped_prompt("lumina2") == recipe.DROPPED_PROMPT == ""
    sys_text = recipe.system_prompt_text("superior")
    assert recipe.format_prompt("a cat", sys_text) == recipe.format_prompt("a cat", sys_text, "lumina2") == (
        sys_text + " <Prompt Start> a cat")
    # Lumina2's presets are Gemma prefixes Z-Image never saw: only 'custom' gives a Z-Image system prompt
    assert recipe.system_prompt_text("superior", family="zimage") == ""
    assert recipe.system_prompt_text("custom", " Mine. ", family="zimage") == "Mine."
    with pytest.raises(ValueError, match="prompt family 'sdxl' is unknown"):
        recipe.format_prompt("a cat", "", "sdxl")


def test_latent_scaling_round_trip():
    raw = torch.randn(1, 16, 3, 3)
    torch.testing.assert_close(recipe.latent_out(recipe.latent_in(raw)), raw)
    assert recipe.latent_in(torch.full((1,), 0.1159)).item() == pytest.approx(0.0, abs=1e-7)


def test_loss_weighting_options():
    s = torch.tensor([0.1, 0.5, 0.9])
    assert torch.equal(recipe.loss_weights(s, "none"), torch.ones(3))
    w = recipe.loss_weights(s, "min_snr", gamma=5.0)
    assert w[0] < 1 and w[2] == pytest.approx(1.0)  # near-clean down-weighted
    with pytest.raises(ValueError):
        recipe.loss_weights(s, "nope")


def test_per_sample_mse_with_mask():
    pred, target = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    target[1, 0, 0, 0] = 3.0
    mask = torch.zeros(2, 1, 2, 2)
    mask[:, :, 1, :] = 1.0
    assert recipe.per_sample_mse(pred, target).tolist() == pytest.approx([1.0, 3.0])
    assert recipe.per_sample_mse(pred, target, mask).tolist() == pytest.approx([1.0, 1.0])


def test_cfg_renorm_caps_the_guided_norm():
    cond, uncond = torch.ones(1, 4), -torch.ones(1, 4)
    g = recipe.guide(cond, uncond, recipe.SamplerSettings(guidance=4.0, cfg_renorm=1.0))
    assert torch.linalg.vector_norm(g).item() == pytest.approx(torch.linalg.vector_norm(cond).item())
    g_off = recipe.guide(cond, uncond, recipe.SamplerSettings(guidance=4.0, cfg_renorm=0.0))
    torch.testing.assert_close(g_off, uncond + 4 * (cond - uncond))


def test_cfg_truncation_uses_cond_only_late():
    calls = []

    def vel(x, s, feats, mask):
        calls.append(feats)
        return torch.zeros_like(x)

    x = torch.zeros(1, 16, 2, 2)
    recipe.sample(vel, x, ("c", None), ("u", None), recipe.SamplerSettings(steps=4, shift=1.0, cfg_trunc=0.5))
    # t = 1 - σ at steps: 0, .25, .5, .75 -> guidance at t < 0.5: two steps with both calls
    assert calls == ["c", "u", "c", "u", "c", "c"]
