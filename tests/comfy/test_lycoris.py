"""LoKr, LoHa and DoRA trained on a ComfyUI MODEL load in stock ComfyUI (LoraLoaderModelOnly) with every key mapped,
and the patched MODEL gives the in-training output (issue 6). DoRA is also checked against ComfyUI's own
weight_decompose: our magnitude of shape (1, in) is what ComfyUI divides by the merged weight's column norms."""

import logging

import pytest
import torch

from lumina2_train.backbones.comfy import ComfyBackbone
from lumina2_train.backbones.inference import training_mode
from lumina2_train.config import TARGET_GROUPS, AdapterConfig, RunConfig, SaveConfig, TrainConfig
from lumina2_train.files.formats import ADAPTER_SUFFIXES, save_adapters
from lumina2_train.train import Trainer

from builders import comfy_velocity, square_cache

pytestmark = pytest.mark.comfy
# every target group: all 34 Linears of the 1-layer model, embedders and final layer included
KINDS = {
    "lokr": AdapterConfig(kind="lokr", rank=4, alpha=8.0, targets=TARGET_GROUPS),
    "loha": AdapterConfig(kind="loha", rank=4, alpha=2.0, targets=TARGET_GROUPS),
    "dora": AdapterConfig(kind="lora", use_dora=True, rank=4, alpha=8.0, targets=TARGET_GROUPS),
}
SUFFIXES = {"lokr": ("lokr_w1", "lokr_w2_a", "lokr_w2_b", "alpha"),
            "loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"),
            "dora": ("lora_A.weight", "lora_B.weight", "dora_scale")}


@pytest.fixture(scope="module")
def trained(comfy, comfy_model, comfy_models, tmp_path_factory):
    """trained(kind) -> (backbone, adapters, file name): a few steps of `kind` on the ComfyUI MODEL (as the Train
    node runs it), saved in fp32 with formats.save_adapters into models/loras. Trained once per kind."""
    done = {}

    def train(kind: str):
        if kind not in done:
            cfg = RunConfig(adapter=KINDS[kind], train=TrainConfig(steps=1, batch_size=1, lr=5e-3, precision="fp32",
                                                                   checkpointing="off", seed=3),
                            save=SaveConfig(dtype="fp32"))
            with torch.inference_mode():
                backbone = ComfyBackbone.from_model_patcher(comfy_model)
                with training_mode():
                    result = Trainer(cfg, backbone, square_cache((6, 4)), run_dir=tmp_path_factory.mktemp(f"run_{kind}")).run()
            name = f"lumina2t_test_{kind}.safetensors"
            save_adapters(result.adapters, comfy_models["loras"] / name, dtype="fp32", arch=backbone.arch)
            done[kind] = backbone, result.adapters, name
        return done[kind]

    return train


@pytest.mark.parametrize("kind", list(KINDS))
def test_loads_in_stock_comfyui_with_every_key_and_equals_training(comfy, comfy_model, trained, comfy_inputs,
                                                                  caplog, kind):
    backbone, adapters, name = trained(kind)
    assert len(adapters) == 34
    x, sigma, feats = comfy_inputs(b=2, L=6, seed=5)
    with torch.no_grad():
        base = backbone.velocity(x, sigma, feats, None)
        ours = backbone.velocity(x, sigma, feats, None, adapters.as_dict())
    assert (ours - base).abs().max() > 1e-3  # the adapter changes the output

    with caplog.at_level(logging.WARNING), torch.inference_mode():
        (stock,) = comfy.nodes.LoraLoaderModelOnly().load_lora_model_only(comfy_model, name, 1.0)
    assert not [r for r in caplog.records if "not loaded" in r.getMessage().lower()]
    patched = {k for k in stock.patches if k.endswith(".weight")}
    assert patched == {f"diffusion_model.{n}.weight" for n in adapters.names}  # every module, each once
    sd = comfy.utils.load_torch_file(str(comfy.folder_paths.get_full_path("loras", name)), safe_load=True)
    assert {next(sfx for sfx in ADAPTER_SUFFIXES if k.endswith("." + sfx)) for k in sd} == set(SUFFIXES[kind])
    with torch.inference_mode():
        comfy.mm.load_models_gpu([stock])
    torch.testing.assert_close(comfy_velocity(stock, x, sigma, feats), ours, atol=2e-5, rtol=1e-5)


def test_dora_magnitude_is_what_comfyui_weight_decompose_divides_by(comfy, trained):
    """ComfyUI decomposes per input column when dora_scale is (1, in) (weight_decompose: norm of the merged weight
    over the output axis); our DoRA's adapted weight is exactly that, for every module."""
    backbone, adapters, _ = trained("dora")
    from comfy.weight_adapter.base import weight_decompose

    with torch.inference_mode():  # the other test loaded the patched clone: ComfyUI restores the base weights now
        comfy.mm.load_models_gpu([backbone.patcher])
    for name, mod in adapters.items():
        base = backbone.base_weight(name)
        up, down = mod.up.detach().float(), mod.down.detach().float()
        assert mod.magnitude.shape == (1, base.shape[1])
        theirs = weight_decompose(mod.magnitude.detach().float(), base.clone(), (up * mod.scale) @ down, 1.0, 1.0,
                                  torch.float32, lambda w: w)
        torch.testing.assert_close(mod.adapted_weight(base).detach(), theirs, atol=1e-6, rtol=1e-6)
    # trained, the magnitude is no longer the base's column norm: the check above is not the identity
    name = adapters.names[0]
    base_norm = backbone.base_weight(name).norm(dim=0, keepdim=True)
    assert (adapters[name].magnitude.detach() - base_norm).abs().max() > 1e-4
