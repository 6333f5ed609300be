"""Z-Image LoRA files in every layout load in a real ComfyUI (0.33+) (docs/nodes.md, "Which file loads where",
Z-Image): the same LoRA saved as 'comfyui' (native names), 'kohya' (`lora_unet_`), 'diffusers' (`transformer.`,
qkv split into to_q/to_k/to_v) and as diffusers names under `diffusion_model.` with `.alpha` keys (the layout of
the training adapters made for Z-Image-Turbo) each load through the stock LoraLoaderModelOnly with every key
mapped, and patch the MODEL to the output our backbone gives with the LoRA. The tiny Z-Image is
tiny/comfy_layout.py's (3840 wide as ComfyUI's detection needs, one main layer). ComfyUI 0.3.64 has no Z-Image,
so these tests skip there."""

import logging

import pytest
import torch

from lumina2_train.adapters import build_adapters
from lumina2_train.backbones.comfy import ComfyBackbone
from lumina2_train.config import AdapterConfig
from lumina2_train.files.formats import lora_modules, lora_state_dict, read_lora, save_adapters, save_state_dict

from builders import velocity_inputs

pytestmark = pytest.mark.comfy
LAYOUTS = ("comfyui", "kohya", "diffusers", "diffusers_under_diffusion_model")


def _inputs():
    return velocity_inputs(1, 5, sigmas=[0.6], seed=4, dim=2560)


def _velocity(comfy, model):
    x, sigma, feats = _inputs()
    with torch.inference_mode():
        comfy.mm.load_models_gpu([model])
        return model.model.diffusion_model(x, sigma, context=feats, num_tokens=feats.shape[1],
                                           transformer_options={}).clone()


@pytest.fixture(scope="module")
def files(comfy, comfy_models, zimage_model):
    """{layout: file name} of one random LoRA on every Linear group, its output with our backbone, the base
    output and its module names. Outputs are taken before any LoRA loads (ComfyUI patches the shared weights)."""
    with torch.inference_mode():
        backbone = ComfyBackbone.from_model_patcher(zimage_model)
    adapters = build_adapters(backbone, AdapterConfig(rank=4, alpha=8.0,
                                                      targets=("attention", "ffn", "adaln", "final", "embedders")))
    with torch.no_grad():
        for p in adapters.parameters():
            p.normal_(0, 0.02)
        x, sigma, feats = _inputs()
        ours, base = (backbone.velocity(x, sigma, feats, None, a) for a in (adapters.as_dict(), None))
    assert backbone.arch.is_zimage and (ours - base).abs().max() > 1e-3
    names = {}
    for fmt in LAYOUTS[:3]:
        names[fmt] = f"lumina2t_zimage_{fmt}.safetensors"
        save_adapters(adapters, comfy_models["loras"] / names[fmt], fmt=fmt, dtype="fp32", arch=backbone.arch)
    # diffusers names under diffusion_model. with alpha keys: alpha = 2·rank, lora_B halved (the same ΔW)
    sd = lora_state_dict(lora_modules(adapters), "diffusers", backbone.arch)
    adapter_style = {}
    for key, t in sd.items():
        key = "diffusion_model." + key.removeprefix("transformer.")
        adapter_style[key] = t / 2 if key.endswith("lora_B.weight") else t
        if key.endswith("lora_A.weight"):
            adapter_style[key.replace("lora_A.weight", "alpha")] = torch.tensor(2.0 * t.shape[0])
    names[LAYOUTS[3]] = "lumina2t_zimage_adapter_style.safetensors"
    save_state_dict(adapter_style, comfy_models["loras"] / names[LAYOUTS[3]], "fp32", None)
    yield {"names": names, "ours": ours, "base": base, "modules": set(adapters.names),
           "deltas": {n: m.delta_weight() for n, m in lora_modules(adapters).items()}}
    for name in names.values():
        (comfy_models["loras"] / name).unlink()


class _NotLoaded(logging.Handler):
    """ComfyUI's "lora key not loaded" warnings (its loader logs them on the root logger)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        if "not loaded" in record.getMessage().lower():
            self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def loaded(comfy, zimage_model, files):
    """{layout: (the patched MODEL's patches, the "not loaded" warnings, its output)}, loaded one after another
    through the stock LoraLoaderModelOnly."""
    out = {}
    for layout in LAYOUTS:
        handler = _NotLoaded()
        logging.getLogger().addHandler(handler)
        try:
            with torch.inference_mode():
                (patched,) = comfy.nodes.LoraLoaderModelOnly().load_lora_model_only(zimage_model,
                                                                                  files["names"][layout], 1.0)
        finally:
            logging.getLogger().removeHandler(handler)
        out[layout] = (dict(patched.patches), handler.messages, _velocity(comfy, patched))
        del patched
    return out


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_loads_every_key_and_gives_the_trained_output(comfy_models, files, loaded, layout):
    patches, not_loaded, out = loaded[layout]
    assert not not_loaded
    weights = {k for k in patches if k.endswith(".weight")}
    assert weights == {f"diffusion_model.{m}.weight" for m in files["modules"]}  # every module patched
    qkv = patches["diffusion_model.layers.0.attention.qkv.weight"]
    assert len(qkv) == (3 if layout.startswith("diffusers") else 1)  # to_q/to_k/to_v patch slices of the qkv
    torch.testing.assert_close(out, files["ours"], atol=1e-4, rtol=1e-4)
    assert (out - files["base"]).abs().max() > 1e-3
    back = read_lora(comfy_models["loras"] / files["names"][layout])  # our reader: the trained ΔW
    assert set(back) == files["modules"]
    for n, d in files["deltas"].items():
        torch.testing.assert_close(back[n].delta_weight(), d, atol=1e-6, rtol=1e-5)


def test_the_layouts_patch_the_model_alike(loaded):
    first = loaded[LAYOUTS[0]][2]
    for layout in LAYOUTS[1:]:
        torch.testing.assert_close(loaded[layout][2], first, atol=1e-5, rtol=1e-5)
