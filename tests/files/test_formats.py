"""LoRA files: native key names, bit-exact round trips, other trainers' layouts, diffusers loading."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from lumina2_train.adapters import build_adapters
from lumina2_train.backbones.diffusers import DiffusersBackbone
from lumina2_train.config import TARGET_PRESETS, AdapterConfig
from lumina2_train.errors import FormatError
from lumina2_train.files import formats

from builders import diffusers_velocity, lumina2_pipeline, velocity_inputs


def _random_adapters(backbone, **kw):
    cfg = AdapterConfig(rank=4, alpha=8.0, **kw)
    adapters = build_adapters(backbone, cfg)
    with torch.no_grad():
        for p in adapters.parameters():
            p.normal_(0, 0.02)
    return adapters


def _deltas(mods):
    return {n: m.delta_weight() for n, m in mods.items()}


@pytest.mark.slow
def test_comfyui_file_keys_are_native_and_round_trip_bit_exact(tiny_backbone, tmp_path):
    adapters = _random_adapters(tiny_backbone, targets=TARGET_PRESETS["all"])
    mods = formats.lora_modules(adapters)
    path = formats.save_lora(mods, tmp_path / "x.safetensors", dtype="fp32", arch=tiny_backbone.arch,
                             metadata=formats.lora_metadata(rank=4, alpha=8.0, step=3))
    sd = load_file(str(path))
    assert all(k.startswith("diffusion_model.") for k in sd)
    assert "diffusion_model.layers.0.attention.qkv.lora_A.weight" in sd
    assert not any("to_q" in k or "attn." in k or k.endswith(".alpha") for k in sd)
    assert sd["diffusion_model.layers.0.attention.qkv.lora_B.weight"].shape == (192, 4)  # fused, never split
    back = formats.read_lora(path, tiny_backbone.arch)
    assert set(back) == set(mods)
    for n, m in mods.items():
        assert torch.equal(back[n].down, m.down) and torch.equal(back[n].up, m.up)
        torch.testing.assert_close(back[n].delta_weight(), adapters[n].delta_weight())


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
def test_other_formats_read_back_to_the_same_deltas(tiny_backbone, tmp_path, fmt):
    adapters = _random_adapters(tiny_backbone, targets=("attention", "ffn", "adaln", "final", "embedders"))
    mods = formats.lora_modules(adapters)
    path = formats.save_lora(mods, tmp_path / f"{fmt}.safetensors", fmt=fmt, dtype="fp32", arch=tiny_backbone.arch)
    keys = load_file(str(path)).keys()
    assert formats.detect_format(keys) == fmt
    back = formats.read_lora(path, tiny_backbone.arch)
    assert set(back) == set(mods)
    for n, d in _deltas(mods).items():
        torch.testing.assert_close(back[n].delta_weight(), d, atol=1e-6, rtol=1e-5)


def test_diffusers_split_qkv_with_separate_down_weights_fuses_exactly(tiny_backbone):
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for part, rows in zip(("to_q", "to_k", "to_v"), tiny_backbone.arch.qkv_split):
        sd[f"transformer.layers.0.attn.{part}.lora_A.weight"] = torch.randn(2, 96, generator=gen)
        sd[f"transformer.layers.0.attn.{part}.lora_B.weight"] = torch.randn(rows, 2, generator=gen)
    mod = formats.read_lora(sd, tiny_backbone.arch)["layers.0.attention.qkv"]
    expected = torch.cat([sd[f"transformer.layers.0.attn.{p}.lora_B.weight"] @
                          sd[f"transformer.layers.0.attn.{p}.lora_A.weight"] for p in ("to_q", "to_k", "to_v")])
    torch.testing.assert_close(mod.delta_weight(), expected)


def test_comfy_style_up_down_alpha_and_kohya_alpha_scale(tmp_path):
    down, up = torch.randn(4, 96), torch.randn(192, 4)
    sd = {"diffusion_model.layers.0.attention.qkv.lora_down.weight": down,
          "diffusion_model.layers.0.attention.qkv.lora_up.weight": up,
          "diffusion_model.layers.0.attention.qkv.alpha": torch.tensor(2.0)}
    mod = formats.read_lora(sd)["layers.0.attention.qkv"]
    torch.testing.assert_close(mod.delta_weight(), up @ down * 0.5)
    kohya = {"lora_unet_noise_refiner_1_feed_forward_w2.lora_down.weight": down,
             "lora_unet_noise_refiner_1_feed_forward_w2.lora_up.weight": up,
             "lora_unet_noise_refiner_1_feed_forward_w2.alpha": torch.tensor(8.0)}
    assert list(formats.read_lora(kohya)) == ["noise_refiner.1.feed_forward.w2"]


def test_unknown_format_lists_prefixes_found():
    with pytest.raises(FormatError, match=r"prefixes found \['foo.bar'\]"):
        formats.read_lora({"foo.bar.lora_A.weight": torch.zeros(1)})


def test_truncated_safetensors_and_unsafe_pickle_are_refused(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file({"diffusion_model.x_embedder.lora_A.weight": torch.zeros(4, 64)}, str(path))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(FormatError, match="truncated or corrupt"):
        formats.load_state_dict(path)

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    bad = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, bad)
    with pytest.raises(FormatError, match="refused to load"):
        formats.load_state_dict(bad)


@pytest.mark.parametrize("name, mods, expected", [
    ("shape", {"layers.0.attention.qkv": (2304, 3840)}, r"'layers.0.attention.qkv' is 3840x2304, the model's is 192x96"),
    ("keys", {"layers.7.attention.qkv": (96, 192)}, r"'layers.7.attention.qkv' is not a module of this model"),
])
def test_lora_for_another_model_is_rejected(tiny_backbone, name, mods, expected):
    mods = {k: formats.LoraModule(torch.zeros(4, i), torch.zeros(o, 4)) for k, (i, o) in mods.items()}
    with pytest.raises(FormatError, match=f"does not fit.*{expected}.*trained for another model"):
        formats.check_fits(mods, tiny_backbone)


def _header(obj) -> bytes:
    import json
    import struct

    text = json.dumps(obj).encode()
    return struct.pack("<Q", len(text)) + text


@pytest.mark.parametrize("content", [
    b"",  # empty file
    b"\xff" * 8 + b"{}",  # header length far beyond the file
    _header({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}),  # data missing
    _header({"a": {"dtype": "F32", "shape": [1000000000000], "data_offsets": [0, 4]}}) + b"\0" * 4,  # shape lies
    b"\x08\0\0\0\0\0\0\0not json",
    b"\x80\x04\x95",  # a pickle renamed to .safetensors
], ids=["empty", "huge-header", "truncated-data", "inconsistent-shape", "bad-json", "pickle"])
def test_malformed_safetensors_is_a_clear_error(tmp_path, content):
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    with pytest.raises(FormatError, match=r"x.safetensors: not a readable safetensors file .*download or export"):
        formats.load_state_dict(path)


@pytest.mark.parametrize("suffix", [".pt", ".ckpt", ".bin", ".pth"])
def test_pickles_load_plain_tensors_only_and_never_run_code(tmp_path, suffix):
    good = {"diffusion_model.x_embedder.lora_A.weight": torch.ones(4, 64)}
    torch.save({"state_dict": good}, tmp_path / f"good{suffix}")
    assert torch.equal(formats.load_state_dict(tmp_path / f"good{suffix}")[0][next(iter(good))], torch.ones(4, 64))
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"x": Evil()}, tmp_path / f"evil{suffix}")
    with pytest.raises(FormatError, match="refused to load.*could be unsafe"):
        formats.load_state_dict(tmp_path / f"evil{suffix}")
    assert not marker.exists()


@pytest.mark.slow
def test_our_file_loads_in_diffusers_pipeline_and_matches_training_output(tmp_path):
    """The same native-named file loads through Lumina2Pipeline.load_lora_weights (targets 'all')."""
    from lumina2_train.tiny import NATIVE_WIDTH_DIT, make_tiny_transformer

    model = make_tiny_transformer(0, NATIVE_WIDTH_DIT, std=0.02)
    backbone = DiffusersBackbone.from_model(model)
    adapters = _random_adapters(backbone, targets=TARGET_PRESETS["all"])
    path = formats.save_lora(formats.lora_modules(adapters), tmp_path / "ours.safetensors", dtype="fp32",
                             arch=backbone.arch)
    x, sigma, feats = velocity_inputs(1, 5, sigmas=[0.6], seed=0)
    with torch.no_grad():
        ours = backbone.velocity(x, sigma, feats, None, adapters.as_dict())
    pipe = lumina2_pipeline(model)
    pipe.load_lora_weights(str(path))
    theirs = diffusers_velocity(pipe, x, sigma, feats)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)


def _metadata_delta(sd, md, module_key):
    """ΔW as a tool that trusts the metadata computes it: lora_B @ lora_A · ss_network_alpha / ss_network_dim."""
    up, down = sd[f"{module_key}.lora_B.weight"].float(), sd[f"{module_key}.lora_A.weight"].float()
    return up @ down * (float(md["ss_network_alpha"]) / float(md["ss_network_dim"]))


@pytest.mark.parametrize("fmt", ["comfyui", "diffusers"])
def test_folded_files_say_alpha_equals_rank_and_keep_the_trained_alpha(tiny_backbone, tmp_path, fmt):
    adapters = build_adapters(tiny_backbone, AdapterConfig(rank=4, alpha=16.0, targets=("attention",)))
    with torch.no_grad():
        for p in adapters.parameters():
            p.normal_(0, 0.02)
    path = formats.save_adapters(adapters, tmp_path / "x.safetensors", fmt=fmt, dtype="fp32", arch=tiny_backbone.arch,
                                 metadata=formats.lora_metadata(rank=4, alpha=16.0, step=1))
    sd, md = formats.load_state_dict(path)
    assert (md["ss_network_dim"], md["ss_network_alpha"], md["lumina2t.trained_alpha"]) == ("4", "4.0", "16.0")
    assert md["lumina2t.scale_folded"] == "true" and not any(k.endswith(".alpha") for k in sd)
    key = "diffusion_model.layers.0.attention.out" if fmt == "comfyui" else "transformer.layers.0.attn.to_out.0"
    torch.testing.assert_close(_metadata_delta(sd, md, key), adapters["layers.0.attention.out"].delta_weight())
    fresh = build_adapters(tiny_backbone, AdapterConfig(rank=4, alpha=16.0, targets=("attention",)))
    for name, mod in formats.read_lora(path, tiny_backbone.arch).items():  # what init_from and convert read
        fresh[name].load_tensors(mod.down, mod.up, mod.alpha)
        torch.testing.assert_close(fresh[name].delta_weight(), adapters[name].delta_weight())


def test_kohya_alpha_keys_and_metadata_agree_after_conversion(tmp_path):
    down, up = torch.randn(4, 96), torch.randn(192, 4)
    kohya = {"lora_unet_layers_0_attention_qkv.lora_down.weight": down,
             "lora_unet_layers_0_attention_qkv.lora_up.weight": up,
             "lora_unet_layers_0_attention_qkv.alpha": torch.tensor(16.0)}
    md = formats.lora_metadata(rank=4, alpha=16.0, step=1)
    mods = formats.read_lora(kohya)
    as_kohya = formats.save_lora(mods, tmp_path / "k.safetensors", fmt="kohya", dtype="fp32", metadata=md)
    sd, meta = formats.load_state_dict(as_kohya)
    assert float(sd["lora_unet_layers_0_attention_qkv.alpha"]) == float(meta["ss_network_alpha"]) == 16.0
    assert meta["lumina2t.scale_folded"] == "false"
    as_comfy = formats.save_lora(mods, tmp_path / "c.safetensors", dtype="fp32", metadata=meta)
    sd, meta = formats.load_state_dict(as_comfy)
    assert (meta["ss_network_alpha"], meta["lumina2t.trained_alpha"], meta["lumina2t.scale_folded"]) == \
        ("4.0", "16.0", "true")
    torch.testing.assert_close(_metadata_delta(sd, meta, "diffusion_model.layers.0.attention.qkv"), up @ down * 4)
