"""Tiny random Lumina2 models in ComfyUI's file layout, for tests/comfy and `make-tiny-models`. No ComfyUI imports.

ComfyUI builds each model from a mostly fixed config, so "tiny" means "as small as its loaders allow":

* **Diffusion model** (`diffusion_models/`, loads with UNETLoader / `comfy.sd.load_diffusion_model_state_dict`).
  `model_detection.py` picks Lumina2 from the key `cap_embedder.1.weight` and hard-codes dim 2304, 24/8 heads,
  axes (32, 32, 32), patch 2, 16 channels; only `cap_feat_dim` (from `cap_embedder.1.weight`) and the number of
  main layers (count of `layers.N.`) come from the file. The FFN hidden size follows from NextDiT's defaults
  (4·2304 rounded to `multiple_of=256`: 9216) and there are always 2 noise + 2 context refiners. So: 1 main
  layer, cap_feat_dim 32 (the tiny text encoder's width): about 0.42 B parameters, written in bf16 (~0.8 GB).
  `norm_final.weight` is written too (ComfyUI's NextDiT has it, unused) so the load reports no missing key.
* **Text encoder** (`text_encoders/`). CLIPLoader detects Gemma2-2B by the key
  `model.layers.0.post_feedforward_layernorm.weight` and then builds Gemma2 from a FIXED config (2304 wide,
  26 layers, vocab 256000: 2.6 B parameters) whatever the file holds; a small file would not fit it. ComfyUI's
  own override hook does: `SDClipModel` merges `model_options["gemma2_2b_model_config"]` into that config. The
  file here is a real ComfyUI-layout Gemma2 (`model.*` keys + `spiece_model`, the sentencepiece model trained
  in code by tiny/text.py) of the shape `COMFY_TINY_GEMMA2`; load it with ComfyUI's loader plus that option:
  `comfy.sd.load_clip([path], clip_type=CLIPType.LUMINA2, model_options=comfy_tiny_clip_options())`. That is
  CLIPLoader's code path (detection, tokenizer from the file, Gemma2 class, layer -2) at a small size.
  ComfyUI's Gemma2 fixes head_dim at 256 (a class attribute, not a config field) and asserts
  |layer_idx| = 2 < layers, hence 1 head of 256 and 3 layers.
* **Z-Image diffusion model** (`write_comfy_tiny_zimage`, ComfyUI 0.33+). Detection reads Z-Image from dim
  3840 and fixes 30 heads of 128, axes (32, 48, 48), rope theta 256, FFN 8/3 (10240), 2 + 2 refiners, learned
  pad tokens (`cap_pad_token`); only `cap_feat_dim` and the main-layer count come from the file. So: 1 main
  layer, cap_feat_dim 2560 (ComfyUI's Qwen3-4B CLIP is detected by that width): 0.91 B parameters, bf16 ~1.8 GB,
  about 6 GB of RAM once ComfyUI has loaded it.
* **VAE** (`vae/`, loads with VAELoader). Flux-style AEs fall in `comfy.sd.VAE`'s default branch, where only
  the latent channel count comes from the file (`decoder.conv_in.weight`): ch 128, ch_mult (1, 2, 4, 4),
  2 res blocks are fixed. So this is the real Flux AE shape (16 channels, no quant convs, ~84 M parameters,
  bf16 ~0.17 GB) with diffusers' random init, written in diffusers' key layout, which ComfyUI converts.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..backbones.family import ZIMAGE, family_options
from ..backbones.nextdit import ArchConfig, NativeNextDiT
from ..recipe import LATENT_CHANNELS

# The Gemma2 shape ComfyUI's `Gemma2_2B_Config` fields accept (head_dim stays ComfyUI's fixed 256).
COMFY_TINY_GEMMA2 = dict(vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=512)
COMFY_GEMMA2_HEAD_DIM = 256
# What ComfyUI's detection builds from the DiT file written here (qk norms: ComfyUI passes no eps).
COMFY_TINY_ARCH = ArchConfig(n_layers=1, cap_feat_dim=COMFY_TINY_GEMMA2["hidden_size"], qk_norm_eps=None)
FLUX_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
    use_quant_conv=False, use_post_quant_conv=False,
)
ZIMAGE_CAP_FEAT_DIM = 2560  # Qwen3-4B's width: the tiny Qwen3-4B-layout CLIP (tiny/qwen3.py) feeds it
# the variant is read from the name (train/recipe_choice.py): this file stands for Z-Image-Turbo
ZIMAGE_FILE_NAME = "diffusion_models/z_image_turbo_tiny_bf16.safetensors"
FILE_NAMES = {"diffusion_model": "diffusion_models/lumina2_tiny_bf16.safetensors",
              "text_encoder": "text_encoders/gemma2_tiny.safetensors",
              "vae": "vae/flux_ae_tiny.safetensors"}


def comfy_tiny_clip_options() -> dict:
    """The `model_options` that make ComfyUI's loader build the tiny Gemma2 (see the module docstring)."""
    return {"gemma2_2b_model_config": dict(COMFY_TINY_GEMMA2)}


