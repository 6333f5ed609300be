"""Tiny random Z-Image models for `make-tiny-models --family zimage` and tests. Nothing is downloaded.

Two layouts, as for Lumina2 (tiny/__init__.py, tiny/comfy_layout.py):

* **diffusers** (`write_tiny_zimage_diffusers`): what the headless loader reads (files/loading.py `load_backbone`,
  encoders/hf.py `HFEncoders.from_paths`): transformer/ (a diffusers ZImageTransformer2DModel of shape
  TINY_ZIMAGE), text_encoder/ + tokenizer/ (the tiny Qwen3 and its byte-level BPE, tiny/qwen3.py, 32 wide like
  TINY_ZIMAGE's cap_feat_dim), vae/ (the tiny Flux-shaped VAE, tiny/vae.py) and model_index.json. The folder
  name ZIMAGE_DIFFUSERS_DIR says "turbo", so `model.variant = "auto"` reads Z-Image-Turbo from it
  (train/recipe_choice.py).
* **ComfyUI** (`write_comfy_tiny_zimage_models`): the Z-Image diffusion model ComfyUI 0.33's detection loads
  (`write_comfy_tiny_zimage`, 3840 wide, 1 layer, bf16 ~1.8 GB), the Qwen3-4B-layout text encoder that
  CLIPLoader (type `lumina2`) detects by its 2560-wide norms and q_norm (`comfy_tiny_qwen3_state_dict`, bf16
  ~0.8 GB, most of it the 151936-token embedding; load it with `comfy_tiny_qwen3_options()`, tiny/comfy_loader.py)
  and the Flux-AE-shaped VAE that Lumina2's tiny models use too (same file name, same bytes for the same seed).
"""

from __future__ import annotations

import json
from pathlib import Path

# "turbo" in the name: model.variant 'auto' picks the Z-Image-Turbo recipe (docs/recipe.md, Z-Image training)
ZIMAGE_DIFFUSERS_DIR = "diffusers_z_image_turbo"
COMFY_QWEN3_FILE_NAME = "text_encoders/qwen_3_4b_tiny.safetensors"
TINY_METADATA = {"lumina2t.tiny": "random weights for tests"}


def write_tiny_zimage_diffusers(root: str | Path, seed: int = 0) -> dict[str, Path]:
    """A diffusers-layout Z-Image folder at `root`: transformer/, text_encoder/, tokenizer/, vae/, scheduler/ and
    model_index.json (module docstring). Returns {"root", "transformer", "text_encoder", "tokenizer", "vae"}."""
    import diffusers

    from . import make_tiny_transformer
    from .qwen3 import save_tiny_qwen3
    from .vae import save_tiny_vae

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    make_tiny_transformer(seed, family="zimage").save_pretrained(str(root / "transformer"))
    te_dir, tok_dir = save_tiny_qwen3(root, seed)
    vae_dir = save_tiny_vae(root, seed)
    index = {"_class_name": "ZImagePipeline", "_diffusers_version": diffusers.__version__,
             "transformer": ["diffusers", "ZImageTransformer2DModel"], "text_encoder": ["transformers", "Qwen3Model"],
             "tokenizer": ["transformers", "PreTrainedTokenizerFast"], "vae": ["diffusers", "AutoencoderKL"],
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
             "_note": "tiny random weights written by `python -m lumina2_train make-tiny-models --family zimage`; "
                      "not a real model"}
    (root / "model_index.json").write_text(json.dumps(index, indent=2))
    sched = root / "scheduler"
    sched.mkdir(exist_ok=True)
    (sched / "scheduler_config.json").write_text(json.dumps(  # Z-Image's static shift 3 (docs/recipe.md)
        {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0,
         "use_dynamic_shifting": False}, indent=2))
    return {"root": root, "transformer": root / "transformer", "text_encoder": te_dir, "tokenizer": tok_dir,
            "vae": vae_dir}


def write_comfy_tiny_zimage_models(folder: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write the tiny Z-Image diffusion model, Qwen3-4B-layout text encoder and Flux VAE under `folder`
    ({diffusion_models,text_encoders,vae}/, about 2.8 GB in all) and return their paths by the keys of
    comfy_layout.FILE_NAMES ("diffusion_model", "text_encoder", "vae")."""
    from safetensors.torch import save_file

    from .comfy_layout import FILE_NAMES, flux_vae_state_dict, write_comfy_tiny_zimage
    from .qwen3 import comfy_tiny_qwen3_state_dict

    folder = Path(folder)
    paths = {"diffusion_model": write_comfy_tiny_zimage(folder, seed)}
    for key, name, make in (("text_encoder", COMFY_QWEN3_FILE_NAME, lambda: comfy_tiny_qwen3_state_dict(seed)),
                            ("vae", FILE_NAMES["vae"], lambda: flux_vae_state_dict(seed))):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(make(), str(path), metadata=TINY_METADATA)
        paths[key] = path
    return paths


def comfy_zimage_file_names() -> dict[str, str]:
    """The files' names as ComfyUI's loader nodes list them, by the keys of comfy_layout.FILE_NAMES."""
    from .comfy_layout import FILE_NAMES, ZIMAGE_FILE_NAME

    return {"diffusion_model": Path(ZIMAGE_FILE_NAME).name, "text_encoder": Path(COMFY_QWEN3_FILE_NAME).name,
            "vae": Path(FILE_NAMES["vae"]).name}


__all__ = ["COMFY_QWEN3_FILE_NAME", "ZIMAGE_DIFFUSERS_DIR", "comfy_zimage_file_names",
           "write_comfy_tiny_zimage_models", "write_tiny_zimage_diffusers"]
