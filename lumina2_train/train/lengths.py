"""`train.split_caption_lengths`: a batch whose captions differ in length runs without a padding mask.

Attention with a padding mask takes a much slower kernel than the unmasked fused ones (docs/benchmarks.md).
Here the rows of such a batch are grouped by caption length and each group runs its own forward with its
captions cut to that length and no mask; the predictions go back into the batch's order, so the loss, its
gradient and everything after it are those of the masked forward (padding never reaches a kept token:
masked keys, and positions from each row's own caption length). The cost is one forward per distinct length
instead of one per batch. No ComfyUI imports.
"""

from __future__ import annotations

import torch


def length_groups(cap_mask: torch.Tensor) -> list[tuple[int, list[int]]]:
    """(caption length, row indices) per distinct length, in order of first appearance."""
    groups: dict[int, list[int]] = {}
    for row, n in enumerate(cap_mask.long().sum(1).tolist()):
        groups.setdefault(int(n), []).append(row)
    return list(groups.items())


def velocity_by_length(backbone, x_sigma: torch.Tensor, sigma: torch.Tensor, cap: torch.Tensor,
                       cap_mask: torch.Tensor | None, adapters: dict, groups: list | None = None) -> torch.Tensor:
    """backbone.velocity of the batch, one unmasked forward per caption length (`groups` from
    `length_groups`, computed from the CPU copy of the mask to spare a device wait)."""
    if cap_mask is None:
        return backbone.velocity(x_sigma, sigma, cap, None, adapters)
    groups = groups if groups is not None else length_groups(cap_mask.cpu())
    if len(groups) == 1:
        n, _ = groups[0]
        return backbone.velocity(x_sigma, sigma, cap[:, :n], None, adapters)
    preds, order = [], []
    for n, rows in groups:
        idx = torch.tensor(rows, device=x_sigma.device)
        preds.append(backbone.velocity(x_sigma[idx], sigma[idx], cap[idx, :n], None, adapters))
        order += rows
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return torch.cat(preds)[inverse.to(x_sigma.device)]
