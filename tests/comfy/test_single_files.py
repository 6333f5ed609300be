"""The headless loaders read ComfyUI's own single files: the original (LDM) key layout of ae.safetensors, as
ComfyUI's converter writes it, and the tiny ComfyUI text encoder, compared with ComfyUI's own encoders."""

import torch
from safetensors.torch import save_file

from lumina2_train.encoders.files import load_vae_file
from lumina2_train.tiny.comfy_layout import flux_vae_state_dict


def test_ldm_layout_vae_file_loads_like_the_diffusers_layout(comfy, tmp_path):
    from comfy import diffusers_convert

    diffusers_sd = flux_vae_state_dict(0, torch.float32)
    ldm_sd = diffusers_convert.convert_vae_state_dict(dict(diffusers_sd))  # diffusers keys -> ae.safetensors keys
    assert "encoder.down.0.block.0.norm1.weight" in ldm_sd
    save_file({k: v.contiguous() for k, v in ldm_sd.items()}, str(tmp_path / "ae.safetensors"))
    save_file(diffusers_sd, str(tmp_path / "diffusers.safetensors"))
    ldm = load_vae_file(tmp_path / "ae.safetensors", "cpu", torch.float32)
    ref = load_vae_file(tmp_path / "diffusers.safetensors", "cpu", torch.float32)
    pixels = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(ldm.encode(pixels).latent_dist.mean, ref.encode(pixels).latent_dist.mean)


def test_text_encoder_file_gives_comfyuis_features(comfy_clip, comfy_models):
    """Our transformers Gemma2 built from ComfyUI's TE file ≈ ComfyUI's own Gemma2 on the same file (layer -2).

    Two implementations of the same maths in fp32: they agree to about 2e-4 of the features' scale (measured
    1.2e-3 absolute on features of mean magnitude 4.9), not bit for bit.
    """
    from lumina2_train.encoders.comfy import ComfyEncoders
    from lumina2_train.encoders.hf import HFEncoders

    ours = HFEncoders.from_paths(str(comfy_models["text_encoder"]), str(comfy_models["vae"])).text_encoder()
    theirs = ComfyEncoders(clip=comfy_clip).text_encoder()
    prompt = ["You are an assistant designed to generate superior images. <Prompt Start> a red cube"]
    a, b = ours.encode(prompt, 64)[0], theirs.encode(prompt, 64)[0]
    assert a.shape == b.shape
    assert (a - b).abs().max() < 1e-3 * b.abs().mean() * 2
