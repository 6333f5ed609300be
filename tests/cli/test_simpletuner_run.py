"""`train --simpletuner`: SimpleTuner's Lumina2 quickstart example (documentation/quickstart/LUMINA2.md) runs end
to end here on tiny local weights, with the key report, the trackers, the model card and the Hub error."""

import importlib.util
import json
import logging

import pytest
from safetensors import safe_open

from lumina2_train.cli.main import main
from lumina2_train.demo import write_demo_dataset
from lumina2_train.tiny import write_tiny_diffusers

# config/config.json and config/lumina2/multidatabackend.json of SimpleTuner's Lumina2 quickstart, verbatim
QUICKSTART_CONFIG = {
    "base_model_precision": "int8-torchao", "checkpointing_steps": 50,
    "data_backend_config": "config/lumina2/multidatabackend.json", "disable_bucket_pruning": True,
    "eval_steps_interval": 50, "evaluation_type": "clip", "flow_schedule_auto_shift": True,
    "gradient_checkpointing": True, "hub_model_id": "lumina2-lora", "learning_rate": 1e-4, "lora_alpha": 16,
    "lora_rank": 16, "lora_type": "standard", "lr_scheduler": "constant", "max_train_steps": 400000,
    "model_family": "lumina2", "model_type": "lora", "num_train_epochs": 0, "optimizer": "adamw_bf16",
    "output_dir": "output/lumina2", "push_checkpoints_to_hub": True, "push_to_hub": True, "quantize_via": "cpu",
    "report_to": "wandb", "seed": 42, "tracker_project_name": "lumina2-training", "tracker_run_name": "lumina2-lora",
    "train_batch_size": 4, "use_ema": True, "vae_batch_size": 1, "validation_disable_unconditional": True,
    "validation_guidance": 4.0, "validation_guidance_rescale": 0.0,
    "validation_negative_prompt": "ugly, cropped, blurry, low-quality, mediocre average",
    "validation_num_inference_steps": 40, "validation_prompt": "A photo-realistic image of a cat",
    "validation_prompt_library": False, "validation_resolution": "1024x1024", "validation_seed": 42,
    "validation_step_interval": 50,
}
QUICKSTART_BACKENDS = [
    {"id": "lumina2-training", "type": "local", "crop": True, "crop_aspect": "square", "crop_style": "center",
     "resolution": 1024, "minimum_image_size": 512, "maximum_image_size": 2048, "target_downsample_size": 1024,
     "resolution_type": "pixel_area", "cache_dir_vae": "cache/vae/lumina2/training",
     "instance_data_dir": "/datasets/training", "caption_strategy": "textfile", "metadata_backend": "discovery"},
    {"id": "text-embeds", "type": "local", "dataset_type": "text_embeds", "default": True,
     "cache_dir": "cache/text/lumina2", "disabled": False, "write_batch_size": 128},
]
# The overrides this test needs, and why (docs/simpletuner.md lists them too):
CONFIG_OVERRIDES = {
    "pretrained_model_name_or_path": "models",  # the quickstart downloads the model; here: tiny local weights
    "base_model_precision": "no_change",  # int8-torchao needs torchao and a GPU
    "max_train_steps": 2, "checkpointing_steps": 1, "validation_step_interval": 1,  # a few steps, every path once
    "validation_resolution": "64x64", "validation_num_inference_steps": 2,  # tiny-model scale
}
BACKEND_OVERRIDES = {"instance_data_dir": "datasets/training",  # the demo images
                     "resolution": 64, "minimum_image_size": 32, "maximum_image_size": 128, "target_downsample_size": 64}


def _layout(root):
    """A SimpleTuner-style working folder: config/, config/lumina2/, models/, datasets/training/."""
    write_tiny_diffusers(root / "models", seed=0)
    write_demo_dataset(root / "datasets" / "training", size_px=64)
    (root / "config" / "lumina2").mkdir(parents=True)
    config = {**QUICKSTART_CONFIG, **CONFIG_OVERRIDES}
    if importlib.util.find_spec("wandb") is None:  # the wandb test in tests/train skips with a reason then
        config["report_to"] = "tensorboard"
    backends = [{**QUICKSTART_BACKENDS[0], **BACKEND_OVERRIDES}, QUICKSTART_BACKENDS[1]]
    (root / "config" / "config.json").write_text(json.dumps(config, indent=2))
    (root / "config" / "lumina2" / "multidatabackend.json").write_text(json.dumps(backends, indent=2))


@pytest.mark.slow
def test_quickstart_example_trains_here_and_reports_every_key(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    _layout(tmp_path)
    monkeypatch.chdir(tmp_path)  # SimpleTuner resolves relative paths against the folder it runs in
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never the real Hub: the push must fail clearly
    for var, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": tmp_path / "wandb",
                       "WANDB_CONFIG_DIR": tmp_path / "wandb_config", "WANDB_CACHE_DIR": tmp_path / "wandb_cache",
                       "WANDB_DATA_DIR": tmp_path / "wandb_data"}.items():
        monkeypatch.setenv(var, str(value))

    assert main(["train", "--simpletuner", "config/config.json"]) == 2  # trained, then the Hub push failed

    log = caplog.text
    assert "SimpleTuner import: " in log
    for line in ("mapped  optimizer = 'adamw_bf16' -> train.optimizer", "mapped  lora_rank = 16 -> adapter.rank",
                 "mapped  use_ema = True -> train.use_ema", "ignored evaluation_type = 'clip'",
                 "mapped  instance_data_dir = 'datasets/training' -> data.datasets[0].path",
                 "ignored write_batch_size = 128"):
        assert line in log, line
    run = tmp_path / "output" / "lumina2" / "lumina2-lora"
    assert "error: hub.model_id 'lumina2-lora': the upload to the Hugging Face Hub failed (HF_HUB_OFFLINE" in log
    assert f"hf upload lumina2-lora {run}" in log
    assert "hub.push_checkpoints: uploading" in log  # the intermediate upload warned once and training went on

    with safe_open(str(run / "lumina2-lora.safetensors"), "pt") as f:
        assert f.metadata()["lumina2t.step"] == "2"
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["train"]["optimizer"], cfg["train"]["use_ema"], cfg["train"]["batch_size"]) == ("adamw_bf16", True, 4)
    assert (cfg["adapter"]["rank"], cfg["validation"]["prompts"]) == (16, ["A photo-realistic image of a cat"])
    assert cfg["data"]["datasets"][0]["crop_aspect"] == "square" and cfg["cache"]["dir"].endswith("vae/lumina2/training")
    assert "base_model: Alpha-VLLM/Lumina-Image-2.0" in (run / "README.md").read_text()
    assert list((run / "checkpoints").iterdir()) and list((run / "samples").glob("step_000002_*.png"))
    assert list((run / "logs").rglob("*.wandb")) or list((run / "logs").rglob("events.out.tfevents.*"))


def test_train_needs_exactly_one_config(tmp_path, caplog):
    assert main(["train"]) == 2
    assert "give either a run config or --simpletuner config.json (got neither)" in caplog.text
    (tmp_path / "a.json").write_text("{}")
    assert main(["train", str(tmp_path / "a.json"), "--simpletuner", str(tmp_path / "a.json")]) == 2
    assert "(got both)" in caplog.text
