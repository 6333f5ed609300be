"""ComfyUI's single files for the headless path: the Gemma2 text encoder (`gemma_2_2b_fp16.safetensors`: keys
`model.*` + `spiece_model`), the Flux VAE (`ae.safetensors`, original or diffusers key layout), and the
all-in-one checkpoint (`lumina_2.safetensors`: `text_encoders.gemma2_2b.transformer.model.*`, `vae.*`),
loaded into transformers' Gemma2Model and diffusers' AutoencoderKL without ComfyUI and without network.

Shapes come from the tensors; what tensors cannot say is Gemma2-2B's (head_dim 256, as ComfyUI also fixes)
and the Flux AE's (32 norm groups). No ComfyUI imports.
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path

import torch

from ..errors import ModelError
from ..recipe import LATENT_CHANNELS, LATENT_SCALE, LATENT_SHIFT

log = logging.getLogger(__name__)
TE_PREFIXES = ("text_encoders.gemma2_2b.transformer.model.", "text_encoders.gemma2_2b.transformer.", "model.", "")
VAE_PREFIXES = ("vae.", "first_stage_model.", "")
GEMMA2_HEAD_DIM = 256


def _keys(path: Path) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise ModelError(f"{path}: not a readable safetensors file ({e}). The file may be truncated or "
                         "corrupt: download or export it again") from None


def _tensors(path: Path, prefix: str, wanted) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix) and wanted(k)}


def _prefix(keys: list[str], prefixes: tuple[str, ...], probe: str) -> str | None:
    return next((p for p in prefixes if f"{p}{probe}" in keys), None)


# ---------------------------------------------------------------- Gemma2

def gemma2_config(sd: dict[str, torch.Tensor]):
    """A transformers Gemma2Config whose shapes fit `sd` (Gemma2Model keys, no 'model.' prefix)."""
    from transformers import Gemma2Config

    vocab, hidden = sd["embed_tokens.weight"].shape
    layers = len({int(m.group(1)) for k in sd if (m := re.match(r"layers\.(\d+)\.", k))})
    q, kv = sd["layers.0.self_attn.q_proj.weight"].shape[0], sd["layers.0.self_attn.k_proj.weight"].shape[0]
    cfg = Gemma2Config(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                       intermediate_size=sd["layers.0.mlp.gate_proj.weight"].shape[0],
                       num_attention_heads=q // GEMMA2_HEAD_DIM, num_key_value_heads=kv // GEMMA2_HEAD_DIM,
                       head_dim=GEMMA2_HEAD_DIM, query_pre_attn_scalar=GEMMA2_HEAD_DIM, pad_token_id=0,
                       bos_token_id=2, eos_token_id=1)
    cfg.architectures = ["Gemma2Model"]
    return cfg


def check_text_encoder_file(path: str | Path) -> tuple[str, str]:
    """(key prefix, tokenizer key) of a text-encoder file, from its header only; ModelError otherwise."""
    path = Path(path)
    keys = _keys(path)
    prefix = _prefix(keys, TE_PREFIXES, "embed_tokens.weight")
    spiece = next((k for k in keys if k.endswith("spiece_model")), None)
    if prefix is None or spiece is None:
        raise ModelError(f"model.text_encoder: {path} holds no Gemma2 text encoder with its tokenizer (looked for "
                         "'model.embed_tokens.weight' and 'spiece_model'). Give ComfyUI's gemma_2_2b file, the "
                         "all-in-one lumina_2.safetensors, or a Hugging Face folder")
    return prefix, spiece


def text_encoder_file_dtype(path: str | Path) -> torch.dtype:
    """The dtype the file stores the Gemma2 in (of its final norm, as ComfyUI's `llama_detect` reads it)."""
    from safetensors import safe_open

    prefix, _ = check_text_encoder_file(path)
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(f"{prefix}norm.weight").dtype  # one small tensor


def load_text_encoder_file(path: str | Path, device, dtype):
    """(Gemma2Model, tokenizer) from a ComfyUI text-encoder or all-in-one file."""
    from transformers import Gemma2Model, GemmaTokenizer

    path = Path(path)
    prefix, spiece = check_text_encoder_file(path)
    sd = _tensors(path, prefix, lambda k: not k.endswith("spiece_model"))
    model = Gemma2Model(gemma2_config(sd))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ModelError(f"model.text_encoder: {path} does not fit Gemma2 (missing {sorted(missing)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]}). Give a Lumina2 Gemma2-2B text encoder")
    with tempfile.TemporaryDirectory() as tmp:  # the sentencepiece model is stored as uint8 bytes
        (Path(tmp) / "tokenizer.model").write_bytes(_tensors(path, "", lambda k: k == spiece)[spiece].numpy().tobytes())
        tokenizer = GemmaTokenizer.from_pretrained(tmp, add_bos_token=True, add_eos_token=False)
    tokenizer.padding_side = "right"
    return model.to(device, dtype).eval(), tokenizer


# ---------------------------------------------------------------- Flux VAE

def _vae_config(sd: dict[str, torch.Tensor], diffusers_layout: bool) -> dict:
    down = "encoder.down_blocks" if diffusers_layout else "encoder.down"
    levels = sorted({int(m.group(1)) for k in sd if (m := re.match(rf"{re.escape(down)}\.(\d+)\.", k))})
    block = "resnets" if diffusers_layout else "block"
    channels = [sd[f"{down}.{i}.{block}.0.conv1.weight"].shape[0] for i in levels]
    per_block = len({m.group(1) for k in sd if (m := re.match(rf"{re.escape(down)}\.0\.{block}\.(\d+)\.", k))})
    latent = sd["decoder.conv_in.weight"].shape[1]
    return {"in_channels": 3, "out_channels": 3, "latent_channels": latent, "block_out_channels": channels,
            "down_block_types": ["DownEncoderBlock2D"] * len(channels),
            "up_block_types": ["UpDecoderBlock2D"] * len(channels), "layers_per_block": per_block,
            "norm_num_groups": 32, "scaling_factor": LATENT_SCALE, "shift_factor": LATENT_SHIFT,
            "use_quant_conv": "quant_conv.weight" in sd, "use_post_quant_conv": "post_quant_conv.weight" in sd,
            "sample_size": 1024}


def check_vae_file(path: str | Path) -> str:
    """The key prefix of the VAE in a file, from its header only; ModelError otherwise."""
    path = Path(path)
    prefix = _prefix(_keys(path), VAE_PREFIXES, "decoder.conv_in.weight")
    if prefix is None:
        raise ModelError(f"model.vae: {path} holds no VAE (no 'decoder.conv_in.weight'). Give the Flux "
                         "ae.safetensors, the all-in-one lumina_2.safetensors, or a diffusers vae folder")
    return prefix


def load_vae_file(path: str | Path, device, dtype):
    """A diffusers AutoencoderKL from ComfyUI's ae.safetensors (or the all-in-one file's vae.*)."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    path = Path(path)
    sd = _tensors(path, check_vae_file(path), lambda k: True)
    diffusers_layout = any(k.startswith("encoder.down_blocks.") for k in sd)
    config = _vae_config(sd, diffusers_layout)
    if config["latent_channels"] != LATENT_CHANNELS:
        raise ModelError(f"model.vae: {path} has {config['latent_channels']} latent channels; Lumina2 needs the "
                         f"{LATENT_CHANNELS}-channel Flux AE (ae.safetensors)")
    if not diffusers_layout:
        sd = convert_ldm_vae_checkpoint(sd, config)
    vae = AutoencoderKL(**config)
    missing, unexpected = vae.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ModelError(f"model.vae: {path} does not fit a Flux-shaped AutoencoderKL (missing "
                         f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}). Give the Flux ae.safetensors; download it "
                         "again if it is damaged")
    return vae.to(device, dtype).eval()
