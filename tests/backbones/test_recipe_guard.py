"""Z-Image runs through our forward, but training it needs its own recipe: until then both run paths refuse it."""

import pytest

from lumina2_train.backbones import family
from lumina2_train.backbones.arch import ArchConfig
from lumina2_train.errors import ModelError


def test_only_members_with_a_training_recipe_are_trained():
    family.require_recipe(ArchConfig(), "model")  # Lumina-Image-2.0
    with pytest.raises(ModelError, match=r"model\.transformer: this is Z-Image .*recipe"):
        family.require_recipe(ArchConfig(family="zimage"), "model.transformer")
