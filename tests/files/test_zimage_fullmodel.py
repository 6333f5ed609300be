"""A Z-Image full fine-tune's outputs: the model file (what ComfyUI's UNETLoader opens) and the diffusers folder
(a ZImageTransformer2DModel) reproduce the trained model, as for Lumina2 (tests/files/test_fullmodel.py)."""

import dataclasses

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lumina2_train.backbones.diffusers import DiffusersBackbone
from lumina2_train.backbones.family import arch_from_shapes
from lumina2_train.config import AdapterConfig
from lumina2_train.errors import ModelError
from lumina2_train.files.fullmodel import zimage_diffusers_config
from lumina2_train.files.loading import load_backbone
from lumina2_train.tiny import make_tiny_transformer
from lumina2_train.train import Trainer

from builders import tensor_cache, velocity_inputs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from builders import run_config

    tmp = tmp_path_factory.mktemp("zimage_full")
    backbone = DiffusersBackbone.from_model(make_tiny_transformer(seed=0, family="zimage"))
    cfg = run_config(tmp, steps=2, lr=1e-2, caption_dropout=0.0)
    cfg = dataclasses.replace(cfg, adapter=AdapterConfig(kind="full", targets=("attention", "ffn", "adaln")),
                              save=dataclasses.replace(cfg.save, dtype="fp32", name="zft"))
    return backbone, Trainer(cfg, backbone, tensor_cache(), run_dir=tmp / "run").run()


def _inputs():
    return velocity_inputs(2, 5, sigmas=[0.3, 0.7], seed=4)


def test_the_zimage_model_file_is_a_zimage_and_matches_the_trained_model(trained):
    backbone, res = trained
    sd = load_file(str(res.lora_path))
    assert "layers.0.attention.qkv.weight" in sd and "cap_pad_token" in sd
    with safe_open(str(res.lora_path), framework="pt") as f:
        md = f.metadata()
    assert md["modelspec.architecture"] == "z-image" and md["lumina2t.family"] == "zimage"
    assert "Lumina-Image-2.0" not in md.get("modelspec.implementation", "")
    assert arch_from_shapes({k: tuple(v.shape) for k, v in sd.items()}, "file").family == "zimage"
    x, s, f = _inputs()
    with torch.no_grad():
        ours = backbone.velocity(x, s, f, None, res.adapters.as_dict())
        loaded = load_backbone(res.lora_path, "fp32").velocity(x, s, f, None)
        untrained = backbone.velocity(x, s, f, None)
    torch.testing.assert_close(loaded, ours, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(untrained, ours, atol=1e-4)


def test_the_zimage_diffusers_folder_loads_as_a_zimage_transformer(trained):
    from diffusers import ZImageTransformer2DModel

    backbone, res = trained
    model = ZImageTransformer2DModel.from_pretrained(res.run_dir / "transformer", local_files_only=True).eval()
    x, s, f = _inputs()
    with torch.no_grad():
        ours = backbone.velocity(x, s, f, None, res.adapters.as_dict())
        theirs = DiffusersBackbone.from_model(model).velocity(x, s, f, None)  # pinned to diffusers' own forward
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


def test_a_zimage_ffn_width_diffusers_cannot_build_is_refused():
    arch = dataclasses.replace(DiffusersBackbone.from_model(make_tiny_transformer(family="zimage")).arch,
                               ffn_hidden=100)
    with pytest.raises(ModelError, match="FFN is 100 wide.*model file"):
        zimage_diffusers_config(arch)
