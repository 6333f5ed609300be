"""Fixtures for cache tests: the tiny HF encoders (real models) behind a provider that counts what it encodes."""

from __future__ import annotations

import pytest

from lumina2_train.config import DataConfig
from lumina2_train.encoders.hf import HFEncoders


class CountingEncoders:
    """Wraps a real EncoderProvider and records every load and every text/image it encodes."""

    def __init__(self, inner):
        self.inner = inner
        self.text_identity = inner.text_identity
        self.vae_identity = inner.vae_identity
        self.texts: list[str] = []
        self.images = 0
        self.releases = 0

    @property
    def loads(self) -> dict[str, int]:
        return self.inner.loads

    def text_encoder(self):
        inner, outer = self.inner.text_encoder(), self

        class Text:
            def encode(self, texts, max_tokens):
                outer.texts += list(texts)
                return inner.encode(texts, max_tokens)

        return Text()

    def latent_encoder(self):
        inner, outer = self.inner.latent_encoder(), self

        class Latent:
            def encode(self, pixels):
                outer.images += pixels.shape[0]
                return inner.encode(pixels)

            def decode(self, latents):
                return inner.decode(latents)

        return Latent()

    def release(self) -> None:
        self.releases += 1
        self.inner.release()


@pytest.fixture
def encoders(tiny_encoder_dir):
    """A fresh counting provider over HFEncoders.from_paths of the tiny model folder (nothing loaded yet)."""
    return CountingEncoders(HFEncoders.from_paths(str(tiny_encoder_dir), str(tiny_encoder_dir)))


@pytest.fixture
def new_encoders(tiny_encoder_dir):
    """A factory of fresh counting providers (a 'second run' in the same test)."""
    return lambda: CountingEncoders(HFEncoders.from_paths(str(tiny_encoder_dir), str(tiny_encoder_dir)))


@pytest.fixture
def photo_folder(tmp_path, write_image):
    """Five captioned images in three buckets at resolution 64."""
    root = tmp_path / "photos"
    sizes = [(96, 48), (48, 96), (64, 64), (90, 60), (64, 64)]  # 90x60 -> 80x48 with room to crop
    for i, size in enumerate(sizes):
        write_image(root / f"img{i}.png", size, caption=f"photo number {i}, tag a, tag b", seed=i)
    return root


@pytest.fixture
def photo_data(photo_folder, make_dataset):
    """DataConfig over photo_folder with flips on and random crops."""
    return DataConfig(datasets=(make_dataset(photo_folder, flip=True, crop_style="random"),), seed=3)
