"""Which file loads where, outside ComfyUI (docs/nodes.md, "Which file loads where"; the ComfyUI rows are in
tests/comfy/test_lora_formats.py). diffusers' Lumina2 converter assumes the 2B model's widths, so its rows use a
real Lumina2Transformer2DModel at width 2304 with 2 layers (CPU)."""

import json
import logging

import pytest
import torch

from lumina2_train.adapters import build_adapters
from lumina2_train.backbones.diffusers import DiffusersBackbone
from lumina2_train.config import TARGET_PRESETS, AdapterConfig
from lumina2_train.files import formats
from lumina2_train.tiny import NATIVE_WIDTH_DIT, make_tiny_transformer

from builders import diffusers_velocity, lumina2_pipeline, velocity_inputs

FULL_WIDTH_2_LAYERS = dict(NATIVE_WIDTH_DIT, num_layers=2)


def _adapters(backbone, **kw):
    adapters = build_adapters(backbone, AdapterConfig(rank=4, alpha=8.0, **kw))
    with torch.no_grad():
        for p in adapters.parameters():
            p.normal_(0, 0.02)
    return adapters


def _inputs():
    return velocity_inputs(1, 5, sigmas=[0.6], seed=0)


def _through_diffusers(model, path):
    """Velocity of `model` after Lumina2Pipeline.load_lora_weights(path), in our convention (ε − x)."""
    pipe = lumina2_pipeline(model)
    pipe.load_lora_weights(str(path))
    return diffusers_velocity(pipe, *_inputs())


def _ours(backbone, adapters):
    x, sigma, feats = _inputs()
    with torch.no_grad():
        return backbone.velocity(x, sigma, feats, None, adapters.as_dict())


@pytest.mark.slow
@pytest.mark.parametrize("targets, blocks, refiners", [
    (TARGET_PRESETS["attention"], "all", True),  # the default: attention only, every block
    (("ffn", "adaln"), "1", False),  # a sparse block list (layer 1 only), no refiners, other modules
], ids=["attention-default", "sparse-ffn-adaln"])
def test_the_default_comfyui_file_loads_in_diffusers_for_any_block_targets(tmp_path, targets, blocks, refiners):
    model = make_tiny_transformer(0, FULL_WIDTH_2_LAYERS, std=0.02)
    backbone = DiffusersBackbone.from_model(model)
    adapters = _adapters(backbone, targets=targets, blocks=blocks, refiners=refiners)
    path = formats.save_adapters(adapters, tmp_path / "x.safetensors", dtype="fp32", arch=backbone.arch,
                                 metadata=formats.lora_metadata(rank=4, alpha=8.0, step=1))
    ours = _ours(backbone, adapters)
    torch.testing.assert_close(_through_diffusers(model, path), ours, atol=1e-4, rtol=1e-4)
    sd, md = formats.load_state_dict(path)
    filled = json.loads(md["lumina2t.zero_filled"])
    assert filled and not set(filled) & set(adapters.names) and "zeros" in md["lumina2t.zero_filled_note"]
    assert all(not sd[f"diffusion_model.{n}.lora_B.weight"].any() for n in filled)
    assert {sd[f"diffusion_model.{n}.lora_A.weight"].shape[0] for n in filled} == {4}  # one rank: scale 1 anywhere
    assert set(formats.read_lora(path, backbone.arch)) == set(adapters.names)  # our readers drop the zero pairs


@pytest.mark.slow
def test_final_and_embedder_targets_need_the_diffusers_format(tmp_path, caplog):
    model = make_tiny_transformer(0, FULL_WIDTH_2_LAYERS, std=0.02)
    backbone = DiffusersBackbone.from_model(model)
    adapters = _adapters(backbone, targets=TARGET_PRESETS["attention"] + ("final", "embedders"))
    from diffusers import Lumina2Pipeline

    with caplog.at_level(logging.WARNING, "lumina2_train"):
        comfy_file = formats.save_adapters(adapters, tmp_path / "c.safetensors", dtype="fp32", arch=backbone.arch)
    assert "cannot load this file" in caplog.text and "final_layer" in caplog.text and "--to diffusers" in caplog.text
    with pytest.raises((KeyError, ValueError)):  # diffusers 0.42: its converter pops block keys, then refuses the rest
        Lumina2Pipeline.lora_state_dict(str(comfy_file))
    caplog.clear()
    with caplog.at_level(logging.WARNING, "lumina2_train"):
        diffusers_file = formats.save_adapters(adapters, tmp_path / "d.safetensors", fmt="diffusers", dtype="fp32",
                                               arch=backbone.arch)
    assert "ComfyUI does not load a 'diffusers'-format" in caplog.text
    torch.testing.assert_close(_through_diffusers(model, diffusers_file), _ours(backbone, adapters), atol=1e-4,
                               rtol=1e-4)


def test_kohya_files_are_not_read_by_diffusers_and_follow_kohyas_names(tiny_backbone, tmp_path):
    from diffusers import Lumina2Pipeline

    adapters = _adapters(tiny_backbone, targets=TARGET_PRESETS["all"] + ("final", "embedders"))
    path = formats.save_adapters(adapters, tmp_path / "k.safetensors", fmt="kohya", dtype="fp32",
                                 arch=tiny_backbone.arch)
    keys = set(formats.load_state_dict(path)[0])
    assert not any(k.startswith("transformer.") for k in Lumina2Pipeline.lora_state_dict(str(path)))  # loads nothing
    # kohya's LoRANetwork names a module "lora_unet_" + its path in the official NextDiT with "." -> "_", and
    # stores lora_down, lora_up and alpha (the fused qkv unsplit unless split_qkv); our native names are those paths
    expected = {f"lora_unet_{n.replace('.', '_')}.{s}" for n in adapters.names
                for s in ("lora_down.weight", "lora_up.weight", "alpha")}
    assert keys == expected


def test_a_model_of_other_widths_warns_that_diffusers_cannot_load_the_comfyui_file(tiny_backbone, tmp_path, caplog):
    adapters = _adapters(tiny_backbone, targets=TARGET_PRESETS["attention"])
    with caplog.at_level(logging.WARNING, "lumina2_train"):
        path = formats.save_adapters(adapters, tmp_path / "x.safetensors", dtype="fp32", arch=tiny_backbone.arch)
    assert "splits qkv as 2304/768/768 rows" in caplog.text and "this model's are 96/48/48" in caplog.text
    assert len(formats.load_state_dict(path)[0]) == 2 * len(adapters)  # nothing filled: it would not help


@pytest.mark.parametrize("kind", ["loha", "lokr", "dora"])
def test_lycoris_and_dora_files_warn_that_diffusers_cannot_load_them(tiny_backbone, tmp_path, caplog, kind):
    cfg = AdapterConfig(kind="lora" if kind == "dora" else kind, use_dora=kind == "dora", rank=4, alpha=4.0,
                        targets=("attention",))
    with caplog.at_level(logging.WARNING, "lumina2_train"):
        formats.save_adapters(build_adapters(tiny_backbone, cfg), tmp_path / "x.safetensors", arch=tiny_backbone.arch)
    assert "diffusers cannot load this file" in caplog.text
