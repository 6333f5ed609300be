"""Z-Image LoRA files in every layout (files/formats.py, files/lora_names.py): written for a tiny random
ZImageTransformer2DModel, read back to the same ΔW, loaded by diffusers 0.42's own Z-Image loader to the output our
backbone gives with the same LoRA, and other trainers' Z-Image layouts (training adapters under `diffusion_model.`
with `.alpha` keys, kohya `attention_to_q` names) read to what diffusers itself reads from them."""

import logging
import re

import pytest
import torch
from safetensors.torch import load_file

from lumina2_train.adapters import build_adapters
from lumina2_train.backbones.diffusers import DiffusersBackbone
from lumina2_train.backbones.nextdit import ArchConfig
from lumina2_train.config import AdapterConfig
from lumina2_train.errors import FormatError
from lumina2_train.files import consumers, formats
from lumina2_train.tiny import make_tiny_transformer

from builders import velocity_inputs

EVERY_GROUP = ("attention", "ffn", "adaln", "final", "embedders")
BLOCK = r"^(layers|noise_refiner|context_refiner)\.\d+\."


def random_zimage_lora(seed: int):
    """(tiny ZImageTransformer2DModel, our backbone on it, random LoRA adapters on every Linear group)."""
    model = make_tiny_transformer(seed=seed, family="zimage")
    backbone = DiffusersBackbone.from_model(model)
    adapters = build_adapters(backbone, AdapterConfig(rank=4, alpha=8.0, targets=EVERY_GROUP))
    with torch.no_grad():
        for p in adapters.parameters():
            p.normal_(0, 0.05)
    return model, backbone, adapters


@pytest.fixture(scope="module")
def zimage():
    return random_zimage_lora(seed=0)


def _deltas(mods):
    return {n: m.delta_weight() for n, m in mods.items()}


def _diffusers_velocity(transformer, x, sigma, feats):
    """ε − x from diffusers' Z-Image forward (it takes t = 1 − σ and lists of frames, and returns x − ε)."""
    with torch.no_grad():
        out = transformer([xi.unsqueeze(1) for xi in x], 1 - sigma, list(feats), return_dict=False)[0]
    return -torch.stack([o.squeeze(1) for o in out])


def _diffusers_deltas(sd, arch):
    """{native module: ΔW} as diffusers' Z-Image loader reads `sd` (its converter bakes alpha into the pairs)."""
    from diffusers.loaders.lora_pipeline import ZImageLoraLoaderMixin

    conv = ZImageLoraLoaderMixin.lora_state_dict(dict(sd))
    return _deltas(formats.read_lora(conv, arch))


def test_the_zimage_names_of_each_layout(zimage, tmp_path):
    _, backbone, adapters = zimage
    mods = formats.lora_modules(adapters)
    keys = {}
    for fmt in ("comfyui", "kohya", "diffusers"):
        path = formats.save_lora(mods, tmp_path / f"{fmt}.safetensors", fmt=fmt, dtype="fp32", arch=backbone.arch,
                                 metadata=formats.lora_metadata(rank=4, alpha=8.0, step=1))
        keys[fmt] = set(load_file(str(path)))
        md = formats.load_state_dict(path)[1]
        assert (md["lumina2t.family"], md["modelspec.architecture"], md["ss_base_model_version"]) == \
            ("zimage", "z-image/lora", "zimage")
        assert md["modelspec.title"] == "Z-Image LoRA" and "modelspec.implementation" not in md
        assert "lumina2t.zero_filled" not in md  # no zero pairs: diffusers' Z-Image loader does not need them
    assert "diffusion_model.layers.0.attention.qkv.lora_B.weight" in keys["comfyui"]
    assert "diffusion_model.layers.1.adaLN_modulation.0.lora_A.weight" in keys["comfyui"]
    assert len(keys["comfyui"]) == 2 * len(mods)
    assert {"lora_unet_layers_0_adaLN_modulation_0.alpha", "lora_unet_final_layer_linear.lora_up.weight",
            "lora_unet_x_embedder.lora_down.weight"} <= keys["kohya"]
    assert {"transformer.layers.0.attention.to_k.lora_B.weight", "transformer.layers.0.attention.to_out.0.lora_A.weight",
            "transformer.noise_refiner.0.adaLN_modulation.0.lora_A.weight", "transformer.t_embedder.mlp.0.lora_A.weight",
            "transformer.all_x_embedder.2-1.lora_B.weight", "transformer.all_final_layer.2-1.linear.lora_B.weight",
            "transformer.all_final_layer.2-1.adaLN_modulation.1.lora_A.weight",
            "transformer.cap_embedder.1.lora_A.weight"} <= keys["diffusers"]
    assert not any(k.endswith(".alpha") or ".attn." in k or ".qkv." in k for k in keys["diffusers"])