def comfy_tiny_zimage_arch(cap_feat_dim: int = ZIMAGE_CAP_FEAT_DIM) -> ArchConfig:
    """What ComfyUI's detection builds for a Z-Image file with one main layer (module docstring, Z-Image)."""
    return ArchConfig(dim=3840, n_layers=1, n_refiner_layers=2, n_heads=30, n_kv_heads=30, ffn_hidden=10240,
                      cap_feat_dim=cap_feat_dim, axes_dims=(32, 48, 48), qk_norm_eps=None,
                      **family_options(ZIMAGE))


def comfy_tiny_dit_state_dict(seed: int = 0, arch: ArchConfig = COMFY_TINY_ARCH,
                              dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """Random NextDiT weights under ComfyUI's native names; every tensor is non-zero so mix-ups show.

    Linear weights ~ N(0, 1/(2·fan_in)) keep activations O(1) through the 2304-wide blocks; norm weights ~ 1.
    """
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in NativeNextDiT(arch).state_dict().items()}
    if not arch.is_zimage:  # ComfyUI's Lumina2 NextDiT has it (unused); its Z-Image one reports it unexpected
        shapes["norm_final.weight"] = torch.Size([arch.dim])
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(shapes):
        shape = shapes[name]
        if len(shape) == 2:
            mean, std = 0.0, (0.5 / shape[1]) ** 0.5
        elif "norm" in name:
            mean, std = 1.0, 0.05
        else:  # biases
            mean, std = 0.0, 0.02
        out[name] = torch.empty(shape).normal_(mean, std, generator=gen).to(dtype)
    return out


def _gemma2_shapes(c: dict, head_dim: int) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of a Gemma2 decoder (transformers' / ComfyUI's names, without the `model.` prefix)."""
    h, i, q, kv = c["hidden_size"], c["intermediate_size"], c["num_attention_heads"], c["num_key_value_heads"]
    shapes: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (c["vocab_size"], h), "norm.weight": (h,)}
    for n in range(c["num_hidden_layers"]):
        p = f"layers.{n}."
        shapes.update({
            p + "self_attn.q_proj.weight": (q * head_dim, h), p + "self_attn.k_proj.weight": (kv * head_dim, h),
            p + "self_attn.v_proj.weight": (kv * head_dim, h), p + "self_attn.o_proj.weight": (h, q * head_dim),
            p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h), p + "mlp.down_proj.weight": (h, i),
        })
        for norm in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                     "post_feedforward_layernorm"):
            shapes[f"{p}{norm}.weight"] = (h,)
    return shapes


def comfy_tiny_text_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random Gemma2 of shape COMFY_TINY_GEMMA2 under ComfyUI's keys (`model.*`) plus `spiece_model` (uint8).

    The same tensors load into transformers' Gemma2Model (head_dim 256) once the `model.` prefix is removed.
    Gemma norms scale by (1 + w): w ~ N(0, 0.1²).
    """
    from .text import tiny_spiece_model

    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in _gemma2_shapes(COMFY_TINY_GEMMA2, COMFY_GEMMA2_HEAD_DIM).items():
        std = 0.1 if len(shape) == 1 else (1.0 if name.startswith("embed") else shape[1] ** -0.5)
        sd[f"model.{name}"] = torch.empty(shape).normal_(0.0, std, generator=gen)
    sd["spiece_model"] = torch.frombuffer(bytearray(tiny_spiece_model()), dtype=torch.uint8)
    return sd


def flux_vae_state_dict(seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """A Flux-AE-shaped diffusers AutoencoderKL (random init) as a diffusers-layout state dict."""
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(**FLUX_VAE)
    return {k: v.detach().to(dtype).contiguous() for k, v in vae.state_dict().items()}


def write_comfy_tiny_models(folder: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write the three files under `folder` ({diffusion_models,text_encoders,vae}/) and return their paths.

    Returns {"diffusion_model": …, "text_encoder": …, "vae": …}. Point ComfyUI's model folders at `folder`
    (extra_model_paths.yaml or folder_paths.add_model_folder_path) to pick them in the loader nodes.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    makers = {"diffusion_model": lambda: comfy_tiny_dit_state_dict(seed),
              "text_encoder": lambda: comfy_tiny_text_state_dict(seed),
              "vae": lambda: flux_vae_state_dict(seed)}
    paths = {}
    for key, make in makers.items():
        path = folder / FILE_NAMES[key]
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(make(), str(path), metadata={"lumina2t.tiny": "random weights for tests"})
        paths[key] = path
    return paths


def write_comfy_tiny_zimage(folder: str | Path, seed: int = 0) -> Path:
    """Write the tiny Z-Image diffusion model (ZIMAGE_FILE_NAME) under `folder`; returns its path."""
    from safetensors.torch import save_file

    path = Path(folder) / ZIMAGE_FILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(comfy_tiny_dit_state_dict(seed, comfy_tiny_zimage_arch()), str(path),
              metadata={"lumina2t.tiny": "random weights for tests"})
    return path


__all__ = ["COMFY_TINY_ARCH", "ZIMAGE_CAP_FEAT_DIM", "ZIMAGE_FILE_NAME", "comfy_tiny_zimage_arch",
           "write_comfy_tiny_zimage", "COMFY_TINY_GEMMA2", "FILE_NAMES", "FLUX_VAE", "comfy_tiny_clip_options",
           "comfy_tiny_dit_state_dict", "comfy_tiny_text_state_dict", "flux_vae_state_dict",
           "write_comfy_tiny_models"]
