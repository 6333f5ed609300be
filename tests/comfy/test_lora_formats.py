"""Which file loads where, in a real ComfyUI (docs/nodes.md, "Which file loads where"; the diffusers and kohya rows
are in tests/files/test_file_consumers.py). The tiny ComfyUI model has Lumina2's real widths (2304, FFN 9216, 2+2
refiners) and 1 layer, so the default file here also carries the zero pairs written for diffusers."""

import json
import logging

import pytest
import torch

from lumina2_train.adapters import build_adapters
from lumina2_train.backbones.comfy import ComfyBackbone
from lumina2_train.config import TARGET_PRESETS, AdapterConfig
from lumina2_train.files.formats import load_state_dict, save_adapters

from builders import velocity_inputs

pytestmark = pytest.mark.comfy


@pytest.fixture(scope="module")
def lora(comfy, comfy_model):
    """(backbone, attention-only adapters with random weights, their output, the base output) on the ComfyUI MODEL:
    the default target set. Outputs are taken before any LoRA loads (ComfyUI patches the shared weights)."""
    with torch.inference_mode():
        backbone = ComfyBackbone.from_model_patcher(comfy_model)
    adapters = build_adapters(backbone, AdapterConfig(rank=4, alpha=8.0, targets=TARGET_PRESETS["attention"]))
    with torch.no_grad():
        for p in adapters.parameters():
            p.normal_(0, 0.02)
        x, sigma, feats = _inputs()
        ours, base = (backbone.velocity(x, sigma, feats, None, a) for a in (adapters.as_dict(), None))
    assert (ours - base).abs().max() > 1e-3
    return backbone, adapters, ours, base


def _load(comfy, comfy_model, name, caplog):
    caplog.clear()
    with caplog.at_level(logging.WARNING), torch.inference_mode():
        (patched,) = comfy.nodes.LoraLoaderModelOnly().load_lora_model_only(comfy_model, name, 1.0)
        comfy.mm.load_models_gpu([patched])
        x, sigma, feats = _inputs()
        out = patched.model.diffusion_model(x, sigma, context=feats, num_tokens=feats.shape[1],
                                            transformer_options={}).clone()
    not_loaded = [r.getMessage() for r in caplog.records if "not loaded" in r.getMessage()]
    return patched, out, not_loaded


def _inputs():
    return velocity_inputs(1, 5, sigmas=[0.6], seed=4)


@pytest.mark.parametrize("fmt", ["comfyui", "kohya"])
def test_comfyui_and_kohya_files_load_every_key_and_give_the_trained_output(comfy, comfy_model, comfy_models, lora,
                                                                            caplog, fmt):
    backbone, adapters, ours, _ = lora
    name = f"lumina2t_formats_{fmt}.safetensors"
    save_adapters(adapters, comfy_models["loras"] / name, fmt=fmt, dtype="fp32", arch=backbone.arch,
                  metadata={"ss_network_alpha": "8.0"})
    sd, md = load_state_dict(comfy_models["loras"] / name)
    modules = {k.rsplit(".", 2)[0] for k in sd if not k.endswith(".alpha")}
    if fmt == "comfyui":  # the zero pairs for diffusers are there and ComfyUI maps them too
        assert len(modules) == len(adapters) + len(json.loads(md["lumina2t.zero_filled"])) > len(adapters)
    patched, out, not_loaded = _load(comfy, comfy_model, name, caplog)
    assert not not_loaded
    assert len({k for k in patched.patches if k.endswith(".weight")}) == len(modules)
    torch.testing.assert_close(out, ours, atol=1e-5, rtol=1e-5)


def test_a_diffusers_file_is_ignored_by_comfyui_and_the_save_says_so(comfy, comfy_model, comfy_models, lora, caplog):
    backbone, adapters, _, base = lora
    name = "lumina2t_formats_diffusers.safetensors"
    with caplog.at_level(logging.WARNING, "lumina2_train"):
        save_adapters(adapters, comfy_models["loras"] / name, fmt="diffusers", dtype="fp32", arch=backbone.arch)
    assert "ComfyUI does not load a 'diffusers'-format Lumina2 LoRA" in caplog.text
    n_keys = len(load_state_dict(comfy_models["loras"] / name)[0])
    patched, out, not_loaded = _load(comfy, comfy_model, name, caplog)
    assert len(not_loaded) == n_keys and not patched.patches  # every key skipped, nothing patched
    torch.testing.assert_close(out, base, atol=1e-5, rtol=1e-5)
