"""Scheduled sampling (experimental): exact rollouts reproduce the plain inputs; the option changes training."""

import dataclasses

import torch

from lumina2_train import recipe
from lumina2_train.train import train_lora
from lumina2_train.train.rollout import rollout_inputs


def test_an_exact_model_rollout_gives_back_the_plain_inputs_and_target():
    gen = torch.Generator().manual_seed(0)
    x, noise = torch.randn(4, 16, 2, 2, generator=gen), torch.randn(4, 16, 2, 2, generator=gen)
    sigma = torch.tensor([0.2, 0.5, 0.7, 0.9])

    def exact(z, s, idx):  # the true velocity for this (x, ε) pair
        return noise[idx] - x[idx]

    x_in, target = rollout_inputs(exact, x, noise, sigma, probability=1.0, max_offset=0.5, steps=3,
                                  gen=torch.Generator().manual_seed(1))
    torch.testing.assert_close(x_in, recipe.add_noise(x, noise, sigma), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(target, noise - x, atol=1e-4, rtol=1e-4)


def test_a_drifting_model_changes_inputs_only_for_chosen_samples():
    x, noise = torch.zeros(64, 16, 1, 1), torch.ones(64, 16, 1, 1)
    sigma = torch.full((64,), 0.5)
    x_in, target = rollout_inputs(lambda z, s, idx: torch.zeros_like(z), x, noise, sigma, probability=0.5,
                                  max_offset=0.4, steps=2, gen=torch.Generator().manual_seed(3))
    moved = (x_in - recipe.add_noise(x, noise, sigma)).abs().flatten(1).amax(1) > 1e-6
    assert 10 < int(moved.sum()) < 54  # about half were rolled out
    torch.testing.assert_close(target[moved], (x_in[moved] - x[moved]) / 0.5)


def test_rollout_option_reaches_the_training_step(tiny_backbone, tensor_cache, run_config, tmp_path):
    base = run_config(tmp_path, steps=2, caption_dropout=0.0)
    plain = train_lora(base, tiny_backbone, tensor_cache, run_dir=tmp_path / "a")
    rolled = train_lora(dataclasses.replace(base, train=dataclasses.replace(base.train, rollout_probability=1.0)),
                        tiny_backbone, tensor_cache, run_dir=tmp_path / "b")
    assert rolled.losses != plain.losses
