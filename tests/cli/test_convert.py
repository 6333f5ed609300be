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
