"""The nodes train Z-Image in a real ComfyUI (0.33+), in-process as ComfyUI runs them: the stock UNETLoader loads a
tiny ComfyUI-layout Z-Image file (tiny/comfy_layout.py: 3840 wide as ComfyUI's detection needs, one main layer);
the Cache node encodes the dataset with ComfyUI's Qwen3-4B CLIP (the zimage prompt family) and the Flux VAE; the
Train node picks the Z-Image-Turbo recipe from the file's name, trains, previews with it, and writes a LoRA that
the stock LoraLoaderModelOnly loads with every key mapped and that reproduces the Train node's MODEL; a training
adapter from models/loras stays out of both. ComfyUI 0.3.64 has no Z-Image: its own loader refuses the file, and the
training tests skip there.
"""

import logging
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

pytestmark = pytest.mark.comfy
TRAIN = "Lumina2T_TrainLoRA"
CAPTIONS = ("a red cube", "a blue ball")


def velocity(comfy, model, seed: int = 3):
    gen = torch.Generator().manual_seed(seed)
    x, sigma = torch.randn(1, 16, 8, 8, generator=gen), torch.tensor([0.6])
    feats = torch.randn(1, 5, 2560, generator=gen)
    with torch.inference_mode():
        comfy.mm.load_models_gpu([model])
        return model.model.diffusion_model(x, sigma, context=feats, num_tokens=5, transformer_options={}).clone()


def test_a_comfyui_without_zimage_refuses_the_file_before_any_node_of_ours(comfy, comfy_models):
    """ComfyUI 0.3.64 reads every NextDiT file as the 2304-wide Lumina2, so its own loader fails on a Z-Image file
    (3840 wide) with a size mismatch: no Z-Image MODEL can reach the Train node there (docs/comfyui.md)."""
    import importlib

    if hasattr(importlib.import_module("comfy.supported_models"), "ZImage"):
        pytest.skip("this ComfyUI loads Z-Image (0.33+): the tests below train it")
    from lumina2_train.tiny.comfy_layout import write_comfy_tiny_zimage

    path = write_comfy_tiny_zimage(comfy_models["root"], seed=0)
    try:
        with pytest.raises(RuntimeError, match=r"size mismatch for .*x_embedder.*3840"), torch.inference_mode():
            comfy.nodes.UNETLoader().load_unet(path.name, "default")
    finally:
        path.unlink()


@pytest.fixture(scope="module")
def trained(pack, comfy, zimage_model, comfy_qwen3, comfy_vae, state_hash):
    from builders import write_image

    for i, caption in enumerate(CAPTIONS):
        write_image(pack.input / "zimage_set" / f"img{i}.png", (64, 64), caption=caption, seed=i)
    dataset = pack.run("Lumina2T_LoadDataset", **pack.defaults("Lumina2T_LoadDataset", folder="zimage_set",
                                                                  resolution=64, min_size_px=0))
    validation = pack.run("Lumina2T_ConfigureValidation", **pack.defaults(
        "Lumina2T_ConfigureValidation", prompts=CAPTIONS[0], width=64, height=64))[0]
    cache = pack.run("Lumina2T_CacheLatentsText", dataset=dataset[0], clip=comfy_qwen3[0], vae=comfy_vae,
                     validation=validation, **pack.defaults("Lumina2T_CacheLatentsText", system_prompt="none"))
    adapter = pack.run("Lumina2T_ConfigureAdapter", **pack.defaults("Lumina2T_ConfigureAdapter", rank=4,
                                                                      alpha=4.0))[0]
    tree = zimage_model.model.diffusion_model
    before = state_hash(tree), velocity(comfy, zimage_model)
    out = pack.run(TRAIN, unique_id="31", **pack.defaults(
        TRAIN, model=zimage_model, cache=cache[0], adapter=adapter, lora_name="unit/zimage_tiny", steps=2,
        lr=1e-3, seed=1, validation=validation, vae=comfy_vae))
    return {"out": out, "cache": cache[0], "before": before, "after": (state_hash(tree), velocity(comfy, zimage_model))}


def test_cache_holds_qwen3_features_in_the_zimage_family(trained):
    cache = trained["cache"]
    assert cache.family == "zimage" and len(cache) == 2
    assert cache.sample(0).cap_feats.shape[-1] == 2560


