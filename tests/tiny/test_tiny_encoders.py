"""The tiny tokenizer, Gemma2 text encoder and Flux-shaped VAE built in code."""

from __future__ import annotations

import json

import sentencepiece as spm
from transformers import AutoTokenizer

from lumina2_train.tiny import TINY_DIT
from lumina2_train.tiny.text import TINY_VOCAB, make_tiny_text_encoder, tiny_spiece_model
from lumina2_train.tiny.vae import make_tiny_vae


def test_sentencepiece_model_is_deterministic_with_gemma_special_ids():
    blob = tiny_spiece_model()
    assert blob == tiny_spiece_model()
    sp = spm.SentencePieceProcessor(model_proto=blob)
    assert sp.get_piece_size() == TINY_VOCAB
    assert [sp.id_to_piece(i) for i in range(5)] == ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    assert sp.decode(sp.encode("Ünïcode ✓ 日本")) == "Ünïcode ✓ 日本"  # byte fallback: any text round-trips


def test_saved_tokenizer_matches_sentencepiece(tiny_encoder_dir):
    tok = AutoTokenizer.from_pretrained(str(tiny_encoder_dir / "tokenizer"), local_files_only=True)
    sp = spm.SentencePieceProcessor(model_file=str(tiny_encoder_dir / "tokenizer" / "tokenizer.model"))
    for text in ["a photo of a cat", "You are an assistant <Prompt Start> 1girl, smiling", "", "日本 ✓"]:
        assert tok(text)["input_ids"] == [2] + sp.encode(text)
    assert len(tok) == TINY_VOCAB and tok.bos_token_id == 2 and tok.pad_token_id == 0


def test_text_encoder_shape_matches_the_tiny_dit(tiny_encoder_dir):
    model = make_tiny_text_encoder(0)
    assert model.config.hidden_size == TINY_DIT["cap_feat_dim"] and model.config.vocab_size == TINY_VOCAB
    assert model.config.num_hidden_layers == 2 and type(model).__name__ == "Gemma2Model"
    saved = json.loads((tiny_encoder_dir / "text_encoder" / "config.json").read_text())
    assert saved["model_type"] == "gemma2" and saved["architectures"] == ["Gemma2Model"]
    a, b = make_tiny_text_encoder(0).state_dict(), make_tiny_text_encoder(1).state_dict()
    assert all((a[k] == model.state_dict()[k]).all() for k in a) and any((a[k] != b[k]).any() for k in a)


def test_vae_is_flux_shaped(tiny_encoder_dir):
    vae = make_tiny_vae(0)
    cfg = vae.config
    assert cfg.latent_channels == 16 and len(cfg.block_out_channels) == 4
    assert not cfg.use_quant_conv and not cfg.use_post_quant_conv
    assert (cfg.scaling_factor, cfg.shift_factor) == (0.3611, 0.1159)
    saved = json.loads((tiny_encoder_dir / "vae" / "config.json").read_text())
    assert saved["_class_name"] == "AutoencoderKL" and saved["latent_channels"] == 16
