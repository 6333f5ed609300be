"""Shared fixtures: tiny real models built in code (no downloads); what they build comes from builders.py."""

from __future__ import annotations

import signal

import pytest
import torch

import builders


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


@pytest.fixture
def write_image():
    """write_image(path, size=(w, h), caption='a photo' | None, seed=0, mode='RGB', **PIL save kwargs) -> path"""
    return builders.write_image


@pytest.fixture
def make_dataset():
    """make_dataset(path, **DatasetConfig overrides) -> DatasetConfig at test-image scale."""
    return builders.dataset


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


@pytest.fixture
def tensor_cache():
    """Four in-memory samples in two buckets, with features for 'a red cube' and the empty prompt."""
    return builders.tensor_cache()


@pytest.fixture
def run_config():
    """run_config(tmp_path, resume_from='', save=None, **TrainConfig overrides) -> a tiny LoRA RunConfig."""
    return builders.run_config
