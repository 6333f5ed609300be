"""Z-Image's text side in a real ComfyUI: ComfyUI's Qwen3-4B CLIP, as CLIPLoader builds it, read through
encoders/comfy.py, against the headless Qwen3 path (encoders/qwen3.py) on the same weights and tokenizer.

The file is ComfyUI's Qwen3-4B layout (`model.*` keys, 2560 wide: ComfyUI detects Qwen3-4B by that width) with
three thin layers (tiny/qwen3.py COMFY_TINY_QWEN3, given to the loader as `qwen3_4b_model_config`). Both sides
tokenize with ComfyUI's own Qwen2.5 tokenizer files, so the ids are Qwen's. ComfyUI 0.3.64 has no Qwen3-4B
CLIP, so these tests skip there.
"""

from __future__ import annotations

import pytest
import torch

from lumina2_train import recipe
from lumina2_train.encoders.comfy import ComfyEncoders, clip_family
from lumina2_train.encoders.qwen3 import HFQwen3TextEncoder
from lumina2_train.tiny.qwen3 import comfy_tiny_qwen3_hf_config

CAPTIONS = ("a red cube on a table", "portrait of an old man with a grey beard, studio lighting")


@pytest.fixture(scope="module")
def qwen3(comfy, comfy_qwen3):
    """(ComfyUI's CLIP, the headless encoder) over the same random tiny Qwen3-4B-layout weights."""
    from transformers import AutoTokenizer, Qwen3Model

    clip, sd = comfy_qwen3
    tokenizer_dir = comfy.root / "comfy" / "text_encoders" / "qwen25_tokenizer"
    model = Qwen3Model(comfy_tiny_qwen3_hf_config()).eval()
    missing, unexpected = model.load_state_dict({k.removeprefix("model."): v.float() for k, v in sd.items()},
                                                strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    return clip, HFQwen3TextEncoder(model, tokenizer)


def _inference_conditioning(clip, caption: str) -> torch.Tensor:
    """What ComfyUI's CLIPTextEncode gives a Z-Image prompt at inference (its tokenizer adds the chat template)."""
    with torch.inference_mode():
        cond = clip.encode_from_tokens_scheduled(clip.tokenize(caption))[0]
    feats, extra = cond[0][0], cond[1]
    mask = extra.get("attention_mask")
    if mask is not None:
        feats = feats[mask[0].bool()]
    return feats.float().clone()


def test_comfyuis_qwen3_clip_is_read_as_zimage_and_matches_its_inference_conditioning(qwen3):
    """The cache's features from ComfyUI's CLIP (the templated caption, encoders/comfy.py) are the CONDITIONING
    CLIPTextEncode gives the plain caption at inference: same tokens, same layer, same values."""
    clip, _ = qwen3
    assert clip_family(clip) == recipe.ZIMAGE
    encoders = ComfyEncoders(clip, None)
    assert encoders.text_family == recipe.ZIMAGE
    prompts = [recipe.format_prompt(c, "", recipe.ZIMAGE) for c in CAPTIONS]
    ours = encoders.text_encoder().encode(prompts, 512)
    for caption, feats in zip(CAPTIONS, ours):
        theirs = _inference_conditioning(clip, caption)
        assert feats.shape == theirs.shape and feats.shape[-1] == 2560
        assert torch.allclose(feats, theirs, rtol=0, atol=1e-6), (feats - theirs).abs().max()


def test_headless_qwen3_features_match_comfyuis_within_bf16(qwen3):
    """The headless path (transformers' Qwen3 in fp32 on the bf16 file's values) gives ComfyUI's conditioning to
    float32 rounding: the same token ids (no BOS, the chat template) and hidden_states[-2].

    Measured on ComfyUI 0.33.0 (CPU, where its text encoder computes in fp32): relative gap 3e-7."""
    clip, headless = qwen3
    prompts = [recipe.format_prompt(c, "", recipe.ZIMAGE) for c in CAPTIONS]
    for prompt, caption in zip(prompts, CAPTIONS):
        ids, _ = headless.tokenize([prompt], 512)
        comfy_ids = [t for t, *_ in clip.tokenize(caption)["qwen3_4b"][0]]
        comfy_ids = comfy_ids[:len([i for i in comfy_ids if i != 151643])]  # ComfyUI pads with <|endoftext|>
        assert ids[0].tolist() == comfy_ids
    ours = headless.encode(prompts, 512)
    for caption, feats in zip(CAPTIONS, ours):
        theirs = _inference_conditioning(clip, caption)
        assert feats.shape == theirs.shape
        rel = ((feats - theirs).abs().max() / theirs.abs().max()).item()
        print(f"{caption!r}: relative gap {rel:.2e}")
        assert rel < 1e-5, rel
    other = headless.encode([recipe.format_prompt("a blue ball", "", recipe.ZIMAGE)], 512)[0]
    assert not torch.allclose(other[-4:], ours[0][-4:], atol=1e-3)  # the features carry the caption
