"""Full fine-tune outputs: the UNETLoader-style file and the diffusers folder reproduce the trained model."""

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from lumina2_train.config import AdapterConfig
from lumina2_train.files.fullmodel import diff_state_dict, diffusers_config
from lumina2_train.files.loading import load_backbone
from lumina2_train.tiny import NATIVE_WIDTH_DIT, TINY_DIT
from lumina2_train.train import Trainer

from builders import velocity_inputs


@pytest.fixture
def trained(tiny_backbone, tensor_cache, run_config, tmp_path):
    cfg = run_config(tmp_path, steps=2, lr=1e-2, caption_dropout=0.0)
    cfg = dataclasses.replace(cfg, adapter=AdapterConfig(kind="full", targets=("attention", "ffn")),
                              save=dataclasses.replace(cfg.save, dtype="fp32", name="ft"))
    trainer = Trainer(cfg, tiny_backbone, tensor_cache, run_dir=tmp_path / "run")
    return trainer, trainer.run()


def _inputs():
    return velocity_inputs(2, 5, sigmas=[0.3, 0.7], seed=4)


@pytest.mark.slow
def test_the_model_file_loads_and_matches_the_trained_model(trained, tiny_backbone):
    trainer, res = trained
    sd = load_file(str(res.lora_path))
    assert "layers.0.attention.qkv.weight" in sd and "norm_final.weight" in sd
    assert not any(k.startswith(("diffusion_model.", "model.")) for k in sd)  # bare keys, like the official file
    x, s, f = _inputs()
    with torch.no_grad():
        ours = tiny_backbone.velocity(x, s, f, None, res.adapters.as_dict())
        loaded = load_backbone(res.lora_path, "fp32").velocity(x, s, f, None)
        untrained = tiny_backbone.velocity(x, s, f, None)
    torch.testing.assert_close(loaded, ours, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(untrained, ours, atol=1e-4)


@pytest.mark.slow
def test_the_diffusers_folder_loads_in_diffusers(trained, tiny_backbone):
    from diffusers import Lumina2Transformer2DModel

    trainer, res = trained
    model = Lumina2Transformer2DModel.from_pretrained(res.run_dir / "transformer", local_files_only=True).eval()
    x, s, f = _inputs()
    with torch.no_grad():
        ours = tiny_backbone.velocity(x, s, f, None, res.adapters.as_dict())
        theirs = -model(x, 1 - s, f, torch.ones(2, 5, dtype=torch.long), return_dict=False)[0]
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_diff_patches_add_up_to_the_trained_weights(trained, tiny_backbone):
    trainer, res = trained
    diffs = diff_state_dict(res.adapters, tiny_backbone)
    name = "layers.1.feed_forward.w2"
    torch.testing.assert_close(tiny_backbone.base_weight(name) + diffs[f"diffusion_model.{name}.diff"],
                               res.adapters[name].weight.float())
    assert len(diffs) == len(res.adapters.names)


@pytest.mark.slow
@pytest.mark.parametrize("config", [TINY_DIT, NATIVE_WIDTH_DIT, dict(TINY_DIT, hidden_size=2304, num_layers=26,
                                                                     num_attention_heads=24, num_kv_heads=8,
                                                                     axes_dim_rope=(32, 32, 32), cap_feat_dim=2304)])
def test_diffusers_config_rebuilds_the_shapes(config):
    from diffusers import Lumina2Transformer2DModel

    from lumina2_train.backbones.diffusers import DiffusersBackbone

    with torch.device("meta"):
        original = Lumina2Transformer2DModel(**config)
        arch = DiffusersBackbone.from_model(original).arch
        rebuilt = Lumina2Transformer2DModel(**{k: v for k, v in diffusers_config(arch).items()
                                               if not k.startswith("_")})
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in original.state_dict().items()}
