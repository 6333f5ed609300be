"""Scheduled sampling (EXPERIMENTAL): train on the model's own Euler rollouts as well as exact noisings.

For a chosen sample, x_σ is not (1 − σ)·x + σ·ε: it is where the current model's Euler sampler lands when
started at a higher noise level σ_hi = σ + u·offset·(1 − σ) (u ~ U(0, 1)) from the exact x_σhi and run
`steps` steps down to σ, without gradients. The target is the straight-line velocity that carries that
point to the data, (x̃_σ − x)/σ, which equals ε − x when the rollout is exact. This exposes the model to
its own sampling drift (exposure bias). It is off by default, slower (extra forwards) and not part of the
official recipe. No ComfyUI imports.
"""

from __future__ import annotations

import torch

from .. import recipe


def _bcast(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return s.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


@torch.no_grad()
def rollout_inputs(velocity, x: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor, *, probability: float,
                   max_offset: float, steps: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_in, target) for one batch on the CPU; `velocity(x_σ, σ) -> ε − x` runs the current model.

    Samples not chosen keep the exact x_σ and the exact target ε − x.
    """
    x_in, target = recipe.add_noise(x, noise, sigma), recipe.velocity_target(x, noise)
    chosen = torch.rand(x.shape[0], generator=gen) < probability
    if probability <= 0 or not bool(chosen.any()):
        return x_in, target
    u = torch.rand(x.shape[0], generator=gen)
    sigma_hi = (sigma + u * max_offset * (1 - sigma)).clamp(max=1.0)
    idx = chosen.nonzero().flatten()
    z = recipe.add_noise(x[idx], noise[idx], sigma_hi[idx])
    for k in range(steps):
        s_now = sigma_hi[idx] + (sigma[idx] - sigma_hi[idx]) * (k / steps)
        s_next = sigma_hi[idx] + (sigma[idx] - sigma_hi[idx]) * ((k + 1) / steps)
        z = z + _bcast(s_next - s_now, z) * velocity(z, s_now, idx).float().cpu()
    x_in[idx] = z
    target[idx] = (z - x[idx]) / _bcast(sigma[idx].clamp_min(1e-3), z)
    return x_in, target
