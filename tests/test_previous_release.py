"""What the previous release wrote still works (tests/fixtures/previous_release/, never edited): its `demo` run config
loads, validates with the values it was written with, and trains through `train CONFIG`. Its example workflows
are checked on a real ComfyUI in tests/comfy/test_previous_release.py."""

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from lumina2_train.cli.main import main
from lumina2_train.config import load_run_config
from lumina2_train.demo import write_demo_dataset
from lumina2_train.tiny import write_tiny_diffusers

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "previous_release"


def _demo_config(tmp_path: Path) -> Path:
    """The fixture with its placeholders pointing at tiny models and the demo dataset written here."""
    models = write_tiny_diffusers(tmp_path / "models", seed=0)
    dataset = write_demo_dataset(tmp_path / "dataset")
    text = (FIXTURES / "demo_config.json").read_text(encoding="utf-8")
    assert all(p in text for p in ("{tiny}", "{dataset}", "{out}"))
    text = text.replace("{tiny}", str(Path(models["transformer"]).parent)).replace("{dataset}", str(dataset))
    path = tmp_path / "demo_config.json"
    path.write_text(text.replace("{out}", str(tmp_path / "out")), encoding="utf-8")
    return path


@pytest.mark.slow
def test_the_previous_demo_config_loads_validates_and_trains(tmp_path):
    path = _demo_config(tmp_path)
    cfg = load_run_config(path).validate()
    assert (cfg.adapter.kind, cfg.adapter.rank, cfg.adapter.targets) == ("lora", 8, ("attention", "ffn", "adaln"))
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.warmup_steps) == (2e-3, 2, 5)
    assert (cfg.data.datasets[0].resolution, cfg.save.name, cfg.save.format) == (64, "demo_lora", "comfyui")
    raw = json.loads(path.read_text(encoding="utf-8"))
    raw["train"]["steps"], raw["save"]["every_n_steps"], raw["validation"]["prompts"] = 2, 0, []
    path.write_text(json.dumps(raw), encoding="utf-8")
    assert main(["train", str(path)]) == 0
    (lora,) = (tmp_path / "out" / "runs").glob("demo_lora/demo_lora.safetensors")
    with safe_open(str(lora), "pt") as f:
        assert f.metadata()["lumina2t.step"] == "2" and any(k.endswith("qkv.lora_A.weight") for k in f.keys())
