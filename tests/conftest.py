"""Shared fixtures: tiny real models built in code (no downloads)."""

from __future__ import annotations

import pytest
import torch


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
