"""The demo runs the whole pipeline and visibly learns; its config re-runs through `train CONFIG`."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from lumina2_train.cli.main import main
from lumina2_train.demo import VALIDATION_PROMPTS, colour_errors


def _saved_samples(run_dir, step):
    """The validation PNGs the run wrote for `step`, as (N, 3, H, W) in [0, 1], in prompt order."""
    paths = [run_dir / "samples" / f"step_{step:06d}_prompt_{i:02d}.png" for i in range(len(VALIDATION_PROMPTS))]
    arrays = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255 for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


@pytest.mark.slow
def test_demo_learns_each_prompts_colours_and_writes_a_native_lora_and_the_pngs(tmp_path):
    """The default demo: every validation prompt's sample ends much closer to its training image's mean colour
    than the pre-trained base's flat colour was (measured by the demo itself, colour_errors.json)."""
    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out)]) == 0
    before = colour_errors(_saved_samples(out / "run", 0), VALIDATION_PROMPTS, out / "dataset")
    after = colour_errors(_saved_samples(out / "run", 600), VALIDATION_PROMPTS, out / "dataset")
    for prompt, b, a in zip(VALIDATION_PROMPTS, before, after):  # measured here, from the saved samples
        assert a < 0.6 * b, (prompt, b, a)
    assert sum(after) < 0.4 * sum(before), (before, after)
    reported = json.loads((out / "colour_errors.json").read_text())  # what the demo printed and wrote
    assert list(reported) == list(VALIDATION_PROMPTS)
    for prompt, b, a in zip(VALIDATION_PROMPTS, before, after):  # the same numbers, up to the PNGs' 8-bit rounding
        assert abs(reported[prompt]["before"] - b) < 1.0 and abs(reported[prompt]["after"] - a) < 1.0, prompt

    lora = out / "run" / "demo_lora.safetensors"
    with safe_open(str(lora), "pt") as f:
        keys = list(f.keys())
        meta = f.metadata()
    assert keys and all(k.startswith("diffusion_model.") for k in keys)
    assert any(".attention.qkv.lora_A.weight" in k for k in keys)
    assert not any(".to_q." in k or ".attn." in k for k in keys)
    assert meta["lumina2t.step"] == "600" and meta["modelspec.architecture"] == "lumina-2/lora"
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
