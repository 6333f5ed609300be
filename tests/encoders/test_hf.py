"""HFEncoders on the tiny real models: Gemma2 features, padding invariance, VAE scaling, identities, errors."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from lumina2_train.encoders import pad_features
from lumina2_train.encoders.hf import HFEncoders
from lumina2_train.errors import ModelError
from lumina2_train.recipe import SYSTEM_PROMPT_TEXT, format_prompt, latent_in, latent_out


@pytest.fixture
def hf(tiny_encoder_dir):
    return HFEncoders.from_paths(str(tiny_encoder_dir), str(tiny_encoder_dir))


def test_from_paths_loads_nothing_until_asked(hf):
    assert hf.loads == {"text": 0, "vae": 0}
    hf.latent_encoder()
    assert hf.loads == {"text": 0, "vae": 1}
    hf.latent_encoder()
    hf.release()
    hf.latent_encoder()
    assert hf.loads == {"text": 0, "vae": 2}


def test_tokens_are_bos_text_truncated_and_right_padded(hf):
    text = hf.text_encoder()
    ids, mask = text.tokenize(["", "a cat", "word " * 100], max_tokens=16)
    assert (ids[:, 0] == 2).all()  # Gemma's BOS
    assert mask.sum(1).tolist()[0] == 1 and mask.sum(1).tolist()[2] == 16
    assert (ids[0, 1:] == 0).all() and mask[1].tolist() == sorted(mask[1].tolist(), reverse=True)  # pad right
    assert [f.shape[0] for f in text.encode(["", "word " * 100], max_tokens=16)] == [1, 16]


def test_padding_length_does_not_change_features(hf):
    text = hf.text_encoder()
    short = format_prompt("a cat", SYSTEM_PROMPT_TEXT["base"])
    alone = text.encode([short], 256)[0]
    batched = text.encode([short, format_prompt("a much longer caption " * 8, SYSTEM_PROMPT_TEXT["base"])], 256)
    assert alone.shape == batched[0].shape and batched[1].shape[0] > alone.shape[0]
    torch.testing.assert_close(alone, batched[0], rtol=0, atol=1e-5)


def test_features_are_the_penultimate_hidden_state(hf):
    text = hf.text_encoder()
    ids, mask = text.tokenize(["a red chair"], 256)
    with torch.no_grad():
        out = text.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    feats = text.encode(["a red chair"], 256)[0]
    assert feats.shape == (ids.shape[1], 32) and feats.dtype == torch.float32
    assert torch.equal(feats, out.hidden_states[-2][0])
    assert not torch.allclose(feats, out.last_hidden_state[0])  # not the final-normed output


def test_vae_latents_are_in_the_scaled_space(hf):
    vae = hf.latent_encoder()
    pixels = torch.rand(2, 3, 32, 48) * 2 - 1
    z = vae.encode(pixels)
    assert z.shape == (2, 16, 4, 6) and z.dtype == torch.float32
    with torch.no_grad():
        raw = vae.vae.encode(pixels).latent_dist.mean
    assert torch.equal(z, latent_in(raw))
    torch.testing.assert_close(latent_out(z), raw)
    out = vae.decode(z)
    assert out.shape == (2, 3, 32, 48) and out.min() >= -1 and out.max() <= 1


def test_identities_hash_content(tiny_encoder_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_encoder_dir, copy)
    a = HFEncoders.from_paths(str(copy), str(copy))
    assert a.text_identity == HFEncoders.from_paths(str(tiny_encoder_dir), str(tiny_encoder_dir)).text_identity
    weights = copy / "vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit, same size
    st = weights.stat()
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    b = HFEncoders.from_paths(str(copy), str(copy))
    assert b.vae_identity != a.vae_identity and b.text_identity == a.text_identity
    assert HFEncoders.from_paths(str(copy), str(copy), dtype=torch.bfloat16).text_identity != a.text_identity


def test_separate_folders_and_tokenizer_lookup(tiny_encoder_dir):
    direct = HFEncoders.from_paths(str(tiny_encoder_dir / "text_encoder"), str(tiny_encoder_dir / "vae"))
    explicit = HFEncoders.from_paths(str(tiny_encoder_dir / "text_encoder"), str(tiny_encoder_dir / "vae"),
                                     tokenizer=str(tiny_encoder_dir / "tokenizer"))
    assert direct.text_identity == explicit.text_identity
    assert direct.text_encoder().encode(["x"], 8)[0].shape == (2, 32)


def test_from_models(tiny_encoder_dir, tmp_path):
    from lumina2_train.tiny.text import make_tiny_text_encoder, make_tiny_tokenizer
    from lumina2_train.tiny.vae import make_tiny_vae

    tok = make_tiny_tokenizer(tmp_path / "tokenizer")
    enc = HFEncoders.from_models(make_tiny_text_encoder(0), tok, make_tiny_vae(0))
    ref = HFEncoders.from_paths(str(tiny_encoder_dir), str(tiny_encoder_dir))
    torch.testing.assert_close(enc.text_encoder().encode(["a cat"], 64)[0], ref.text_encoder().encode(["a cat"], 64)[0])
    assert enc.text_identity == HFEncoders.from_models(make_tiny_text_encoder(0), tok, make_tiny_vae(0)).text_identity
    assert enc.vae_identity != HFEncoders.from_models(make_tiny_text_encoder(0), tok, make_tiny_vae(1)).vae_identity


def test_bad_paths_name_the_field_and_the_fix(tiny_encoder_dir, tmp_path):
    with pytest.raises(ModelError, match=r"model.text_encoder: folder not found \('/nope'\)"):
        HFEncoders.from_paths("/nope", str(tiny_encoder_dir))
    single = tmp_path / "gemma.safetensors"
    single.write_bytes(b"x")
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        HFEncoders.from_paths(str(single), str(tiny_encoder_dir))
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelError, match="holds a 'llama' model, not Gemma2"):
        HFEncoders.from_paths(str(llama), str(tiny_encoder_dir))
    lonely = tmp_path / "lonely"
    shutil.copytree(tiny_encoder_dir / "text_encoder", lonely)
    with pytest.raises(ModelError, match="model.tokenizer: no tokenizer next to"):
        HFEncoders.from_paths(str(lonely), str(tiny_encoder_dir))
    sd_vae = tmp_path / "sdvae"
    sd_vae.mkdir()
    (sd_vae / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", "latent_channels": 4}))
    with pytest.raises(ModelError, match="4 latent channels. Lumina2 needs the 16-channel"):
        HFEncoders.from_paths(str(tiny_encoder_dir), str(sd_vae))


def test_pad_features():
    feats, mask = pad_features([torch.ones(2, 4), torch.ones(5, 4)])
    assert feats.shape == (2, 5, 4) and mask.tolist() == [[True, True, False, False, False], [True] * 5]
    assert feats[0, 2:].abs().sum() == 0


# ---------------------------------------------------------------- text-encoder numerics (docs/recipe.md)


def _softcaps(model) -> set:
    return {m.attn_logit_softcapping for m in model.modules() if hasattr(m, "attn_logit_softcapping")}


def test_default_numerics_are_comfyuis_no_softcapping(tiny_encoder_dir):
    """The headless default encodes as ComfyUI does (no soft-capping); 'transformers' keeps transformers' 50."""
    ours = HFEncoders.from_paths(str(tiny_encoder_dir), str(tiny_encoder_dir)).text_encoder()
    theirs = HFEncoders.from_paths(str(tiny_encoder_dir), str(tiny_encoder_dir), numerics="transformers").text_encoder()
    assert ours.numerics == "comfyui" and _softcaps(ours.model) == {None}
    assert ours.model.config.attn_logit_softcapping is None and ours.model.config._attn_implementation == "eager"
    assert _softcaps(theirs.model) == {50.0}


