"""Z-Image's text side headless: our Qwen3 path equals transformers' hidden_states[-2] computed as diffusers'
ZImagePipeline computes it (chat template, no BOS, padding to 512 and the mask), on the tiny Qwen3."""

import json

import pytest
import torch

from lumina2_train import recipe
from lumina2_train.encoders.hf import HFEncoders, prompt_family, text_source
from lumina2_train.encoders.qwen3 import HFQwen3TextEncoder
from lumina2_train.errors import ModelError
from lumina2_train.tiny import TINY_ZIMAGE
from lumina2_train.tiny.qwen3 import make_tiny_qwen3, save_tiny_qwen3, train_tiny_qwen3_tokenizer

CAPTIONS = ("a cat", "a painting of a small house near the river at sunset, oil on canvas", "")


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_qwen3")
    save_tiny_qwen3(root, seed=0)
    return root


@pytest.fixture(scope="module")
def qwen3(qwen3_dir):
    """(text identity, the loaded HFQwen3TextEncoder) of the tiny folder, as HFEncoders.from_paths makes them."""
    identity, load = text_source(str(qwen3_dir / "text_encoder"), str(qwen3_dir / "tokenizer"), "cpu",
                                 torch.float32, "comfyui")
    return identity, load()


def _diffusers_way(model, tokenizer, captions, max_length=512):
    """ZImagePipeline._encode_prompt with the template written out (its tokenizer's chat template gives it)."""
    prompts = [recipe.ZIMAGE_PROMPT_TEMPLATE.format(c) for c in captions]
    inputs = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    mask = inputs.attention_mask.bool()
    with torch.no_grad():
        hidden = model(input_ids=inputs.input_ids, attention_mask=mask, output_hidden_states=True).hidden_states[-2]
    return [hidden[i][mask[i]] for i in range(len(prompts))]


def test_features_equal_transformers_penultimate_layer_with_padding_and_mask(qwen3):
    _, text = qwen3
    assert isinstance(text, HFQwen3TextEncoder) and text.family == recipe.ZIMAGE
    prompts = [recipe.format_prompt(c, "", recipe.ZIMAGE) for c in CAPTIONS]
    batched = text.encode(prompts, 512)
    expected = _diffusers_way(text.model, text.tokenizer, CAPTIONS)
    for ours, ref in zip(batched, expected):
        assert ours.shape == ref.shape and ours.shape[1] == TINY_ZIMAGE["cap_feat_dim"]
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    for prompt, ours in zip(prompts, batched):  # alone, unpadded: padding in a batch changes nothing
        torch.testing.assert_close(text.encode([prompt], 512)[0], ours, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        last = text.model(input_ids=text.tokenize(prompts[:1], 512)[0], output_hidden_states=True).hidden_states
    assert not torch.allclose(last[-1][0], batched[0]) and torch.allclose(last[-2][0], batched[0], atol=1e-5)


def test_tokens_are_the_template_with_no_bos(qwen3):
    _, text = qwen3
    tok = text.tokenizer
    assert tok.bos_token_id is None
    ids, mask = text.tokenize([recipe.format_prompt("a cat", "", recipe.ZIMAGE)], 512)
    names = tok.convert_ids_to_tokens(ids[0].tolist())
    assert names[0] == "<|im_start|>" and names.count("<|im_end|>") == 1 and mask.all()
    assert tok.decode(ids[0].tolist()) == "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n"
    empty = text.tokenize([recipe.dropped_prompt(recipe.ZIMAGE)], 512)[0][0].tolist()
    assert tok.decode(empty) == "<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n"


def test_prompts_are_cut_at_the_official_512_tokens(qwen3):
    _, text = qwen3
    long = recipe.format_prompt("a dog running on the beach " * 200, "", recipe.ZIMAGE)
    full, short = text.encode([long], 4096)[0], text.encode([long], 20)[0]
    assert full.shape[0] == recipe.ZIMAGE_MAX_TOKENS and short.shape[0] == 20
    torch.testing.assert_close(short, full[:20], atol=1e-5, rtol=1e-5)  # causal: a prefix gives a prefix
    torch.testing.assert_close(full, _diffusers_way(text.model, text.tokenizer, ["a dog running on the beach " * 200])[0],
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ModelError, match="has no token"):
        text.encode([""], 512)


def test_folders_give_the_zimage_family_and_their_own_identity(qwen3_dir, tiny_encoder_dir, qwen3):
    identity, _ = qwen3
    assert prompt_family(str(qwen3_dir / "text_encoder"), str(qwen3_dir / "tokenizer")) == recipe.ZIMAGE
    assert prompt_family(str(qwen3_dir)) == recipe.ZIMAGE  # pipeline root with text_encoder/ + tokenizer/
    assert prompt_family(str(tiny_encoder_dir)) == recipe.LUMINA2
    enc = HFEncoders.from_paths(str(qwen3_dir), str(tiny_encoder_dir))
    assert enc.text_family == recipe.ZIMAGE and enc.loads == {"text": 0, "vae": 0}
    assert enc.text_identity == identity
    assert HFEncoders.from_paths(str(tiny_encoder_dir), str(tiny_encoder_dir)).text_family == recipe.LUMINA2


def test_a_causal_lm_folder_loads_the_same_features(qwen3_dir, tiny_encoder_dir, tmp_path, qwen3):
    from transformers import Qwen3ForCausalLM

    _, text = qwen3
    lm = Qwen3ForCausalLM(text.model.config)
    lm.model.load_state_dict(text.model.state_dict())
    lm.config.architectures = ["Qwen3ForCausalLM"]
    lm.save_pretrained(str(tmp_path / "text_encoder"))
    (tmp_path / "tokenizer").symlink_to(qwen3_dir / "tokenizer")
    enc = HFEncoders.from_paths(str(tmp_path), str(tiny_encoder_dir))
    prompt = recipe.format_prompt("a cat", "", recipe.ZIMAGE)
    torch.testing.assert_close(enc.text_encoder().encode([prompt], 512)[0], text.encode([prompt], 512)[0])


def test_from_models_and_bad_folders(qwen3_dir, tiny_encoder_dir, tmp_path):
    from lumina2_train.tiny.vae import make_tiny_vae

    tok = train_tiny_qwen3_tokenizer()
    enc = HFEncoders.from_models(make_tiny_qwen3(0, len(tok)), tok, make_tiny_vae(0))
    assert enc.text_family == recipe.ZIMAGE and isinstance(enc.text_encoder(), HFQwen3TextEncoder)
    bad = tmp_path / "llama"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelError, match=r"model.text_encoder: .*llama.* holds a 'llama' model, not Gemma2 or Qwen3"):
        HFEncoders.from_paths(str(bad), str(tiny_encoder_dir), str(qwen3_dir / "tokenizer"))
    empty = tmp_path / "qwen3_no_weights"
    empty.mkdir()
    (empty / "config.json").write_text((qwen3_dir / "text_encoder" / "config.json").read_text())
    enc = HFEncoders.from_paths(str(empty), str(tiny_encoder_dir), str(qwen3_dir / "tokenizer"))
    with pytest.raises(ModelError, match="model.text_encoder: .*qwen3_no_weights"):
        enc.text_encoder()
    with pytest.raises(ModelError, match="a 'gemma2' model where Z-Image's Qwen3 is expected"):
        from lumina2_train.tiny.text import make_tiny_text_encoder

        HFQwen3TextEncoder(make_tiny_text_encoder(0), tok)
