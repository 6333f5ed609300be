"""Full fine-tune in ComfyUI (issue 6): the saved diffusion-model file loads through the stock UNETLoader as a Lumina2
model with no missing or unexpected key and gives the trained output; the `.diff` patches reproduce it through
ComfyUI's LoRA path; the Train node with kind 'full' writes the file to models/diffusion_models and its MODEL output
equals what UNETLoader gives from that file; the input MODEL is never modified. Small targets (one block's
attention) keep the ~0.4 B-parameter tiny model cheap on CPU."""

import logging
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

from lumina2_train.backbones.comfy import ComfyBackbone
from lumina2_train.backbones.inference import training_mode
from lumina2_train.comfyui.bridge import apply_lora_to_model
from lumina2_train.config import AdapterConfig, RunConfig, SaveConfig, TrainConfig
from lumina2_train.demo import write_demo_dataset
from lumina2_train.files.fullmodel import diff_state_dict
from lumina2_train.train import Trainer

from builders import square_cache, velocity_inputs

pytestmark = pytest.mark.comfy
FULL = AdapterConfig(kind="full", targets=("attention",), blocks="0", refiners=False)
TRAINED = {"layers.0.attention.qkv", "layers.0.attention.out"}
LIB_FILE = "lumina2t_full_lib.safetensors"
UNET_LOGS = ("unet missing", "unet unexpected", "left over keys")


def _inputs():
    return velocity_inputs(2, 6, sigmas=[0.3, 0.8], seed=5)


def _velocity(comfy, model):
    x, sigma, feats = _inputs()
    with torch.inference_mode():
        comfy.mm.load_models_gpu([model])
        return model.model.diffusion_model(x, sigma, context=feats, num_tokens=6, transformer_options={}).clone()


def _unet_load(comfy, name: str, caplog):
    """UNETLoader (Load Diffusion Model) on `name`; fails on any missing / unexpected / left-over key it logs.

    The file has the official checkpoint's layout, which includes the unused `norm_final.weight`. [0.3.64] ComfyUI's
    NextDiT has that norm; [newer] it dropped it and reports the key as unexpected for the official file too: that
    one line is expected exactly when the loaded NextDiT has no `norm_final`."""
    caplog.clear()
    with caplog.at_level(logging.INFO), torch.inference_mode():
        (model,) = comfy.nodes.UNETLoader().load_unet(name, "default")
    assert isinstance(model.model, comfy.model_base.Lumina2)
    expected = [] if hasattr(model.model.diffusion_model, "norm_final") else ["unet unexpected: ['norm_final.weight']"]
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith(UNET_LOGS)] == expected
    return model


def _loaded_hash(comfy, model, state_hash) -> str:
    """The hash of `model`'s weights as it loads: a patched clone loaded earlier patched the shared module in place,
    and loading `model` itself restores it (ComfyUI's model management)."""
    with torch.inference_mode():
        comfy.mm.load_models_gpu([model])
    return state_hash(model.model.diffusion_model)


# ---------------------------------------------------------------- the library's Trainer on a ComfyUI MODEL

@pytest.fixture(scope="module")
def lib_run(comfy, comfy_model, comfy_models, state_hash, tmp_path_factory):
    cache = square_cache((6, 6))
    cfg = RunConfig(adapter=FULL, save=SaveConfig(dtype="fp32", name="full"),
                    train=TrainConfig(steps=2, batch_size=1, lr=1e-3, precision="fp32", checkpointing="off", seed=1))
    before = _loaded_hash(comfy, comfy_model, state_hash)
    path = comfy_models["root"] / "diffusion_models" / LIB_FILE
    with torch.inference_mode():
        backbone = ComfyBackbone.from_model_patcher(comfy_model)
        with training_mode():
            result = Trainer(cfg, backbone, cache, run_dir=tmp_path_factory.mktemp("full_run"), lora_path=path).run()
        x, sigma, feats = _inputs()
        base = backbone.velocity(x, sigma, feats, None)
        ours = backbone.velocity(x, sigma, feats, None, result.adapters.as_dict())
        diffs = diff_state_dict(result.adapters, backbone, saved=path)
    return SimpleNamespace(result=result, path=path, ours=ours, base=base, diffs=diffs, before=before,
                           after=_loaded_hash(comfy, comfy_model, state_hash))


def test_trainer_trains_a_copy_and_never_the_input_model(lib_run):
    assert set(lib_run.result.adapters.names) == TRAINED
    assert lib_run.after == lib_run.before
    assert (lib_run.ours - lib_run.base).abs().max() > 1e-3  # the fine-tune changes the output
    assert (lib_run.result.run_dir / "transformer" / "config.json").is_file()  # the diffusers folder


def test_saved_file_loads_through_unetloader_and_equals_training(comfy, lib_run, caplog):
    with safe_open(str(lib_run.path), framework="pt") as f:
        keys = set(f.keys())
    assert not any(k.startswith(("diffusion_model.", "model.")) for k in keys)  # bare keys, like the official file
    loaded = _unet_load(comfy, LIB_FILE, caplog)
    unused = set() if hasattr(loaded.model.diffusion_model, "norm_final") else {"norm_final.weight"}  # see _unet_load
    assert set(loaded.model.diffusion_model.state_dict()) == keys - unused  # every other key used, none missing
    torch.testing.assert_close(_velocity(comfy, loaded), lib_run.ours, atol=1e-5, rtol=1e-5)


