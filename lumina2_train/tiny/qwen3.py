"""A tiny Qwen3 text encoder (Z-Image's) and a byte-level BPE tokenizer trained in code. Nothing is downloaded.

The tokenizer is a real `tokenizers` byte-level BPE, as Qwen's, with Qwen's special tokens <|endoftext|> (pad),
<|im_start|> and <|im_end|>, so the Z-Image chat template (recipe.ZIMAGE_PROMPT_TEMPLATE) tokenizes as it does
for Qwen3-4B; it adds no BOS. The encoder is a transformers Qwen3Model whose width equals the tiny Z-Image's
cap_feat_dim (TINY_ZIMAGE, 32). `comfy_tiny_qwen3_state_dict` is the one that ComfyUI's Qwen3-4B loader accepts.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..recipe import ZIMAGE_PROMPT_TEMPLATE
from . import TINY_ZIMAGE
from .text import _CORPUS

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TINY_QWEN3_VOCAB = 512
TINY_QWEN3 = dict(
    hidden_size=TINY_ZIMAGE["cap_feat_dim"], intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
    num_key_value_heads=1, head_dim=16, max_position_embeddings=1024, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
    tie_word_embeddings=False,
)
# ComfyUI 0.33 detects Qwen3-4B by a 2560-wide post_attention_layernorm (comfy/sd.py detect_te_model), builds it
# from Qwen3_4BConfig (head_dim fixed at 128) and tokenizes with its own Qwen2.5 tokenizer (ids up to 151645):
# so width and vocabulary stay; the override below (model_options "qwen3_4b_model_config") thins the rest.
COMFY_TINY_QWEN3 = dict(vocab_size=151936, hidden_size=2560, intermediate_size=64, num_hidden_layers=3,
                        num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=4096)
COMFY_QWEN3_HEAD_DIM = 128
COMFY_QWEN3_ROPE_THETA = 1_000_000.0


def train_tiny_qwen3_tokenizer(vocab_size: int = TINY_QWEN3_VOCAB):
    """A transformers PreTrainedTokenizerFast over a byte-level BPE trained on the tiny corpus (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [*_CORPUS, ZIMAGE_PROMPT_TEMPLATE.format("a photo")] * 8
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                   padding_side="right", model_max_length=131072)


def make_tiny_qwen3(seed: int = 0, vocab_size: int = TINY_QWEN3_VOCAB, **overrides):
    """A transformers Qwen3Model (3 layers, width 32), fp32, eval mode, weights drawn from the seed."""
    from transformers import Qwen3Config, Qwen3Model

    config = Qwen3Config(**dict(TINY_QWEN3, vocab_size=vocab_size, **overrides))
    config.architectures = ["Qwen3Model"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3Model(config)
    with torch.no_grad():  # norms around 1, not exactly 1, so a norm read from the wrong place shows
        gen = torch.Generator().manual_seed(seed + 1)
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def save_tiny_qwen3(root: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Write `root/text_encoder/` (a Qwen3Model folder) and `root/tokenizer/` (diffusers' Z-Image layout)."""
    root = Path(root)
    te_dir, tok_dir = root / "text_encoder", root / "tokenizer"
    for folder in (te_dir, tok_dir):
        if folder.exists():
            shutil.rmtree(folder)
    tokenizer = train_tiny_qwen3_tokenizer()
    tokenizer.save_pretrained(str(tok_dir))
    make_tiny_qwen3(seed, len(tokenizer)).save_pretrained(str(te_dir))
    return te_dir, tok_dir


def comfy_tiny_qwen3_options() -> dict:
    """The `model_options` that make ComfyUI's loader build the tiny Qwen3 (see COMFY_TINY_QWEN3)."""
    return {"qwen3_4b_model_config": dict(COMFY_TINY_QWEN3)}


def comfy_tiny_qwen3_state_dict(seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """Random Qwen3 weights of shape COMFY_TINY_QWEN3 under ComfyUI's (and transformers Qwen3ForCausalLM's)
    `model.*` keys. Norm weights ~ 1 + N(0, 0.1²); the same tensors load into transformers' Qwen3Model."""
    c, hd = COMFY_TINY_QWEN3, COMFY_QWEN3_HEAD_DIM
    h, i, q, kv = c["hidden_size"], c["intermediate_size"], c["num_attention_heads"], c["num_key_value_heads"]
    shapes: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (c["vocab_size"], h), "norm.weight": (h,)}
    for n in range(c["num_hidden_layers"]):
        p = f"layers.{n}."
        shapes.update({p + "self_attn.q_proj.weight": (q * hd, h), p + "self_attn.k_proj.weight": (kv * hd, h),
                       p + "self_attn.v_proj.weight": (kv * hd, h), p + "self_attn.o_proj.weight": (h, q * hd),
                       p + "self_attn.q_norm.weight": (hd,), p + "self_attn.k_norm.weight": (hd,),
                       p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
                       p + "mlp.down_proj.weight": (h, i), p + "input_layernorm.weight": (h,),
                       p + "post_attention_layernorm.weight": (h,)})
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in shapes.items():
        if len(shape) == 1:
            t = torch.empty(shape).normal_(1.0, 0.1, generator=gen)
        else:
            t = torch.empty(shape, dtype=dtype).normal_(0.0, 1.0 if name.startswith("embed") else shape[1] ** -0.5,
                                                        generator=gen)
        sd[f"model.{name}"] = t.to(dtype)
    return sd


def comfy_tiny_qwen3_hf_config(vocab_size: int = COMFY_TINY_QWEN3["vocab_size"]):
    """The transformers Qwen3Config with the shape of `comfy_tiny_qwen3_state_dict` (ComfyUI's numerics)."""
    from transformers import Qwen3Config

    c = COMFY_TINY_QWEN3
    config = Qwen3Config(vocab_size=vocab_size, hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
                         num_hidden_layers=c["num_hidden_layers"], num_attention_heads=c["num_attention_heads"],
                         num_key_value_heads=c["num_key_value_heads"], head_dim=COMFY_QWEN3_HEAD_DIM,
                         max_position_embeddings=c["max_position_embeddings"], rms_norm_eps=1e-6,
                         rope_theta=COMFY_QWEN3_ROPE_THETA, tie_word_embeddings=False)
    config.architectures = ["Qwen3ForCausalLM"]
    return config


__all__ = ["COMFY_TINY_QWEN3", "SPECIAL_TOKENS", "TINY_QWEN3", "comfy_tiny_qwen3_hf_config",
           "comfy_tiny_qwen3_options", "comfy_tiny_qwen3_state_dict", "make_tiny_qwen3", "save_tiny_qwen3",
           "train_tiny_qwen3_tokenizer"]