@pytest.mark.parametrize("fmt", ["comfyui", "kohya", "diffusers"])
def test_every_layout_reads_back_to_the_same_deltas(zimage, tmp_path, fmt):
    _, backbone, adapters = zimage
    mods = formats.lora_modules(adapters)
    path = formats.save_lora(mods, tmp_path / "x.safetensors", fmt=fmt, dtype="fp32", arch=backbone.arch)
    assert formats.detect_format(load_file(str(path)).keys()) == fmt
    for arch in (backbone.arch, None):  # with the model, and from the names alone (what convert does)
        back = formats.read_lora(path, arch)
        assert set(back) == set(mods)
        for n, d in _deltas(mods).items():
            torch.testing.assert_close(back[n].delta_weight(), d, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(back[n].delta_weight(), adapters[n].delta_weight(), atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_the_diffusers_file_loads_in_the_zimage_pipeline_and_matches_our_output(tmp_path, caplog):
    """diffusers' ZImagePipeline.load_lora_weights (its loader and PEFT) on our file gives our backbone's output."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

    model, backbone, adapters = random_zimage_lora(seed=1)
    path = formats.save_adapters(adapters, tmp_path / "ours.safetensors", fmt="diffusers", dtype="fp32",
                                 arch=backbone.arch)
    x, sigma, feats = velocity_inputs(2, 5, sigmas=[0.6, 0.3], seed=0)
    with torch.no_grad():
        ours = backbone.velocity(x, sigma, feats, None, adapters.as_dict())
        base = backbone.velocity(x, sigma, feats, None)
    pipe = ZImagePipeline(transformer=model, scheduler=FlowMatchEulerDiscreteScheduler(), vae=None,
                          text_encoder=None, tokenizer=None)
    with caplog.at_level(logging.WARNING):
        pipe.load_lora_weights(str(path))
    assert "unexpected" not in caplog.text.lower()
    assert sum(1 for n, _ in model.named_modules() if n.endswith(".lora_A")) == \
        len(load_file(str(path))) // 2  # every pair became a PEFT module
    theirs = _diffusers_velocity(pipe.transformer, x, sigma, feats)
    assert (ours - base).abs().max() > 0.1  # the LoRA does something
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fmt", ["comfyui", "kohya"])
def test_native_named_files_warn_about_the_pairs_diffusers_skips(zimage, tmp_path, caplog, fmt):
    """The save warning lists exactly the pairs diffusers' own Z-Image converter leaves under names that are no
    module of ZImageTransformer2DModel (it strips the prefix of a native-named file and nothing more)."""
    model, backbone, adapters = zimage
    with caplog.at_level(logging.WARNING, "lumina2_train"):
        path = formats.save_adapters(adapters, tmp_path / f"{fmt}.safetensors", fmt=fmt, dtype="fp32",
                                     arch=backbone.arch)
    from diffusers.loaders.lora_pipeline import ZImageLoraLoaderMixin

    conv = ZImageLoraLoaderMixin.lora_state_dict(str(path))
    modules = {n for n, _ in model.named_modules()}
    lost = {k.removeprefix("transformer.").rsplit(".", 2)[0] for k in conv} - modules
    skips = consumers.ZIMAGE_DIFFUSERS_SKIPS[fmt]
    expected = sorted(n for n in adapters.names if re.sub(BLOCK, "", n).startswith(skips))
    assert len(lost) == len(expected) >= 3
    if fmt == "comfyui":  # kohya's lost names come out of diffusers' underscore splitting (x.embedder, ...)
        assert lost == set(expected)
    kept = {k: v for k, v in conv.items() if k.removeprefix("transformer.").rsplit(".", 2)[0] in modules}
    theirs = formats.read_lora(kept, backbone.arch)  # what diffusers does load is what we trained
    assert set(theirs) == set(adapters.names) - set(expected)
    for n, m in theirs.items():
        torch.testing.assert_close(m.delta_weight(), adapters[n].delta_weight(), atol=1e-6, rtol=1e-5)
    shown = ", ".join(expected[:3]) + (f" and {len(expected) - 3} more" if len(expected) > 3 else "")
    assert f"skips the {shown} pairs of this '{fmt}' Z-Image file" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, "lumina2_train"):
        formats.save_adapters(adapters, tmp_path / "d.safetensors", fmt="diffusers", dtype="fp32", arch=backbone.arch)
    assert not caplog.text  # ComfyUI 0.33 and diffusers both load it: nothing to warn about


def _pair(gen, rows, cols, rank=2):
    return torch.randn(rank, cols, generator=gen), torch.randn(rows, rank, generator=gen)


@pytest.mark.parametrize("prefix", ["diffusion_model.", "transformer.", ""])
def test_training_adapter_style_files_read_with_their_alpha(zimage, prefix):
    """Diffusers names under `diffusion_model.` (the de-distillation training adapters), `transformer.` or no
    prefix, with `.alpha` keys and separate to_q/to_k/to_v downs: read to the ΔW diffusers' loader reads."""
    _, backbone, _ = zimage
    gen = torch.Generator().manual_seed(0)
    sd, expected = {}, {}
    for name, (rows, cols), alpha in [("layers.0.attention.to_q", (96, 96), 1.0), ("layers.0.attention.to_k", (96, 96), 4.0),
                                      ("layers.0.attention.to_v", (96, 96), 2.0),
                                      ("layers.1.attention.to_out.0", (96, 96), 8.0),
                                      ("noise_refiner.0.adaLN_modulation.0", (384, 96), 3.0),
                                      ("all_final_layer.2-1.linear", (64, 96), 2.0)]:
        down, up = _pair(gen, rows, cols)
        sd.update({f"{prefix}{name}.lora_A.weight": down, f"{prefix}{name}.lora_B.weight": up,
                   f"{prefix}{name}.alpha": torch.tensor(alpha)})
        expected[name] = up @ down * (alpha / 2)
    assert formats.detect_format(sd) == "diffusers"
    for arch in (backbone.arch, None):
        mods = formats.read_lora(sd, arch)
        assert set(mods) == {"layers.0.attention.qkv", "layers.1.attention.out", "noise_refiner.0.adaLN_modulation.0",
                             "final_layer.linear"}
        qkv = torch.cat([expected[f"layers.0.attention.{p}"] for p in ("to_q", "to_k", "to_v")])
        torch.testing.assert_close(mods["layers.0.attention.qkv"].delta_weight(), qkv)
        torch.testing.assert_close(mods["layers.1.attention.out"].delta_weight(), expected["layers.1.attention.to_out.0"])
        torch.testing.assert_close(mods["final_layer.linear"].delta_weight(), expected["all_final_layer.2-1.linear"])
        formats.check_fits(mods, backbone)
    # diffusers' converter puts `transformer.` before every key of a file with alpha keys, even a `transformer.`
    # one, so its reading is taken from the same tensors under `diffusion_model.`
    theirs = _diffusers_deltas({"diffusion_model." + k.removeprefix(prefix): v for k, v in sd.items()}, backbone.arch)
    for n, m in formats.read_lora(sd, backbone.arch).items():
        torch.testing.assert_close(m.delta_weight(), theirs[n], atol=1e-6, rtol=1e-5)


def test_kohya_names_in_both_styles_read_like_diffusers_reads_them(zimage):
    """`lora_unet_layers_0_attention_to_q` (split, diffusers' names) and `..._attention_qkv` (native) styles."""
    _, backbone, _ = zimage
    gen = torch.Generator().manual_seed(1)
    split = {}
    for name, rows in [("layers_0_attention_to_q", 96), ("layers_0_attention_to_k", 96),
                       ("layers_0_attention_to_v", 96), ("layers_0_attention_to_out_0", 96),
                       ("context_refiner_0_feed_forward_w2", 96), ("layers_1_adaLN_modulation_0", 384)]:
        cols = 256 if "w2" in name else 96
        down, up = _pair(gen, rows, cols)
        split.update({f"lora_unet_{name}.lora_down.weight": down, f"lora_unet_{name}.lora_up.weight": up,
                      f"lora_unet_{name}.alpha": torch.tensor(1.0)})
    assert formats.detect_format(split) == "kohya"
    mods = formats.read_lora(split)
    assert set(mods) == {"layers.0.attention.qkv", "layers.0.attention.out", "context_refiner.0.feed_forward.w2",
                         "layers.1.adaLN_modulation.0"}
    theirs = _diffusers_deltas(split, backbone.arch)  # diffusers reads this style completely
    assert set(theirs) == set(mods)
    for n, m in mods.items():
        torch.testing.assert_close(m.delta_weight(), theirs[n], atol=1e-6, rtol=1e-5)
    down, up = _pair(gen, 288, 96)
    fused = {"lora_unet_layers_0_attention_qkv.lora_down.weight": down,
             "lora_unet_layers_0_attention_qkv.lora_up.weight": up}
    torch.testing.assert_close(formats.read_lora(fused, backbone.arch)["layers.0.attention.qkv"].delta_weight(), up @ down)


def test_a_file_for_the_other_model_or_mixing_both_is_refused_by_name(zimage, tiny_backbone):
    _, backbone, adapters = zimage
    z_file = formats.diffusers_state_dict(formats.lora_modules(adapters), backbone.arch)
    with pytest.raises(FormatError, match=r"LoRA state dict: this is a Z-Image LoRA \('all_final_layer.*and \d+ more\), "
                                          r"and the model is Lumina-Image-2.0. Give a LoRA made for Lumina-Image-2.0"):
        formats.read_lora(z_file, tiny_backbone.arch)
    native = formats.comfyui_state_dict({"layers.1.adaLN_modulation.0": formats.LoraModule(torch.ones(2, 96),
                                                                                          torch.ones(384, 2))})
    with pytest.raises(FormatError, match=r"this is a Z-Image LoRA \('layers.1.adaLN_modulation.0'\), and the model is "
                                          "Lumina-Image-2.0"):  # native names: only Z-Image's adaLN tells
        formats.read_lora(native, tiny_backbone.arch)
    lumina = formats.comfyui_state_dict({"layers.0.adaLN_modulation.1": formats.LoraModule(torch.ones(2, 96),
                                                                                         torch.ones(384, 2))})
    with pytest.raises(FormatError, match=r"this is a Lumina-Image-2.0 LoRA .*, and the model is Z-Image"):
        formats.read_lora(lumina, backbone.arch)
    zero = torch.zeros(2, 96)
    mixed = {"transformer.layers.0.attn.to_q.lora_A.weight": zero, "transformer.layers.0.attn.to_q.lora_B.weight": zero,
             "transformer.layers.1.attention.to_q.lora_A.weight": zero,
             "transformer.layers.1.attention.to_q.lora_B.weight": zero}
    with pytest.raises(FormatError, match=r"mixes Lumina-Image-2.0 module names \('layers.0.attn.to_q'\) with Z-Image "
                                          r"ones \('layers.1.attention.to_q'\)"):
        formats.read_lora(mixed)
    twice = {"diffusion_model.layers.0.attention.qkv.lora_A.weight": torch.ones(2, 96),
             "diffusion_model.layers.0.attention.qkv.lora_B.weight": torch.ones(288, 2),
             "diffusion_model.layers.0.attention.to_q.lora_A.weight": torch.ones(2, 96),
             "diffusion_model.layers.0.attention.to_q.lora_B.weight": torch.ones(96, 2)}
    with pytest.raises(FormatError, match=r"both hold 'layers.0.attention.qkv'. Keep one of them"):
        formats.read_lora(twice)
    flux = {"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": zero}
    with pytest.raises(FormatError, match=r"unknown LoRA format.*Is this a Lumina-Image-2.0 or Z-Image LoRA"):
        formats.read_lora(flux)
    with pytest.raises(FormatError, match=r"'layers_0_attention_foo' is not an adaptable module of a "
                                          r"Lumina-Image-2.0 or Z-Image NextDiT"):
        formats.read_lora({"lora_unet_layers_0_attention_foo.lora_down.weight": zero,
                           "lora_unet_layers_0_attention_foo.lora_up.weight": zero})


def test_widths_from_shapes_know_zimage(zimage):
    _, backbone, adapters = zimage
    shapes = {n: tuple(m.weight.shape) for n in adapters.names for m in [backbone.linear(n)]}
    arch = consumers.arch_from_shapes(shapes)
    assert arch.family == "zimage" and arch.qkv_split == backbone.arch.qkv_split == (96, 96, 96)
    assert consumers.arch_from_shapes({"layers.0.feed_forward.w1": (10240, 3840)}).family == "zimage"
    assert consumers.arch_from_shapes({"layers.0.feed_forward.w1": (256, 96)}).family == "lumina2"  # cannot tell
    assert consumers.arch_from_shapes({"layers.0.feed_forward.w1": (256, 96)}, "zimage").qkv_split == (96, 96, 96)
    assert ArchConfig().family == "lumina2"
