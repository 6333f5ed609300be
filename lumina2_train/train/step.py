"""One training micro-step: collate a bucket's samples, draw σ and noise, and compute the flow loss.

All randomness comes from the generator passed in, so a step is a pure function of (state, seed, step).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import recipe
from .lengths import length_groups, velocity_by_length


@dataclass
class Batch:
    latents: torch.Tensor  # (B, 16, h, w) scaled latents
    cap_feats: torch.Tensor  # (B, L, D), captions left-aligned
    cap_mask: torch.Tensor | None  # (B, L) 1 = token; None when all captions have the same length
    loss_weights: torch.Tensor  # (B,) dataset weights (prior-loss weight of regularisation sets)
    masks: torch.Tensor | None  # (B, 1, h, w) loss masks, or None
    bucket: tuple[int, int]  # (width_px, height_px)
    # With several processes: this batch is rows [offset, offset + B) of a global batch of `global_size`
    # samples; σ and noise are drawn for the global batch and sliced, so W ranks × B equal 1 rank × W·B.
    offset: int = 0
    global_size: int = 0  # 0 = this batch is the whole batch

    def pinned(self) -> Batch:
        """The same batch in page-locked memory (its copies to the GPU can then run without blocking)."""
        def pin(t):
            return None if t is None else t.pin_memory()

        return Batch(pin(self.latents), pin(self.cap_feats), pin(self.cap_mask), self.loss_weights, pin(self.masks),
                     self.bucket, self.offset, self.global_size)


# A batch of mixed caption lengths is padded (and masked) to a multiple of this many tokens: the masked tokens
# change nothing (positions come from each sample's own length), and a compiled step meets a few padded shapes
# instead of one per longest caption (docs/benchmarks.md, "Real caption lengths")
CAPTION_PAD_MULTIPLE = 32


def _round_up(n: int) -> int:
    return -(-n // CAPTION_PAD_MULTIPLE) * CAPTION_PAD_MULTIPLE


def pad_captions(feats: list[torch.Tensor], length: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Right-pad (L_i, D) features to (B, L, D), L = max(L_max, length); when lengths differ (a mask is needed) L
    is rounded up to CAPTION_PAD_MULTIPLE. The mask is None when nothing was padded."""
    lengths = [f.shape[0] for f in feats]
    L = max(max(lengths), length)
    if min(lengths) != L:
        L = _round_up(L)
    out = feats[0].new_zeros(len(feats), L, feats[0].shape[1])
    mask = torch.zeros(len(feats), L, dtype=torch.long)
    for i, f in enumerate(feats):
        out[i, : f.shape[0]] = f
        mask[i, : f.shape[0]] = 1
    return out, (None if min(lengths) == L else mask)


def collate(cache, indices: list[int], bucket, gen: torch.Generator, caption_dropout: float,
            part: tuple[int, int] | None = None) -> Batch:
    """Load samples (random flip where allowed, caption dropout) into one same-bucket batch.

    `part` = (start, stop): load only those rows of the global batch `indices` (one rank's share). The flip
    and dropout draws are made for every row in order, so each row gets the same draws whatever the split,
    and captions are padded to the global batch's longest (every rank gets the same shape).
    """
    start, stop = part or (0, len(indices))
    draws = []
    for i in indices:
        flip = bool(cache.can_flip(i)) and bool(torch.rand((), generator=gen) < 0.5)
        drop = caption_dropout > 0 and bool(torch.rand((), generator=gen) < caption_dropout)
        draws.append((flip, drop))
    lat, feats, weights, masks = [], [], [], []
    for i, (flip, drop) in zip(indices[start:stop], draws[start:stop]):
        s = cache.sample(i, flip=flip)
        lat.append(s.latent)
        feats.append(cache.empty_prompt_features() if drop else s.cap_feats)
        weights.append(float(s.loss_weight))
        masks.append(s.mask)
    length = 0
    if part is not None:
        empty = cache.empty_prompt_features().shape[0] if any(d for _, d in draws) else 0
        lengths = [empty if drop else cache.caption_length(i) for i, (_, drop) in zip(indices, draws)]
        length = max(lengths) if min(lengths) == max(lengths) else _round_up(max(lengths))  # as one process pads
    cap, cap_mask = pad_captions(feats, length)
    has_mask = any(m is not None for m in masks)
    mask_t = torch.stack([m if m is not None else torch.ones_like(lat[0][:1]) for m in masks]) if has_mask else None
    return Batch(torch.stack(lat), cap, cap_mask, torch.tensor(weights), mask_t, bucket, start,
                 len(indices) if part is not None else 0)


