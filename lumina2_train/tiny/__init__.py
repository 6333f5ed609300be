"""Tiny random NextDiT models for tests, the demo and `make-tiny-models`. Nothing is downloaded.

The DiT here is a real diffusers `Lumina2Transformer2DModel` (or `ZImageTransformer2DModel`, TINY_ZIMAGE)
with few layers and a small width; the
text encoder (transformers Gemma2 + a tokenizer trained in code) and the Flux-shaped VAE live in
tiny/text.py and tiny/vae.py.
"""

from __future__ import annotations

import torch

# A small NextDiT: head_dim 24 = 3 RoPE axes of 8; GQA 4 query heads over 2 kv heads; the width (96) exceeds
# the 64 values of a 2x2x16 patch so the network can carry its input through (the learning test needs it).
TINY_DIT = dict(
    sample_size=16, patch_size=2, in_channels=16, hidden_size=96, num_layers=2, num_refiner_layers=1,
    num_attention_heads=4, num_kv_heads=2, multiple_of=16, ffn_dim_multiplier=None, norm_eps=1e-5,
    axes_dim_rope=(8, 8, 8), axes_lens=(300, 512, 512), cap_feat_dim=32,
)
# Lumina2's real width (ComfyUI's detection and diffusers' LoRA converter both hard-code 2304 | 768 | 768)
# with one layer, one refiner of each kind and a thin FFN: for tests that go through those code paths.
NATIVE_WIDTH_DIT = dict(TINY_DIT, hidden_size=2304, num_layers=1, num_attention_heads=24, num_kv_heads=8,
                        axes_dim_rope=(32, 32, 32), ffn_dim_multiplier=0.01)
# A small Z-Image: head_dim 32 = RoPE axes (8, 12, 12) (Z-Image's quarter / 3/8 / 3/8 split), no GQA, FFN
# 96·8/3 = 256, its theta 256, time scale 1000 and pad tokens; width 96 as above.
TINY_ZIMAGE = dict(
    all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=96, n_layers=2, n_refiner_layers=1,
    n_heads=3, n_kv_heads=3, norm_eps=1e-5, qk_norm=True, cap_feat_dim=32, rope_theta=256.0, t_scale=1000.0,
    axes_dims=(8, 12, 12), axes_lens=(1024, 512, 512),
)


def make_tiny_transformer(seed: int = 0, config: dict | None = None, std: float = 0.1, family: str = "lumina2"):
    """A diffusers Lumina2Transformer2DModel (family "zimage": ZImageTransformer2DModel) with every parameter
    drawn from N(0, std²) (fp32, eval mode).

    diffusers zero-initialises some layers; random values everywhere make sign or name mix-ups visible.
    Norm weights are drawn around 1 so activations keep their scale.
    """
    import diffusers

    gen = torch.Generator().manual_seed(seed)
    if family == "zimage":
        model = diffusers.ZImageTransformer2DModel(**(config or TINY_ZIMAGE)).eval()
    else:
        model = diffusers.Lumina2Transformer2DModel(**(config or TINY_DIT)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * std
            p.copy_(1.0 + noise if "norm" in name and "linear" not in name else noise)
    return model


def write_tiny_diffusers(root, seed: int = 0, extra_corpus: tuple[str, ...] = (), vocab_size: int = 384) -> dict:
    """A diffusers-layout Lumina2 folder: transformer/, text_encoder/, tokenizer/, vae/, model_index.json.
    `extra_corpus` / `vocab_size`: sentences whose words the tiny tokenizer also learns, in a vocabulary of
    that size (tiny/text.py; the default 384 is TINY_VOCAB).

    Returns {"root", "transformer", "text_encoder", "tokenizer", "vae"} paths.
    """
    import json
    from pathlib import Path

    from .text import save_tiny_text_encoder
    from .vae import save_tiny_vae

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    make_tiny_transformer(seed).save_pretrained(str(root / "transformer"))
    te_dir, tok_dir = save_tiny_text_encoder(root, seed, extra_corpus, vocab_size)
    vae_dir = save_tiny_vae(root, seed)
    index = {"_class_name": "Lumina2Pipeline", "_diffusers_version": "0.32.0",
             "transformer": ["diffusers", "Lumina2Transformer2DModel"],
             "text_encoder": ["transformers", "Gemma2Model"], "tokenizer": ["transformers", "GemmaTokenizerFast"],
             "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
             "_note": "tiny random weights written by `python -m lumina2_train make-tiny-models`; not a real model"}
    (root / "model_index.json").write_text(json.dumps(index, indent=2))
    sched = root / "scheduler"
    sched.mkdir(exist_ok=True)
    (sched / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 6.0}, indent=2))
    return {"root": root, "transformer": root / "transformer", "text_encoder": te_dir, "tokenizer": tok_dir,
            "vae": vae_dir}