def test_norm_scales_are_rounded_as_comfyui_stores_them():
    """ComfyUI adds 1 to a norm weight in the stored dtype: 1 + w' equals fp16(1 + w) exactly in float32."""
    from lumina2_train.encoders.hf import round_norm_scales
    from lumina2_train.tiny.text import make_tiny_text_encoder

    model = make_tiny_text_encoder(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.randn(p.shape) * 0.3)
    before = {n: p.clone() for n, p in model.named_parameters()}
    round_norm_scales(model, torch.float16)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            assert torch.equal(1.0 + p, (before[name].half() + 1.0).float()) and not torch.equal(p, before[name])
        else:
            assert torch.equal(p, before[name])  # other weights are not touched


def test_numerics_key_the_cache_and_are_validated(tiny_encoder_dir):
    from lumina2_train.cache.store import text_key
    from lumina2_train.config import ModelConfig

    a = HFEncoders.from_paths(str(tiny_encoder_dir), str(tiny_encoder_dir))
    b = HFEncoders.from_paths(str(tiny_encoder_dir), str(tiny_encoder_dir), numerics="transformers")
    assert a.text_identity != b.text_identity and a.vae_identity == b.vae_identity
    assert text_key("a cat", a.text_identity, 256) != text_key("a cat", b.text_identity, 256)
    assert a.text_identity == HFEncoders.from_paths(str(tiny_encoder_dir), str(tiny_encoder_dir)).text_identity
    assert ModelConfig().text_encoder_numerics == "comfyui"
    assert any("model.text_encoder_numerics" in e for e in ModelConfig(text_encoder_numerics="hf").errors())
    with pytest.raises(ModelError, match="model.text_encoder_numerics: unknown setting"):
        HFEncoders.from_paths(str(tiny_encoder_dir), str(tiny_encoder_dir), numerics="hf")
