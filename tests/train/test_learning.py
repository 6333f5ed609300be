"""The honest proof that objective, sign and sampler agree: a LoRA learns one latent, and sampling with it
from fixed noise lands measurably closer to that latent."""

import torch

from lumina2_train import recipe
from lumina2_train.config import TARGET_PRESETS, AdapterConfig, RunConfig, SaveConfig, TrainConfig
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


def test_lora_learns_a_latent_and_the_sampler_moves_toward_it(tiny_backbone, tmp_path):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 4, 4, generator=gen) * 0.8
    feats = torch.randn(1, 6, 32, generator=gen)
    cache = TensorCache([TensorSample(x[0], feats[0], "a red cube")])
    cfg = RunConfig(adapter=AdapterConfig(rank=16, alpha=16.0, targets=TARGET_PRESETS["all"] + ("final",)),
                    train=TrainConfig(steps=400, lr=3e-3, precision="fp32", checkpointing="off", seed=1,
                                      max_grad_norm=0.0, timestep_sampling="uniform", shift_mode="none"),
                    save=SaveConfig(output_dir=str(tmp_path)))
    before_loss = _eval_loss(tiny_backbone, None, x, feats)
    before_mse = (_sample(tiny_backbone, None, feats) - x).square().mean().item()
    result = train_lora(cfg, tiny_backbone, cache, run_dir=tmp_path / "run")
    adapters = result.adapters.as_dict()
    after_loss = _eval_loss(tiny_backbone, adapters, x, feats)
    after_mse = (_sample(tiny_backbone, adapters, feats) - x).square().mean().item()
    assert after_loss < 0.5 * before_loss, (before_loss, after_loss)
    assert after_mse < 0.5 * before_mse, (before_mse, after_mse)
