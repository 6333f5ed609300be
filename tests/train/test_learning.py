"""The honest proof that objective, sign and sampler agree: a LoRA learns one latent, and sampling with it
from fixed noise lands measurably closer to that latent."""

import pytest
import torch

from lumina2_train import recipe
from lumina2_train.config import TARGET_PRESETS, AdapterConfig, ModelConfig, RunConfig, SaveConfig, TrainConfig
from lumina2_train.train import TensorCache, TensorSample, train_lora


def _eval_loss(backbone, adapters, x, feats):
    gen = torch.Generator().manual_seed(123)
    sigma = torch.linspace(0.05, 0.95, 12)
    xs = x.expand(12, -1, -1, -1)
    noise = torch.randn(xs.shape, generator=gen)
    with torch.no_grad():
        pred = backbone.velocity(recipe.add_noise(xs, noise, sigma), sigma, feats.expand(12, -1, -1), None, adapters)
    return recipe.flow_loss(pred, recipe.velocity_target(xs, noise)).item()


def _sample(backbone, adapters, feats):
    noise = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(99))
    settings = recipe.SamplerSettings(steps=12, shift=1.0, guidance=1.0)
    return recipe.sample(lambda x, s, f, m: backbone.velocity(x, s, f, m, adapters), noise, (feats, None), None,
                         settings)


@pytest.mark.slow
@pytest.mark.parametrize("base, compute", [("no_change", "bf16"), ("int8-torchao", "bf16"), ("fp8-torchao", "bf16"),
                                           ("no_change", "fp8_emulated")])
def test_lora_learns_a_latent_and_the_sampler_moves_toward_it(tiny_backbone, tmp_path, base, compute):
    """Also with the frozen base stored in 8 bits (SimpleTuner's base_model_precision names), and with the
    base's block GEMMs in fp8 (model.base_compute, its CPU emulation: the same quantisation and scales)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 4, 4, generator=gen) * 0.8
    # The exact base at lr 3e-3 halved the sample MSE only to 1.43 of a 1.38 bar (2.77 before) with diffusers 0.42.1
    # and torch 2.13's CPU kernels; at 6e-3 it passes the same bar. The 8-bit and fp8 cases keep 3e-3.
    lr = 6e-3 if base == "no_change" and compute == "bf16" else 3e-3
    feats = torch.randn(1, 6, 32, generator=gen)
    cache = TensorCache([TensorSample(x[0], feats[0], "a red cube")])
    cfg = RunConfig(model=ModelConfig(base_precision=base, base_compute=compute), adapter=AdapterConfig(rank=16, alpha=16.0, targets=TARGET_PRESETS["all"] + ("final",)),
                    train=TrainConfig(steps=400, lr=lr, precision="fp32", checkpointing="off", seed=1,
                                      max_grad_norm=0.0, timestep_sampling="uniform", shift_mode="none"),
                    save=SaveConfig(output_dir=str(tmp_path)))
    if base != "no_change":  # store the base first, so "before" and "after" use the same frozen weights
        from lumina2_train.backbones.quant import quantize_base

        quantize_base(tiny_backbone, cfg.model.storage_format)
    before_loss = _eval_loss(tiny_backbone, None, x, feats)
    before_mse = (_sample(tiny_backbone, None, feats) - x).square().mean().item()
    result = train_lora(cfg, tiny_backbone, cache, run_dir=tmp_path / "run")
    stored = tiny_backbone.linear("layers.0.feed_forward.w1").weight
    assert stored.element_size() == (4 if base == "no_change" else 1)  # the option really stored 8 bits
    adapters = result.adapters.as_dict()
    after_loss = _eval_loss(tiny_backbone, adapters, x, feats)
    after_mse = (_sample(tiny_backbone, adapters, feats) - x).square().mean().item()
    # bf16 base: the bar (at least halve). An 8-bit base keeps rounding noise the LoRA cannot remove
    # (fp8 e4m3 ≈ 8 % per weight row here), so for it "still learns" is a 40 % cut.
    # fp8 compute trains through e4m3 GEMMs (about 5 % per output here) but evaluates in the exact dtype.
    factor = 0.5 if base == "no_change" and compute == "bf16" else 0.6
    assert after_loss < factor * before_loss, (before_loss, after_loss)
    assert after_mse < factor * before_mse, (before_mse, after_mse)
