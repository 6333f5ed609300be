"""`convert IN OUT --to ...`: same deltas in every layout, through the same safe readers as training."""

import logging
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lumina2_train.adapters import build_adapters
from lumina2_train.cli.main import main
from lumina2_train.config import AdapterConfig
from lumina2_train.files import formats


@pytest.fixture
def kohya_file(tiny_backbone, tmp_path):
    adapters = build_adapters(tiny_backbone, AdapterConfig(rank=4, alpha=2.0, targets=("attention", "ffn", "adaln")))
    with torch.no_grad():
        for p in adapters.parameters():
            p.normal_(0, 0.05)
    mods = formats.lora_modules(adapters)
    path = formats.save_lora(mods, tmp_path / "kohya.safetensors", fmt="kohya", dtype="fp32", arch=tiny_backbone.arch)
    return path, {n: m.delta_weight() for n, m in mods.items()}


def test_every_layout_round_trips_to_the_same_deltas(kohya_file, tiny_backbone, tmp_path):
    src, deltas = kohya_file
    chain = [("comfyui", "a.safetensors"), ("diffusers", "b.safetensors"), ("kohya", "c.safetensors"),
             ("comfyui", "d.safetensors")]
    for fmt, name in chain:
        assert main(["convert", str(src), str(tmp_path / name), "--to", fmt]) == 0
        sd, meta = formats.load_state_dict(tmp_path / name)
        assert formats.detect_format(sd) == fmt and meta["lumina2t.converted_from"]
        back = formats.read_lora(tmp_path / name, tiny_backbone.arch)  # the tiny model's qkv split (96, 48, 48)
        assert set(back) == set(deltas)
        for n, d in deltas.items():
            torch.testing.assert_close(back[n].delta_weight(), d, atol=1e-6, rtol=1e-5)
        src = tmp_path / name
    with safe_open(str(tmp_path / "b.safetensors"), "pt") as f:
        assert f.get_slice("transformer.layers.0.attn.to_k.lora_B.weight").get_shape() == [48, 4]


def test_unsafe_truncated_and_foreign_inputs_fail_clearly(tmp_path, caplog):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"diffusion_model.x_embedder.lora_A.weight": Evil()}, tmp_path / "evil.ckpt")
    save_file({"diffusion_model.x_embedder.lora_A.weight": torch.zeros(4, 64)}, str(tmp_path / "cut.safetensors"))
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "cut.safetensors").read_bytes()[:-100])
    save_file({"diffusion_model.layers.0.attention.qkv.hada_w1_a": torch.zeros(2, 2)}, str(tmp_path / "loha.safetensors"))
    save_file({"model.diffusion_model.input_blocks.0.weight": torch.zeros(2)}, str(tmp_path / "sd.safetensors"))
    cases = {"evil.ckpt": "refused to load", "cut.safetensors": "truncated or corrupt",
             "loha.safetensors": "holds LoHa/LoKr/DoRA weights", "sd.safetensors": "unknown LoRA format",
             "missing.safetensors": "no such file"}
    for name, expected in cases.items():
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="lumina2_train"):
            assert main(["convert", str(tmp_path / name), str(tmp_path / "out.safetensors")]) == 2
        assert expected in caplog.text, (name, caplog.text)
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


def test_output_is_never_clobbered_by_accident(kohya_file, tmp_path, caplog):
    src, _ = kohya_file
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"precious")
    with caplog.at_level(logging.ERROR, logger="lumina2_train"):
        assert main(["convert", str(src), str(out)]) == 2
        assert main(["convert", str(src), str(src), "--force"]) == 2
        assert main(["convert", str(src), str(tmp_path / "out.pt")]) == 2
    assert "add --force" in caplog.text and "is the input file" in caplog.text and "must be a .safetensors" in caplog.text
    assert out.read_bytes() == b"precious"
    assert main(["convert", str(src), str(out), "--force", "--dtype", "bf16"]) == 0
    assert formats.load_state_dict(out)[0]["diffusion_model.layers.0.attention.qkv.lora_A.weight"].dtype == torch.bfloat16


