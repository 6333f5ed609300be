"""Shared fixtures: tiny real models built in code (no downloads)."""

from __future__ import annotations

import signal

import pytest
import torch


def pytest_configure(config):
    """A run started in the background of a non-interactive shell (`cmd &`, nohup) inherits SIGINT ignored; then
    Ctrl-C never reaches Python, here or in the runs the tests start. The Ctrl-C tests need Python's own handler
    (children inherit the default disposition from a handled signal), so it is restored for the session."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_dit():
    from lumina2_train.tiny import make_tiny_transformer

    return make_tiny_transformer(seed=0)


@pytest.fixture
def tiny_backbone(tiny_dit):
    from lumina2_train.backbones.diffusers import DiffusersBackbone

    return DiffusersBackbone.from_model(tiny_dit)


# ---------------------------------------------------------------- image files and tiny encoders (data, cache, encoders)


def _noise_image(size, mode="RGB", seed=0):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    return img if mode == "RGB" else img.convert(mode)


def _write_image(path, size=(64, 48), *, caption="a photo", seed=0, mode="RGB", **save_kw):
    """Write a random-pixel image (format from the suffix) and, unless caption is None, its .txt caption."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _noise_image(size, mode, seed).save(path, **save_kw)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return path


def _dataset(path, **kw):
    """A DatasetConfig sized for tiny test images (resolution 64, min side 16)."""
    from lumina2_train.config import DatasetConfig

    return DatasetConfig(**{"path": str(path), "resolution": 64, "min_size_px": 16, **kw})


@pytest.fixture
def write_image():
    """write_image(path, size=(w, h), caption='a photo' | None, seed=0, mode='RGB', **PIL save kwargs) -> path"""
    return _write_image


@pytest.fixture
def make_dataset():
    """make_dataset(path, **DatasetConfig overrides) -> DatasetConfig at test-image scale."""
    return _dataset


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory):
    """A diffusers-layout folder with the tiny text_encoder/, tokenizer/ and vae/ (built once per session)."""
    from lumina2_train.tiny.text import save_tiny_text_encoder
    from lumina2_train.tiny.vae import save_tiny_vae

    root = tmp_path_factory.mktemp("tiny_encoders")
    save_tiny_text_encoder(root, seed=0)
    save_tiny_vae(root, seed=0)
    return root


# ---------------------------------------------------------------- in-memory training data and run configs (train, adapters)


from lumina2_train.config import AdapterConfig, RunConfig, SaveConfig, TrainConfig, ValidationConfig  # noqa: E402
from lumina2_train.train import TensorCache, TensorSample  # noqa: E402


@pytest.fixture
def tensor_cache():
    gen = torch.Generator().manual_seed(7)
    lat = [torch.randn(16, 4, 4, generator=gen) for _ in range(3)] + [torch.randn(16, 4, 6, generator=gen)]
    feats = [torch.randn(n, 32, generator=gen) for n in (5, 3, 5, 4)]
    samples = [TensorSample(latent=x, cap_feats=f, caption=f"c{i}") for i, (x, f) in enumerate(zip(lat, feats))]
    return TensorCache(samples, prompts={"a red cube": torch.randn(6, 32, generator=gen),
                                         "": torch.randn(1, 32, generator=gen)},
                       empty=torch.randn(1, 32, generator=gen))


@pytest.fixture
def run_config():
    return _run_config


def _run_config(tmp_path, resume_from: str = "", **train) -> RunConfig:
    t = dict(steps=4, batch_size=2, lr=1e-3, precision="fp32", checkpointing="off", caption_dropout=0.2, seed=5)
    t.update(train)
    return RunConfig(adapter=AdapterConfig(rank=4, alpha=4.0, targets=("attention", "ffn"), dropout=0.1),
                     train=TrainConfig(**t), validation=ValidationConfig(), save=SaveConfig(output_dir=str(tmp_path)),
                     resume_from=resume_from)
