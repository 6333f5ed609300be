"""The demo runs the whole pipeline; its config re-runs through `train CONFIG`."""

import json

from safetensors import safe_open

from lumina2_train.cli.main import main


def test_demo_writes_a_native_lora_and_the_two_pngs(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out), "--steps", "4"]) == 0
    lora = out / "run" / "demo_lora.safetensors"
    with safe_open(str(lora), "pt") as f:
        keys = list(f.keys())
        meta = f.metadata()
    assert keys and all(k.startswith("diffusion_model.") for k in keys)
    assert any(".attention.qkv.lora_A.weight" in k for k in keys)
    assert not any(".to_q." in k or ".attn." in k for k in keys)
    assert meta["lumina2t.step"] == "4" and meta["modelspec.architecture"] == "lumina-2/lora"
    assert (out / "before_after.png").stat().st_size > 0 and (out / "loss.png").stat().st_size > 0

    cfg = json.loads((out / "demo_config.json").read_text())
    cfg["train"]["steps"] = 2
    cfg["save"]["output_dir"] = str(tmp_path / "runs2")
    (tmp_path / "again.json").write_text(json.dumps(cfg))
    assert main(["train", str(tmp_path / "again.json")]) == 0
    assert list((tmp_path / "runs2").glob("demo_lora/demo_lora.safetensors"))


def test_train_reports_config_errors_without_loading_anything(tmp_path, caplog):
    (tmp_path / "c.json").write_text(json.dumps({"data": {"datasets": [{"path": "x"}]},
                                                 "train": {"lr": -1}, "model": {"vae": "nope"}}))
    assert main(["train", str(tmp_path / "c.json")]) == 2
    assert "train.lr must be" in caplog.text