def test_train_node_trains_zimage_with_the_turbo_recipe(trained, caplog):
    model, lora, loss, path, samples = trained["out"].args
    assert len(loss["loss"]) == 2 and all(v == v for v in loss["loss"])
    assert samples.shape == (1, 64, 64, 3)
    with safe_open(path, framework="pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert keys == set(lora) and all(k.startswith("diffusion_model.") for k in keys)
    config = meta["lumina2t.config"]
    # the Turbo recipe, read from the file name z_image_turbo_tiny_bf16.safetensors: uniform sigma, static shift
    # 3, previews 8 steps without CFG
    for value in ('"timestep_sampling": "uniform"', '"shift_mode": "static"', '"static_shift": 3.0',
                  '"steps": 8', '"guidance": 1.0'):
        assert value in config, value
    assert trained["after"][0] == trained["before"][0]  # the shared MODEL is untouched
    assert torch.equal(trained["after"][1], trained["before"][1])


def test_zimage_lora_loads_in_stock_comfyui_with_every_key(comfy, zimage_model, trained, caplog):
    model, lora, *_ = trained["out"].args
    with caplog.at_level(logging.WARNING), torch.inference_mode():
        (stock,) = comfy.nodes.LoraLoaderModelOnly().load_lora_model_only(zimage_model, "unit/zimage_tiny.safetensors",
                                                                          1.0)
    assert not [r for r in caplog.records if "lora key not loaded" in r.getMessage().lower()]
    assert set(stock.patches) == set(model.patches) and len(stock.patches) == len(lora) // 2
    trained_out = velocity(comfy, model)
    assert torch.equal(velocity(comfy, stock), trained_out)
    assert (trained_out - trained["before"][1]).abs().max() > 0  # the LoRA does something


def test_a_training_adapter_is_under_the_run_and_out_of_its_lora_and_model(pack, comfy, zimage_model, trained,
                                                                          comfy_vae, state_hash):
    """adapter.training_adapter from models/loras (a de-distillation LoRA for Turbo): the run trains over it, the
    saved LoRA and the MODEL output leave it out, and neither its file nor the shared MODEL is written."""
    import hashlib

    import folder_paths

    from lumina2_train.backbones.comfy import arch_from_nextdit
    from lumina2_train.files.formats import LoraModule, save_lora

    tree = zimage_model.model.diffusion_model
    gen = torch.Generator().manual_seed(5)
    under = {}
    for name in ("layers.0.attention.qkv", "layers.0.attention.out", "layers.0.feed_forward.w1"):
        out_f, in_f = tree.get_submodule(name).weight.shape
        under[name] = LoraModule(torch.randn(2, in_f, generator=gen) * 0.05, torch.randn(out_f, 2, generator=gen) * 0.05)
    path = Path(folder_paths.get_folder_paths("loras")[0]) / "unit" / "zimage_under.safetensors"
    save_lora(under, path, fmt="comfyui", dtype="bf16", arch=arch_from_nextdit(tree))  # a Z-Image file
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    adapter = pack.run("Lumina2T_ConfigureAdapter", **pack.defaults(
        "Lumina2T_ConfigureAdapter", rank=4, alpha=4.0, training_adapter="unit/zimage_under.safetensors"))[0]
    assert adapter.training_adapter == str(path)
    plain = velocity(comfy, zimage_model)  # loads the plain MODEL (ComfyUI takes off patches of earlier clones)
    before = state_hash(tree)
    out = pack.run(TRAIN, unique_id="32", **pack.defaults(
        TRAIN, model=zimage_model, cache=trained["cache"], adapter=adapter, lora_name="unit/zimage_over", steps=2,
        lr=1e-3, seed=1))
    model, lora, loss, lora_path, _ = out.args
    assert loss["loss"][0] != trained["out"].args[2]["loss"][0]  # same run, seed and batch: the base differs
    assert set(lora) == set(trained["out"].args[1])  # only the trained adapter's keys (attention), no w1
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert torch.equal(velocity(comfy, zimage_model), plain) and state_hash(tree) == before
    with torch.inference_mode():
        (stock,) = comfy.nodes.LoraLoaderModelOnly().load_lora_model_only(zimage_model,
                                                                          f"unit/{Path(lora_path).name}", 1.0)
    assert torch.equal(velocity(comfy, model), velocity(comfy, stock))  # the MODEL output: Turbo + the new LoRA
    path.unlink()


@pytest.mark.parametrize("kind", ["lokr", "full"])
def test_lycoris_and_full_train_zimage_and_load_in_stock_comfyui(pack, comfy, zimage_model, trained, kind, caplog):
    """A LoKr file loads through LoraLoaderModelOnly with every key; a full fine-tune (layer 0's attention) is a
    Z-Image file UNETLoader opens, equal to the Train node's MODEL output (the input patched with .diff)."""
    adapter = pack.run("Lumina2T_ConfigureAdapter", **pack.defaults(
        "Lumina2T_ConfigureAdapter", kind=kind, rank=4, alpha=4.0, blocks="0", refiners=False))[0]
    out = pack.run(TRAIN, unique_id=f"33{kind}", **pack.defaults(
        TRAIN, model=zimage_model, cache=trained["cache"], adapter=adapter, lora_name=f"unit/zimage_{kind}",
        steps=2, lr=1e-3, seed=1))
    model, lora, loss, path = out.args[:4]
    assert len(loss["loss"]) == 2
    trained_out = velocity(comfy, model)
    assert (trained_out - trained["before"][1]).abs().max() > 0
    with caplog.at_level(logging.WARNING), torch.inference_mode():
        if kind == "lokr":
            assert any(".lokr_w1" in k for k in lora)
            (stock,) = comfy.nodes.LoraLoaderModelOnly().load_lora_model_only(zimage_model,
                                                                              f"unit/{Path(path).name}", 1.0)
        else:
            assert Path(path).parent.parent.name == "diffusion_models"
            (stock,) = comfy.nodes.UNETLoader().load_unet(f"unit/{Path(path).name}", "default")
            assert type(stock.model.model_config).__name__ == "ZImage"
    assert not [r for r in caplog.records if "lora key not loaded" in r.getMessage().lower()]
    torch.testing.assert_close(velocity(comfy, stock), trained_out, rtol=0, atol=1e-2 if kind == "full" else 0)
    Path(path).unlink()
