"""One training micro-step: collate a bucket's samples, draw σ and noise, and compute the flow loss.

All randomness comes from the generator passed in, so a step is a pure function of (state, seed, step).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import recipe


@dataclass
class Batch:
    latents: torch.Tensor  # (B, 16, h, w) scaled latents
    cap_feats: torch.Tensor  # (B, L, D), captions left-aligned
    cap_mask: torch.Tensor | None  # (B, L) 1 = token; None when all captions have the same length
    loss_weights: torch.Tensor  # (B,) dataset weights (prior-loss weight of regularisation sets)
    masks: torch.Tensor | None  # (B, 1, h, w) loss masks, or None
    bucket: tuple[int, int]  # (width_px, height_px)


def pad_captions(feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Right-pad (L_i, D) features to (B, L_max, D); the mask is None when no padding was needed."""
    lengths = [f.shape[0] for f in feats]
    L = max(lengths)
    out = feats[0].new_zeros(len(feats), L, feats[0].shape[1])
    mask = torch.zeros(len(feats), L, dtype=torch.long)
    for i, f in enumerate(feats):
        out[i, : f.shape[0]] = f
        mask[i, : f.shape[0]] = 1
    return out, (None if min(lengths) == L else mask)


def collate(cache, indices: list[int], bucket, gen: torch.Generator, caption_dropout: float) -> Batch:
    """Load samples (random flip where allowed, caption dropout) into one same-bucket batch."""
    lat, feats, weights, masks = [], [], [], []
    for i in indices:
        flip = bool(cache.can_flip(i)) and bool(torch.rand((), generator=gen) < 0.5)
        s = cache.sample(i, flip=flip)
        drop = caption_dropout > 0 and bool(torch.rand((), generator=gen) < caption_dropout)
        lat.append(s.latent)
        feats.append(cache.empty_prompt_features() if drop else s.cap_feats)
        weights.append(float(s.loss_weight))
        masks.append(s.mask)
    cap, cap_mask = pad_captions(feats)
    has_mask = any(m is not None for m in masks)
    mask_t = torch.stack([m if m is not None else torch.ones_like(lat[0][:1]) for m in masks]) if has_mask else None
    return Batch(torch.stack(lat), cap, cap_mask, torch.tensor(weights), mask_t, bucket)


def micro_step_loss(backbone, adapters, batch: Batch, timesteps: recipe.TimestepSampling, *, weighting: str,
                    gamma: float, gen: torch.Generator, device, dtype,
                    rollout: tuple[float, float, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scalar loss, σ per sample) for one batch; noise and σ are drawn from `gen` on the CPU.

    `rollout` = (probability, max_offset, steps) turns on scheduled sampling (train/rollout.py).
    """
    x = batch.latents.float()
    b = x.shape[0]
    w_px, h_px = batch.bucket
    sigma = recipe.sample_sigmas(b, timesteps, h_px, w_px, generator=gen)
    noise = torch.randn(x.shape, generator=gen)  # drawn on the CPU: the same numbers on every device
    cap_mask = batch.cap_mask.to(device) if batch.cap_mask is not None else None
    if rollout and rollout[0] > 0:  # scheduled sampling (experimental): inputs from the model's own rollout
        x_sigma, target = _rollout(backbone, adapters, batch, x, noise, sigma, rollout, gen, device, dtype)
        x_sigma, target, sigma_d = x_sigma.to(device), target.to(device), sigma.to(device)
    else:
        x, noise, sigma_d = x.to(device), noise.to(device), sigma.to(device)
        x_sigma = recipe.add_noise(x, noise, sigma_d)
        target = recipe.velocity_target(x, noise)
    pred = backbone.velocity(x_sigma.to(dtype), sigma_d, batch.cap_feats.to(device, dtype), cap_mask, adapters)
    weights = recipe.loss_weights(sigma, weighting, gamma) * batch.loss_weights
    mask = batch.masks.to(device) if batch.masks is not None else None
    loss = recipe.flow_loss(pred, target, weights.to(device), mask)
    return loss, sigma


def _rollout(backbone, adapters, batch: Batch, x, noise, sigma, rollout, gen, device, dtype):
    from .rollout import rollout_inputs

    def run(z, s, idx):
        m = batch.cap_mask[idx].to(device) if batch.cap_mask is not None else None
        return backbone.velocity(z.to(device, dtype), s.to(device), batch.cap_feats[idx].to(device, dtype), m,
                                 adapters)

    probability, max_offset, steps = rollout
    return rollout_inputs(run, x, noise, sigma, probability=probability, max_offset=max_offset, steps=steps,
                          gen=gen)