@pytest.mark.slow
def test_module_entry_point(kohya_file, tmp_path):
    src, _ = kohya_file
    out = subprocess.run([sys.executable, "-m", "lumina2_train", "convert", str(src), str(tmp_path / "o.safetensors"),
                          "--to", "diffusers"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "converted from kohya to diffusers" in out.stderr


# ---------------------------------------------------------------- Z-Image (--family)

@pytest.fixture(scope="module")
def zimage_backbone():
    from lumina2_train.backbones.diffusers import DiffusersBackbone
    from lumina2_train.tiny import make_tiny_transformer

    return DiffusersBackbone.from_model(make_tiny_transformer(seed=0, family="zimage"))


def _zimage_mods(backbone, targets=("attention", "ffn", "adaln", "final", "embedders")):
    adapters = build_adapters(backbone, AdapterConfig(rank=4, alpha=2.0, targets=targets))
    with torch.no_grad():
        for p in adapters.parameters():
            p.normal_(0, 0.05)
    return formats.lora_modules(adapters)


def test_zimage_round_trips_through_every_layout_with_its_family(zimage_backbone, tmp_path, caplog):
    mods = _zimage_mods(zimage_backbone)
    deltas = {n: m.delta_weight() for n, m in mods.items()}
    src = formats.save_lora(mods, tmp_path / "z.safetensors", dtype="fp32", arch=zimage_backbone.arch,
                            metadata=formats.lora_metadata(rank=4, alpha=2.0, step=1))
    for fmt, name in [("diffusers", "a.safetensors"), ("kohya", "b.safetensors"), ("comfyui", "c.safetensors")]:
        with caplog.at_level(logging.INFO, logger="lumina2_train"):
            assert main(["convert", str(src), str(tmp_path / name), "--to", fmt]) == 0
        assert f"to {fmt} (Z-Image)" in caplog.text
        sd, meta = formats.load_state_dict(tmp_path / name)
        assert formats.detect_format(sd) == fmt
        assert (meta["lumina2t.family"], meta["modelspec.architecture"]) == ("zimage", "z-image/lora")
        back = formats.read_lora(tmp_path / name, zimage_backbone.arch)
        assert set(back) == set(deltas)
        for n, d in deltas.items():
            torch.testing.assert_close(back[n].delta_weight(), d, atol=1e-6, rtol=1e-5)
        src = tmp_path / name
    with safe_open(str(tmp_path / "a.safetensors"), "pt") as f:  # no GQA: q, k and v all 96 rows
        assert f.get_slice("transformer.layers.0.attention.to_k.lora_B.weight").get_shape() == [96, 4]
        assert "transformer.all_final_layer.2-1.linear.lora_A.weight" in f.keys()


def test_zimage_family_comes_from_names_or_shapes_when_the_metadata_does_not_say(zimage_backbone, tmp_path):
    """A file of our older writer says `lumina-2/lora` for Z-Image and has no lumina2t.family: its names or
    shapes decide, and the output's metadata is corrected."""
    mods = _zimage_mods(zimage_backbone, targets=("attention",))
    sd = formats.lora_state_dict(mods, "comfyui", zimage_backbone.arch)  # only names both families have
    save_file(sd, str(tmp_path / "old.safetensors"), metadata={"modelspec.architecture": "lumina-2/lora"})
    assert main(["convert", str(tmp_path / "old.safetensors"), str(tmp_path / "d.safetensors"), "--to",
                 "diffusers"]) == 0  # the qkv is 3·96 rows: Z-Image's (Lumina2's has grouped kv heads)
    out, meta = formats.load_state_dict(tmp_path / "d.safetensors")
    assert "transformer.layers.0.attention.to_q.lora_A.weight" in out
    assert (meta["lumina2t.family"], meta["modelspec.architecture"]) == ("zimage", "z-image/lora")


def test_an_undecidable_or_contradicted_family_fails_naming_the_fix(zimage_backbone, tmp_path, caplog):
    ffn = {n: m for n, m in _zimage_mods(zimage_backbone, targets=("ffn",)).items()}
    save_file(formats.lora_state_dict(ffn, "comfyui", zimage_backbone.arch), str(tmp_path / "ffn.safetensors"))
    z_names = formats.lora_state_dict(_zimage_mods(zimage_backbone, targets=("attention",)), "diffusers",
                                      zimage_backbone.arch)
    save_file(z_names, str(tmp_path / "z.safetensors"), metadata={"lumina2t.family": "lumina2"})
    save_file(z_names, str(tmp_path / "z_plain.safetensors"))
    cases = [(["ffn.safetensors", "--to", "diffusers"], "cannot tell whether this LoRA is for Lumina-Image-2.0 or "
              "Z-Image.*Add --family lumina2 or --family zimage"),
             (["z.safetensors", "--to", "kohya"], r"its metadata says Lumina-Image-2.0 \(lumina2t.family\), its "
              "modules are Z-Image's. Add --family lumina2 or --family zimage"),
             (["z_plain.safetensors", "--family", "lumina2"], r"this is a Z-Image LoRA \('context_refiner.0.attention"
              r".to_k'.*and the model is Lumina-Image-2.0. Leave out --family lumina2, or give --family auto")]
    import re

    for argv, expected in cases:
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="lumina2_train"):
            assert main(["convert", str(tmp_path / argv[0]), str(tmp_path / "out.safetensors"), *argv[1:]]) == 2
        assert re.search(expected, caplog.text), (argv, caplog.text)
    assert not (tmp_path / "out.safetensors").exists()
    # the native layouts need no family (the same names in both); --family picks the diffusers names
    assert main(["convert", str(tmp_path / "ffn.safetensors"), str(tmp_path / "k.safetensors"), "--to", "kohya"]) == 0
    assert "lumina2t.family" not in formats.load_state_dict(tmp_path / "k.safetensors")[1]
    for family, key in [("zimage", "feed_forward.w1"), ("lumina2", "feed_forward.linear_1")]:
        out = tmp_path / f"{family}.safetensors"
        assert main(["convert", str(tmp_path / "ffn.safetensors"), str(out), "--to", "diffusers", "--family",
                     family]) == 0
        assert f"transformer.layers.0.{key}.lora_A.weight" in formats.load_state_dict(out)[0]
    assert main(["convert", str(tmp_path / "z.safetensors"), str(tmp_path / "forced.safetensors"), "--family",
                 "zimage"]) == 0  # the user's word settles a contradiction