def test_diff_patches_load_through_comfyui_lora_path_and_equal_training(comfy, comfy_model, lib_run):
    assert set(lib_run.diffs) == {f"diffusion_model.{n}.diff" for n in TRAINED}
    assert all(v.dtype == torch.float32 for v in lib_run.diffs.values())  # the file's dtype
    with torch.inference_mode():
        patched = apply_lora_to_model(comfy_model, lib_run.diffs)  # raises if ComfyUI leaves a key unloaded
    assert {k for k in patched.patches} == {f"diffusion_model.{n}.weight" for n in TRAINED}
    torch.testing.assert_close(_velocity(comfy, patched), lib_run.ours, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- the Train node with kind 'full'





@pytest.fixture(scope="module")
def node_run(pack, comfy, comfy_model, comfy_clip, comfy_vae, state_hash):
    write_demo_dataset(pack.input / "shapes_full", size_px=64)
    dataset = pack.run("Lumina2T_LoadDataset", **pack.defaults("Lumina2T_LoadDataset", folder="shapes_full",
                                                                  resolution=64, min_size_px=0))
    cache = pack.run("Lumina2T_CacheLatentsText", dataset=dataset[0], clip=comfy_clip, vae=comfy_vae,
                     **pack.defaults("Lumina2T_CacheLatentsText"))[0]
    adapter = pack.run("Lumina2T_ConfigureAdapter", **pack.defaults("Lumina2T_ConfigureAdapter", kind="full",
                                                                      blocks="0", refiners=False))[0]
    before = _loaded_hash(comfy, comfy_model, state_hash), _velocity(comfy, comfy_model)
    out = pack.run("Lumina2T_TrainLoRAAdvanced", unique_id="21", **pack.defaults(
        "Lumina2T_TrainLoRAAdvanced", model=comfy_model, cache=cache, adapter=adapter, lora_name="unit/full",
        steps=2, lr=1e-3, seed=1, precision="fp32", checkpointing="off", save_dtype="fp32"))
    after = _loaded_hash(comfy, comfy_model, state_hash), _velocity(comfy, comfy_model)
    return SimpleNamespace(out=out, adapter=adapter, before=before, after=after)


def test_configure_adapter_offers_full(pack, node_run):
    assert node_run.adapter.kind == "full" and node_run.adapter.targets == ("attention",)
    config, adapter_node = pack.lib("config"), pack.module.nodes.adapter
    with pytest.raises(pack.lib("errors").ConfigError, match="adapter.init_from"):
        adapter_node.check_config(config.AdapterConfig(kind="full", init_from="a.safetensors"), "adapter")
    assert adapter_node.check_config(config.AdapterConfig(kind="full", targets=()), "adapter").targets == ()


def test_train_node_writes_the_model_where_unetloader_lists_it(comfy, comfy_models, node_run):
    model, lora, loss, path = node_run.out.args[:4]
    assert path == str(comfy_models["root"] / "diffusion_models" / "unit" / "full.safetensors")
    assert "unit/full.safetensors" in comfy.folder_paths.get_filename_list("diffusion_models")
    assert set(lora) == {f"diffusion_model.{n}.diff" for n in TRAINED}  # LORA_MODEL: the .diff patches
    assert len(loss["loss"]) == 2
    text = node_run.out.ui["text"][0]
    assert f"Model: {path}" in text
    run_dir = Path(re.search(r"run folder: (.+)", text).group(1))
    assert (run_dir / "transformer" / "diffusion_pytorch_model.safetensors").is_file()  # the diffusers folder


def test_input_model_is_unchanged(node_run):
    assert node_run.after[0] == node_run.before[0]
    assert torch.equal(node_run.after[1], node_run.before[1])


def test_model_output_equals_the_unetloader_file(comfy, node_run, caplog):
    model = node_run.out.args[0]
    trained = _velocity(comfy, model)
    assert (trained - node_run.before[1]).abs().max() > 1e-3
    loaded = _unet_load(comfy, "unit/full.safetensors", caplog)
    torch.testing.assert_close(_velocity(comfy, loaded), trained, atol=1e-5, rtol=1e-5)


def test_save_lora_writes_the_diff_patches_and_refuses_other_formats(pack, comfy, comfy_model, node_run, caplog):
    lora = node_run.out.args[1]
    (path,) = pack.run("Lumina2T_SaveLoRA", lora=lora, name="unit/full_diff", format="comfyui", dtype="fp32",
                       destination="loras").args
    with caplog.at_level(logging.WARNING), torch.inference_mode():
        (stock,) = comfy.nodes.LoraLoaderModelOnly().load_lora_model_only(comfy_model, "unit/full_diff.safetensors",
                                                                           1.0)
    assert not [r for r in caplog.records if "not loaded" in r.getMessage().lower()]
    torch.testing.assert_close(_velocity(comfy, stock), _velocity(comfy, node_run.out.args[0]), atol=1e-5, rtol=1e-5)
    with pytest.raises(pack.lib("errors").ConfigError, match="full fine-tune"):
        pack.run("Lumina2T_SaveLoRA", lora=lora, name="unit/full_kohya", format="kohya", dtype="fp32",
                 destination="loras")
