"""CacheHandle: what training reads. Small and frozen; tensors load lazily from disk, one entry at a time."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..config import CacheConfig, DataConfig
from ..data import DataItem, prepare_pixels
from ..data.images import prepare_mask
from ..encoders import EncoderProvider
from ..errors import CacheError, ModelError
from ..recipe import LUMINA2, dropped_prompt, format_prompt
from .store import LATENTS, TEXTS, entry_path, read_entry, text_key


def family_text_key(prompt: str, text_identity: str, max_tokens: int, family: str) -> str:
    """The text entry key: store.text_key with the prompt family (recipe.PROMPT_FAMILIES) in the identity, so
    features of one family's prompt format are never read for another's. Lumina2's keys are the ones caches
    made before families existed, so those stay valid."""
    identity = text_identity if family == LUMINA2 else f"{family}|{text_identity}"
    return text_key(prompt, identity, max_tokens)


@dataclass(frozen=True)
class Sample:
    latent: torch.Tensor  # (16, h/8, w/8) float32, scaled space (recipe.latent_in applied)
    cap_feats: torch.Tensor  # (L, D) float32, unpadded
    caption: str
    loss_weight: float
    is_regularisation: bool
    mask: torch.Tensor | None = None  # (1, h/8, w/8) in [0, 1] for masked loss (mask_strategy); else None


@dataclass(frozen=True)
class CacheHandle:
    """The cache of one dataset under one encoder pair, system prompt and prompt family (Lumina2, Z-Image).

    Picklable unless `vae_cache_disable` is on: then it carries the encoder provider and encodes latents
    in `sample()` (use it in the main process, e.g. DataLoader num_workers=0).
    """

    root: Path
    fingerprint: str
    system_prompt: str  # the exact text ('' for 'none')
    text_identity: str
    vae_identity: str
    max_tokens: int
    items: tuple[DataItem, ...]
    latent_keys: tuple[tuple[str, str], ...]  # per item: (key, key of the flipped latent or '')
    data: DataConfig
    config: CacheConfig
    dataset_fingerprint: str
    encoders: EncoderProvider | None = field(default=None, compare=False, repr=False)
    family: str = LUMINA2  # the prompt format of the features (recipe.format_prompt), as backbones/family.py

    def __len__(self) -> int:
        """The number of DataItems (repeats not expanded)."""
        return len(self.items)

    @property
    def on_the_fly(self) -> bool:
        return self.config.vae_cache_disable

    def repeats(self, i: int) -> int:
        return self.items[i].repeats

    def buckets(self) -> dict[tuple[int, int], list[int]]:
        """(width_px, height_px) -> item indices, in item order."""
        out: dict[tuple[int, int], list[int]] = {}
        for i, item in enumerate(self.items):
            out.setdefault(tuple(item.bucket), []).append(i)
        return out

    def can_flip(self, i: int) -> bool:
        return self.items[i].flip

    def sample(self, i: int, *, flip: bool = False) -> Sample:
        """Item i's latent (flipped if asked) and caption features, read from disk (or encoded on the fly).

        Raises:
            CacheError: flip asked for an item whose dataset has flip off, or an entry is missing/unreadable.
        """
        item = self.items[i]
        if flip and not item.flip:
            raise CacheError(f"{item.path}: no flipped latent (flip is off for dataset {item.dataset_index}). "
                             "Turn flip on for that dataset and rebuild the cache, or ask for flip=False.")
        latent = self._latent(i, flip)
        mask = prepare_mask(item, tuple(latent.shape[-2:]), flip=flip) if item.mask_source else None
        return Sample(latent, self.prompt_features(item.caption), item.caption, item.loss_weight,
                      item.is_regularisation, mask)

    def _latent(self, i: int, flip: bool) -> torch.Tensor:
        if self.on_the_fly:
            if self.encoders is None:
                raise CacheError("cache.vae_cache_disable is on but this cache handle has no encoders. Build it "
                                 "with build_cache(..., encoders) in this process.")
            pixels = prepare_pixels(self.items[i], flip=flip)  # (3, H, W)
            return self.encoders.latent_encoder().encode(pixels[None])[0]
        key = self.latent_keys[i][1 if flip else 0]
        return read_entry(entry_path(self.root, LATENTS, key), key)[0]["latent"]

    def prompt_features(self, caption: str) -> torch.Tensor:
        """(L, D) float32 features of format_prompt(caption, system_prompt, family).

        Raises:
            KeyError: naming the caption, when it was not cached (pass it in build_cache's extra_prompts).
        """
        return self._text(format_prompt(caption, self.system_prompt, self.family), caption)

    def empty_prompt_features(self) -> torch.Tensor:
        """Features of the dropped caption (recipe.dropped_prompt: Lumina2 "", no system prompt; Z-Image its
        template around ""): caption dropout."""
        return self._text(dropped_prompt(self.family), "")

    def require_family(self, family: str, where: str) -> None:
        """ModelError when the DiT's family (backbones/family.py) is not the one these features were made for."""
        if family != self.family:
            raise ModelError(f"{where}: a {family} model, but the text cache holds {self.family} prompts (its "
                             f"text encoder's format). Use the text encoder of the {family} model (Lumina2: "
                             "Gemma2-2B, Z-Image: Qwen3-4B) and build the cache again.")

    def caption_length(self, i: int) -> int:
        """Tokens of item i's caption features, read from the entry's safetensors header (no tensor loads).

        Raises:
            CacheError: the entry is missing or unreadable.
        """
        caption = self.items[i].caption
        key = family_text_key(format_prompt(caption, self.system_prompt, self.family), self.text_identity,
                              self.max_tokens, self.family)
        path = entry_path(self.root, TEXTS, key)
        try:
            with safe_open(str(path), framework="pt") as f:
                return int(f.get_slice("cap_feats").get_shape()[0])
        except (OSError, SafetensorError, ValueError, KeyError) as e:
            raise CacheError(f"{path}: the text entry of caption {caption!r} cannot be read ({e}). Run the "
                             "caching step again; it rewrites missing entries.") from None

    def _text(self, prompt: str, caption: str) -> torch.Tensor:
        key = family_text_key(prompt, self.text_identity, self.max_tokens, self.family)
        path = entry_path(self.root, TEXTS, key)
        if not path.is_file():
            raise KeyError(f"caption {caption!r} has no cached text features in {self.root}. Add it to "
                           "build_cache's extra_prompts (validation and negative prompts) and build again.")
        return read_entry(path, key)[0]["cap_feats"]
