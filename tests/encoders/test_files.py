"""ComfyUI's single files in the headless path: the Gemma2 text-encoder file, ae.safetensors, the all-in-one."""

import json

import pytest
import torch
from safetensors.torch import save_file

from lumina2_train.encoders.hf import HFEncoders, HFLatentEncoder, HFTextEncoder
from lumina2_train.errors import ModelError
from lumina2_train.tiny.comfy_layout import (
    COMFY_GEMMA2_HEAD_DIM,
    COMFY_TINY_GEMMA2,
    FLUX_VAE,
    comfy_tiny_text_state_dict,
    flux_vae_state_dict,
)
from lumina2_train.tiny.text import make_tiny_tokenizer
from lumina2_train.tiny.vae import make_tiny_vae


@pytest.fixture(scope="module")
def comfy_files(tmp_path_factory):
    """ComfyUI-layout tiny encoders (Gemma2 with head_dim 256, Flux-AE-shaped VAE): split files + all-in-one."""
    tmp = tmp_path_factory.mktemp("comfy_files")
    text, vae_sd = comfy_tiny_text_state_dict(0), flux_vae_state_dict(0, torch.float32)
    te, vae, aio = tmp / "gemma_2_2b_tiny.safetensors", tmp / "ae_tiny.safetensors", tmp / "lumina_2_tiny.safetensors"
    save_file(text, str(te))
    save_file(vae_sd, str(vae))  # diffusers key layout (ComfyUI's VAELoader reads it too)
    save_file({**{f"text_encoders.gemma2_2b.transformer.{k}": v for k, v in text.items() if k != "spiece_model"},
               "text_encoders.spiece_model": text["spiece_model"], **{f"vae.{k}": v for k, v in vae_sd.items()}},
              str(aio))
    return te, vae, aio, text, vae_sd, tmp


@pytest.fixture(scope="module")
def reference(comfy_files):
    """The same weights loaded by hand into transformers / diffusers classes (not through our loader)."""
    from diffusers import AutoencoderKL
    from transformers import Gemma2Config, Gemma2Model

    _, _, _, text, vae_sd, tmp = comfy_files
    model = Gemma2Model(Gemma2Config(**COMFY_TINY_GEMMA2, head_dim=COMFY_GEMMA2_HEAD_DIM,
                                     query_pre_attn_scalar=COMFY_GEMMA2_HEAD_DIM))
    model.load_state_dict({k[len("model."):]: v for k, v in text.items() if k.startswith("model.")}, strict=True)
    vae = AutoencoderKL(**FLUX_VAE)
    vae.load_state_dict(vae_sd, strict=True)
    return HFTextEncoder(model.eval(), make_tiny_tokenizer(tmp / "tok")), HFLatentEncoder(vae.eval())


@pytest.mark.slow
def test_split_files_match_the_same_weights_loaded_by_hand(comfy_files, reference):
    te, vae, *_ = comfy_files
    files = HFEncoders.from_paths(str(te), str(vae))
    prompt = ["You are an assistant. <Prompt Start> a red circle"]
    torch.testing.assert_close(files.text_encoder().encode(prompt, 64)[0], reference[0].encode(prompt, 64)[0])
    pixels = torch.rand(1, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(files.latent_encoder().encode(pixels), reference[1].encode(pixels))


@pytest.mark.slow
def test_the_all_in_one_checkpoint_serves_both(comfy_files, reference):
    *_, aio, _, _, _ = comfy_files
    enc = HFEncoders.from_paths(str(aio), str(aio))
    torch.testing.assert_close(enc.text_encoder().encode(["a cat"], 16)[0], reference[0].encode(["a cat"], 16)[0])
    z = torch.randn(1, 16, 2, 2)
    torch.testing.assert_close(enc.latent_encoder().decode(z), reference[1].decode(z))


def test_wrong_files_fail_before_anything_loads(tmp_path, comfy_files):
    te, vae, *_ = comfy_files
    with pytest.raises(ModelError, match=r"model.text_encoder: .* holds no Gemma2 text encoder"):
        HFEncoders.from_paths(str(vae), str(vae))
    with pytest.raises(ModelError, match=r"model.vae: .* holds no VAE"):
        HFEncoders.from_paths(str(te), str(te))
    wide = tmp_path / "sd_vae.safetensors"
    sd = {k: v for k, v in make_tiny_vae(0).state_dict().items()}
    sd["decoder.conv_in.weight"] = torch.zeros(sd["decoder.conv_in.weight"].shape[0], 4, 3, 3)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(wide))
    with pytest.raises(ModelError, match="4 latent channels"):
        HFEncoders.from_paths(str(te), str(wide)).latent_encoder()


@pytest.mark.slow
def test_train_config_runs_on_one_all_in_one_file(comfy_files, tmp_path):
    """`train CONFIG` with model.transformer, text_encoder and vae all pointing at lumina_2.safetensors."""
    from safetensors.torch import load_file

    from lumina2_train.backbones.diffusers import DiffusersBackbone
    from lumina2_train.cli.main import main
    from lumina2_train.demo import write_demo_dataset
    from lumina2_train.tiny import make_tiny_transformer

    aio = tmp_path / "lumina_2_tiny.safetensors"
    sd = load_file(str(comfy_files[2]))
    dit = DiffusersBackbone.from_model(make_tiny_transformer(0)).tree.state_dict()
    sd.update({f"model.diffusion_model.{k}": v.contiguous() for k, v in dit.items()})
    save_file(sd, str(aio))
    data = write_demo_dataset(tmp_path / "data")
    cfg = {"model": {"transformer": str(aio), "text_encoder": str(aio), "vae": str(aio), "dtype": "fp32"},
           "data": {"datasets": [{"path": str(data), "resolution": 64, "min_size_px": 32}]},
           "train": {"steps": 2, "precision": "fp32", "checkpointing": "off"},
           "save": {"output_dir": str(tmp_path / "out"), "name": "aio"}}
    (tmp_path / "run.json").write_text(json.dumps(cfg))
    assert main(["train", str(tmp_path / "run.json")]) == 0
    assert (tmp_path / "out" / "aio" / "aio.safetensors").is_file()