def draw_noise(batch: Batch, timesteps: recipe.TimestepSampling, gen: torch.Generator,
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(σ (B,), noise like the latents) for `batch`, drawn from `gen` on the CPU for the global batch and
    sliced to this batch's rows: the same numbers on every device and for every split."""
    x = batch.latents
    b = x.shape[0]
    w_px, h_px = batch.bucket
    n, rows = batch.global_size or b, slice(batch.offset, batch.offset + b)
    sigma = recipe.sample_sigmas(n, timesteps, h_px, w_px, generator=gen)[rows]
    noise = torch.randn((n, *x.shape[1:]), generator=gen)[rows]
    return sigma, noise


def micro_step_loss(backbone, adapters, batch: Batch, timesteps: recipe.TimestepSampling, *, weighting: str,
                    gamma: float, gen: torch.Generator, device, dtype,
                    rollout: tuple[float, float, int] | None = None,
                    forward=None, drawn: tuple[torch.Tensor, torch.Tensor] | None = None,
                    split_lengths: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(scalar loss, σ per sample) for one batch; noise and σ are drawn from `gen` on the CPU (`draw_noise`),
    unless `drawn` = (σ, noise) holds that draw already (made ahead by train/prefetch.py).

    `rollout` = (probability, max_offset, steps) turns on scheduled sampling (train/rollout.py).
    `forward(x_σ, σ, cap_feats, cap_mask)`: runs the model instead of `backbone.velocity(..., adapters)`
    (the trainer passes its DDP / FSDP2-wrapped step module). `split_lengths`: a batch of mixed caption lengths
    runs one unmasked forward per length (train/lengths.py; not with `forward`).
    """
    sigma, noise = drawn if drawn is not None else draw_noise(batch, timesteps, gen)
    x = batch.latents
    nb = torch.device(device).type == "cuda"  # copies from pinned memory need not block the host
    cap_mask = batch.cap_mask.to(device, non_blocking=nb) if batch.cap_mask is not None else None
    if rollout and rollout[0] > 0:  # scheduled sampling (experimental): inputs from the model's own rollout
        x_sigma, target = _rollout(backbone, adapters, batch, x.float(), noise, sigma, rollout, gen, device, dtype)
        x_sigma, target, sigma_d = x_sigma.to(device), target.to(device), sigma.to(device)
    else:
        x = x.to(device, non_blocking=nb).float()
        noise, sigma_d = noise.to(device, non_blocking=nb), sigma.to(device, non_blocking=nb)
        x_sigma = recipe.add_noise(x, noise, sigma_d)
        target = recipe.velocity_target(x, noise)
    cap = batch.cap_feats.to(device, non_blocking=nb).to(dtype)
    if forward is None and split_lengths and batch.cap_mask is not None:
        pred = velocity_by_length(backbone, x_sigma.to(dtype), sigma_d, cap, cap_mask, adapters,
                                  length_groups(batch.cap_mask))
    elif forward is None:
        pred = backbone.velocity(x_sigma.to(dtype), sigma_d, cap, cap_mask, adapters)
    else:
        pred = forward(x_sigma.to(dtype), sigma_d, cap, cap_mask)
    weights = recipe.loss_weights(sigma, weighting, gamma) * batch.loss_weights
    mask = batch.masks.to(device, non_blocking=nb) if batch.masks is not None else None
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
