"""`make-tiny-models DIR [--family lumina2|zimage]`: the files it writes load back through the library's own
loaders as the family asked for, a Z-Image folder trains through `train CONFIG` with the Turbo recipe read from
its name, and the ComfyUI-layout files have the keys and shapes ComfyUI's detection (and ours) reads as Z-Image."""

import json
import logging

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lumina2_train import recipe
from lumina2_train.backbones.family import LUMINA2, ZIMAGE, arch_from_shapes
from lumina2_train.cli.main import main
from lumina2_train.encoders.hf import HFEncoders
from lumina2_train.files.loading import layer_count, load_backbone
from lumina2_train.tiny import TINY_DIT, TINY_ZIMAGE
from lumina2_train.tiny.zimage import ZIMAGE_DIFFUSERS_DIR

from builders import write_image


def _shapes(path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from the safetensors header; no tensor is read."""
    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def test_the_default_family_writes_a_lumina2_diffusers_folder(tmp_path):
    assert main(["make-tiny-models", str(tmp_path), "--only", "diffusers"]) == 0
    root = tmp_path / "diffusers"
    backbone = load_backbone(root, "fp32")
    assert backbone.arch.family == LUMINA2 and backbone.arch.dim == TINY_DIT["hidden_size"]
    assert HFEncoders.from_paths(str(root), str(root)).text_family == LUMINA2
    assert not (tmp_path / "comfyui").exists() and not (tmp_path / ZIMAGE_DIFFUSERS_DIR).exists()


def test_the_zimage_diffusers_folder_loads_back_as_zimage(tmp_path):
    assert main(["make-tiny-models", str(tmp_path), "--family", "zimage", "--only", "diffusers", "--seed", "3"]) == 0
    root = tmp_path / ZIMAGE_DIFFUSERS_DIR
    index = json.loads((root / "model_index.json").read_text())
    assert index["_class_name"] == "ZImagePipeline" and index["transformer"][1] == "ZImageTransformer2DModel"
    backbone = load_backbone(root, "fp32")
    arch = backbone.arch
    assert arch.is_zimage and arch.family == ZIMAGE
    assert (arch.dim, arch.n_layers, arch.cap_feat_dim) == (TINY_ZIMAGE["dim"], TINY_ZIMAGE["n_layers"],
                                                            TINY_ZIMAGE["cap_feat_dim"])
    assert layer_count(root) == TINY_ZIMAGE["n_layers"]
    encoders = HFEncoders.from_paths(str(root), str(root))  # text_encoder/, tokenizer/ and vae/ under the root
    assert encoders.text_family == ZIMAGE
    feats = encoders.text_encoder().encode([recipe.format_prompt("a red cube", "", ZIMAGE)], 64)[0]
    assert feats.ndim == 2 and feats.shape[-1] == arch.cap_feat_dim
    latents = encoders.latent_encoder().encode(torch.rand(1, 3, 64, 64))
    assert latents.shape == (1, 16, 8, 8)
    sigma = torch.tensor([0.5])
    with torch.no_grad():
        v = backbone.velocity(latents, sigma, feats[None], None)
    assert v.shape == latents.shape and torch.isfinite(v).all()
    other = tmp_path / "seed0"  # the seed reaches the weights
    assert main(["make-tiny-models", str(other), "--family", "zimage", "--only", "diffusers"]) == 0
    with torch.no_grad():
        v0 = load_backbone(other / ZIMAGE_DIFFUSERS_DIR, "fp32").velocity(latents, sigma, feats[None], None)
    assert not torch.allclose(v, v0)


def test_the_zimage_folder_trains_through_the_cli_with_the_turbo_recipe(tmp_path, caplog):
    assert main(["make-tiny-models", str(tmp_path / "models"), "--family", "zimage", "--only", "diffusers"]) == 0
    root = (tmp_path / "models" / ZIMAGE_DIFFUSERS_DIR).as_posix()
    for i, caption in enumerate(("a red cube", "a blue ball")):
        write_image(tmp_path / "data" / f"img{i}.png", (64, 64), caption=caption, seed=i)
    config = tmp_path / "run.toml"
    config.write_text(f"""
[model]
transformer = "{root}"
text_encoder = "{root}"
vae = "{root}"
dtype = "fp32"
[[data.datasets]]
path = "data"
resolution = 64
min_size_px = 16
[adapter]
rank = 4
[train]
steps = 2
precision = "fp32"
checkpointing = "off"
[validation]
prompts = ["a red cube"]
width = 64
height = 64
[cache]
dir = "{(tmp_path / "cache").as_posix()}"
[save]
output_dir = "{(tmp_path / "runs").as_posix()}"
name = "zimage_tiny"
""", encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="lumina2_train"):
        assert main(["train", str(config)]) == 0
    assert "training recipe: Z-Image-Turbo (from the name" in caplog.text
    assert "previews 8 steps, shift 3, cfg 1" in caplog.text
    loras = list((tmp_path / "runs").rglob("zimage_tiny*.safetensors"))
    assert loras, sorted(p.name for p in (tmp_path / "runs").rglob("*"))
    with safe_open(str(loras[0]), framework="pt") as f:
        assert any(k.startswith("diffusion_model.layers.") for k in f.keys())


def test_an_unknown_family_is_refused_by_name(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["make-tiny-models", str(tmp_path), "--family", "flux"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--family" in err and "'flux'" in err and "lumina2" in err and "zimage" in err


def test_the_tiny_clip_loader_picks_the_tiny_config_by_the_files_keys(tmp_path):
    from lumina2_train.tiny.comfy_layout import comfy_tiny_clip_options, comfy_tiny_text_state_dict
    from lumina2_train.tiny.comfy_loader import tiny_clip_options
    from lumina2_train.tiny.qwen3 import comfy_tiny_qwen3_options

    gemma = tmp_path / "gemma2_tiny.safetensors"
    save_file(comfy_tiny_text_state_dict(0), str(gemma))
    assert tiny_clip_options(gemma) == comfy_tiny_clip_options()
    qwen3 = tmp_path / "qwen3.safetensors"  # the keys the Qwen3 file has, at a small size
    save_file({"model.layers.0.self_attn.q_norm.weight": torch.ones(8),
               "model.layers.0.post_attention_layernorm.weight": torch.ones(8)}, str(qwen3))
    assert tiny_clip_options(qwen3) == comfy_tiny_qwen3_options() != comfy_tiny_clip_options()


@pytest.mark.slow
def test_the_zimage_comfyui_files_are_detected_as_zimage(tmp_path):
    """The ~2.8 GB ComfyUI layout: the DiT's shapes are Z-Image's (ComfyUI's detection builds exactly
    comfy_tiny_zimage_arch from them), the text encoder has the keys ComfyUI reads as Qwen3-4B and matches the
    DiT's cap_feat_dim, and the VAE is the Flux-shaped one."""
    from lumina2_train.tiny.comfy_layout import ZIMAGE_CAP_FEAT_DIM, comfy_tiny_zimage_arch
    from lumina2_train.tiny.comfy_loader import QWEN3_KEY, tiny_clip_options
    from lumina2_train.tiny.qwen3 import comfy_tiny_qwen3_options
    from lumina2_train.tiny.zimage import comfy_zimage_file_names

    assert main(["make-tiny-models", str(tmp_path), "--family", "zimage", "--only", "comfyui"]) == 0
    folder = tmp_path / "comfyui"
    names = comfy_zimage_file_names()
    dit = folder / "diffusion_models" / names["diffusion_model"]
    shapes = _shapes(dit)
    arch = arch_from_shapes(shapes, str(dit))
    assert arch.family == ZIMAGE and arch.is_zimage
    assert "cap_pad_token" in shapes and "x_pad_token" in shapes and "norm_final.weight" not in shapes
    want = comfy_tiny_zimage_arch()
    assert (arch.dim, arch.n_layers, arch.n_refiner_layers, arch.n_heads, arch.ffn_hidden, arch.axes_dims) == (
        want.dim, want.n_layers, want.n_refiner_layers, want.n_heads, want.ffn_hidden, want.axes_dims)
    assert arch.cap_feat_dim == ZIMAGE_CAP_FEAT_DIM
    with safe_open(str(dit), framework="pt") as f:
        assert f.metadata()["lumina2t.tiny"] and f.get_slice("x_embedder.weight").get_dtype() == "BF16"
    te = folder / "text_encoders" / names["text_encoder"]
    te_shapes = _shapes(te)
    assert QWEN3_KEY in te_shapes  # with a 2560-wide norm: ComfyUI's Qwen3-4B
    assert te_shapes["model.layers.0.post_attention_layernorm.weight"] == (ZIMAGE_CAP_FEAT_DIM,)
    assert te_shapes["model.norm.weight"] == (arch.cap_feat_dim,)
    assert tiny_clip_options(te) == comfy_tiny_qwen3_options()
    vae_shapes = _shapes(folder / "vae" / names["vae"])
    assert vae_shapes["decoder.conv_in.weight"] == (512, 16, 3, 3)
    assert not (tmp_path / ZIMAGE_DIFFUSERS_DIR).exists()
