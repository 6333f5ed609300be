"""Evaluation during training: held-out loss at fixed noise levels, and CLIP scores of validation images.

Held-out loss: the same images, σ values and noise every time (seeded), so curves are comparable across
steps and runs; the held-out items never enter a training batch. No ComfyUI imports.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import recipe
from ..errors import ModelError


def holdout_indices(n_items: int, count: int, seed: int) -> list[int]:
    """`count` item indices chosen by seed (kept out of training)."""
    if count <= 0:
        return []
    if count >= n_items:
        raise ValueError(f"validation.eval_holdout is {count} but the dataset has {n_items} images; "
                         "hold out fewer than that so some remain for training")
    order = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed + 7919)).tolist()
    return sorted(order[:count])


@torch.no_grad()
def heldout_loss(backbone, adapters, cache, indices: list[int], sigmas: tuple[float, ...], *, seed: int,
                 device, dtype) -> dict[float, float]:
    """{σ: mean loss over the held-out items} with fixed noise per (item, σ)."""
    out = {}
    for j, sigma in enumerate(sigmas):
        losses = []
        for i in indices:
            s = cache.sample(i)
            x = s.latent.float()[None]
            gen = torch.Generator().manual_seed((seed * 1_000_003 + i) * 101 + j)
            noise = torch.randn(x.shape, generator=gen)
            sig = torch.tensor([sigma])
            pred = backbone.velocity(recipe.add_noise(x, noise, sig).to(device, dtype), sig.to(device),
                                     s.cap_feats[None].to(device, dtype), None, adapters)
            losses.append(recipe.flow_loss(pred, recipe.velocity_target(x, noise).to(device)).item())
        out[float(sigma)] = sum(losses) / len(losses)
    return out


class ClipScorer:
    """100 · max(cos(image, text), 0) with a local transformers CLIP model (no download)."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu"):
        from transformers import CLIPModel, CLIPProcessor

        p = Path(path)
        if not (p / "config.json").is_file():
            raise ModelError(f"validation.clip_model '{p}': no config.json there. Give a local CLIP folder "
                             "(e.g. a downloaded openai/clip-vit-large-patch14)")
        from ..files.weights_errors import naming, require_all_weights

        with naming("validation.clip_model", p):
            model, info = CLIPModel.from_pretrained(p, local_files_only=True, output_loading_info=True)
            self.processor = CLIPProcessor.from_pretrained(p, local_files_only=True)
        require_all_weights("validation.clip_model", p, info)
        self.model = model.eval().to(device)
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> list[float]:
        """images (N, 3, H, W) in [0, 1]; one prompt per image."""
        arrays = [(img.clamp(0, 1).permute(1, 2, 0) * 255).round().byte().numpy() for img in images]
        batch = self.processor(text=list(prompts), images=arrays, return_tensors="pt", padding=True,
                               truncation=True).to(self.device)
        img = self.model.get_image_features(pixel_values=batch["pixel_values"])
        txt = self.model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        img = getattr(img, "pooler_output", img)
        txt = getattr(txt, "pooler_output", txt)
        cos = torch.nn.functional.cosine_similarity(img.float(), txt.float(), dim=-1)
        return [100.0 * max(float(c), 0.0) for c in cos]
