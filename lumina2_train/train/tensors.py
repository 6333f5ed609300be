"""An in-memory cache of ready tensors (latents + caption features), with the CacheSource interface
(cache/source.py).

For training on tensors that are already encoded: ComfyUI LATENT + CONDITIONING inputs, the benchmark,
and tests. Disk caches with fingerprints live in lumina2_train/cache/.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class TensorSample:
    latent: torch.Tensor  # (16, h, w) scaled latent
    cap_feats: torch.Tensor  # (L, D)
    caption: str = ""
    loss_weight: float = 1.0
    is_regularisation: bool = False
    mask: torch.Tensor | None = None


@dataclass
class TensorCache:
    """Samples held in memory; `prompts` maps captions to features for validation and caption dropout."""

    samples: list[TensorSample]
    prompts: dict[str, torch.Tensor] = field(default_factory=dict)
    empty: torch.Tensor | None = None  # features of "" (caption dropout)
    system_prompt: str = ""
    fingerprint: str = "in-memory"
    sample_repeats: dict[int, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def on_the_fly(self) -> bool:
        return False  # every tensor is ready

    def repeats(self, i: int) -> int:
        return self.sample_repeats.get(i, 1)

    def buckets(self) -> dict[tuple[int, int], list[int]]:
        out: dict[tuple[int, int], list[int]] = {}
        for i, s in enumerate(self.samples):
            h, w = s.latent.shape[-2:]
            out.setdefault((w * 8, h * 8), []).append(i)
        return out

    def sample(self, i: int, *, flip: bool = False) -> TensorSample:
        s = self.samples[i]
        if not flip:
            return s
        mask = None if s.mask is None else s.mask.flip(-1)
        return TensorSample(s.latent.flip(-1), s.cap_feats, s.caption, s.loss_weight, s.is_regularisation, mask)

    def can_flip(self, i: int) -> bool:
        return False

    def caption_length(self, i: int) -> int:
        """Tokens of item i's caption features (batching by caption length)."""
        return int(self.samples[i].cap_feats.shape[0])

    def prompt_features(self, caption: str) -> torch.Tensor:
        if caption not in self.prompts:
            raise KeyError(f"no text features for prompt {caption!r}; encode it before training")
        return self.prompts[caption]

    def empty_prompt_features(self) -> torch.Tensor:
        if self.empty is None:
            raise KeyError("no text features for the empty prompt; caption dropout needs them")
        return self.empty
