"""The gap between headless Gemma2 features (encoders/hf.py) and ComfyUI's CONDITIONING on the same weights.

Used by tests/comfy/test_encoders.py, and run as a script for the table in docs/recipe.md:

    COMFYUI_PATH=/path/to/ComfyUI python tests/comfy/gemma2_gap.py [layers ...]

(with ComfyUI's Python and pytest importable). Weights are random, written as ComfyUI's text-encoder file
(`model.*` keys + `spiece_model`, the tiny tokenizer's vocabulary of 384), at Gemma2-2B's real widths (2304
wide, FFN 9216, 8 query / 4 kv heads of 256) or the tiny width, in fp16 like gemma_2_2b_fp16.safetensors.
`logit_gain` scales the query weights, hence every attention logit: random weights give logits of about ±3;
soft-capping (tanh(x/50)·50) matters only where logits approach 50.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from lumina2_train.config.choices import TEXT_NUMERICS
from lumina2_train.recipe import SYSTEM_PROMPT_TEXT, format_prompt
from lumina2_train.tiny.comfy_layout import COMFY_GEMMA2_HEAD_DIM, COMFY_TINY_GEMMA2, _gemma2_shapes

FULL_GEMMA2 = dict(vocab_size=COMFY_TINY_GEMMA2["vocab_size"], hidden_size=2304, intermediate_size=9216,
                   num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512)
PROMPTS = (format_prompt("a red circle on a cream background", SYSTEM_PROMPT_TEXT["superior"]),
           format_prompt("portrait of an old man with a grey beard, studio lighting", SYSTEM_PROMPT_TEXT["base"]),
           "")


VARIANTS = ("transformers", "softcap_off", "norms_rounded", "comfyui")


def gemma2_config(layers: int, full_width: bool) -> dict:
    return dict(FULL_GEMMA2 if full_width else COMFY_TINY_GEMMA2, num_hidden_layers=layers)


def write_gemma2_file(path: Path, config: dict, *, dtype: torch.dtype = torch.float16, logit_gain: float = 1.0,
                      seed: int = 0) -> Path:
    """A random Gemma2 of `config` as ComfyUI's text-encoder file. Linear weights ~ N(0, 1/fan_in) (queries ×
    logit_gain), embeddings ~ N(0, 1/width) (×√width at input: unit scale), norm weights ~ N(0, 0.1²)."""
    from safetensors.torch import save_file

    from lumina2_train.tiny.text import tiny_spiece_model

    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in _gemma2_shapes(config, COMFY_GEMMA2_HEAD_DIM).items():
        std = 0.1 if len(shape) == 1 else shape[1] ** -0.5
        t = torch.empty(shape).normal_(0.0, std, generator=gen)
        sd[f"model.{name}"] = (t * logit_gain if name.endswith("q_proj.weight") else t).to(dtype)
    sd["spiece_model"] = torch.frombuffer(bytearray(tiny_spiece_model()), dtype=torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    return path


def comfy_clip(comfy, path: Path, config: dict):
    """ComfyUI's CLIP through CLIPLoader's code path (lumina2), with the Gemma2 shape of `config`."""
    with torch.inference_mode():
        return comfy.sd.load_clip([str(path)], clip_type=comfy.sd.CLIPType.LUMINA2,
                                  model_options={"gemma2_2b_model_config": dict(config)})


def comfy_features(clip, prompts=PROMPTS) -> list[torch.Tensor]:
    """What CLIPTextEncode puts in CONDITIONING for each prompt: (L, D) float32."""
    out = []
    with torch.inference_mode():
        for prompt in prompts:
            cond = clip.encode_from_tokens_scheduled(clip.tokenize(prompt, disable_weights=True))[0][0]
            out.append(cond[0].float().clone())
    return out


def headless_features(path: Path, numerics: str, prompts=PROMPTS) -> list[torch.Tensor]:
    """Our cache's features (the `train` command's loader for ComfyUI's file), fp32 on the CPU. Besides the
    two settings, "softcap_off" / "norms_rounded" apply one of the two changes alone (for the table)."""
    from lumina2_train.encoders import hf

    _, load = hf.text_source(str(path), "", "cpu", torch.float32, numerics if numerics in TEXT_NUMERICS else
                             "transformers")
    text = load()
    if numerics == "softcap_off":
        hf.disable_softcapping(text.model)
    elif numerics == "norms_rounded":
        hf.round_norm_scales(text.model, hf.text_encoder_file_dtype(path))
    return text.encode(list(prompts), 10_000)


def max_attention_logit(path: Path, prompts=PROMPTS) -> float:
    """The largest |q·k·scale| any layer of transformers' Gemma2 computes on `prompts` (before soft-capping)."""
    from transformers import AttentionInterface
    from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward, repeat_kv

    from lumina2_train.encoders import hf

    seen = [0.0]

    def probe(module, query, key, value, attention_mask, **kw):
        logits = query @ repeat_kv(key, module.num_key_value_groups).transpose(2, 3) * kw["scaling"]
        seen[0] = max(seen[0], logits.abs().max().item())
        return eager_attention_forward(module, query, key, value, attention_mask, **kw)

    AttentionInterface.register("lumina2t_probe", probe)
    text = hf.text_source(str(path), "", "cpu", torch.float32, "transformers")[1]()
    text.model.set_attn_implementation("lumina2t_probe")
    text.encode(list(prompts), 10_000)
    return seen[0]


def gap(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> dict[str, float]:
    """Max absolute difference, and that relative to the largest feature magnitude, over all prompts."""
    assert [a.shape for a in ours] == [b.shape for b in theirs], "token counts differ"
    diff = max((a - b).abs().max().item() for a, b in zip(ours, theirs))
    scale = max(b.abs().max().item() for b in theirs)
    return {"max_abs": diff, "rel": diff / scale, "feature_max": scale}


def measure(comfy, folder: Path, layers: int, full_width: bool, logit_gain: float = 1.0) -> dict:
    """Gap of each variant to ComfyUI for one random stack, and the largest attention logit."""
    config = gemma2_config(layers, full_width)
    path = write_gemma2_file(folder / f"gemma2_{layers}_{int(full_width)}_{logit_gain}.safetensors", config,
                             logit_gain=logit_gain)
    theirs = comfy_features(comfy_clip(comfy, path, config))
    row = {n: gap(headless_features(path, n), theirs) for n in VARIANTS}
    row["max_logit"] = max_attention_logit(path)
    path.unlink()
    return row


def main(argv: list[str]) -> None:
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import _import_comfy, comfy_root

    root, why = comfy_root()
    if root is None:
        raise SystemExit(why)
    comfy = _import_comfy(root)
    layers = [int(a) for a in argv] or [3, 6, 12]
    with tempfile.TemporaryDirectory() as tmp:
        print("| width | layers | max logit | " + " | ".join(VARIANTS) + " |")
        for full in (False, True):
            for n in (layers if full else [3]):
                for g in (1.0, 8.0):
                    r = measure(comfy, Path(tmp), n, full, g)
                    cells = " | ".join(f"{r[v]['max_abs']:.1e} ({r[v]['rel']:.1e})" for v in VARIANTS)
                    print(f"| {2304 if full else 32} | {n} | {r['max_logit']:.1f} | {cells} |", flush=True)

if __name__ == "__main__":
    main(sys.argv[1:])
