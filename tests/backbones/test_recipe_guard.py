"""Lumina-Image-2.0 and Z-Image have a training recipe (recipe.FAMILY_RECIPES); any other member whose forward
might run is refused by both run paths until it has one."""

import pytest

from lumina2_train import recipe
from lumina2_train.backbones import family
from lumina2_train.backbones.arch import ArchConfig
from lumina2_train.errors import ModelError


def test_members_with_a_training_recipe_are_trained():
    family.require_recipe(ArchConfig(), "model")  # Lumina-Image-2.0
    family.require_recipe(ArchConfig(family="zimage"), "model.transformer")
    assert {k.split("-")[0] for k in recipe.FAMILY_RECIPES} == set(family.TRAINED)


@pytest.mark.parametrize("member, name", [("newbie", "newbie"), ("zimage_omni", "zimage_omni")])
def test_a_member_without_a_recipe_is_still_refused(member, name):
    with pytest.raises(ModelError, match=rf"model\.transformer: this is {name} \(its forward is supported, its "
                                         r"training recipe.*is not yet\).*docs/recipe\.md"):
        family.require_recipe(ArchConfig(family=member), "model.transformer")
