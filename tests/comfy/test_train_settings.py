"""The settings nodes that reach the CLI's remaining options: Tracking Settings (tracking.*), Hub Upload Settings
(hub.*), the extra Validation Settings widgets; every config field has a widget or a documented reason; a Train run
feeds the tracker and, offline, fails with HubError only after every local file is written."""

import dataclasses
import importlib.util
import re
from pathlib import Path

import pytest

from lumina2_train.config import HubConfig, TrackingConfig, ValidationConfig
from lumina2_train.demo import write_demo_dataset

pytestmark = pytest.mark.comfy
# config fields that are not widgets, and why (docs/nodes.md says the same)
NOT_WIDGETS = {
    "validation": {"evaluation_type": "set by clip_model: 'clip' when a CLIP folder is given"},
    "tracking": {"log_dir": "a workflow may not choose where files are written: logs go to <run folder>/logs"},
}






@pytest.mark.parametrize(("node_id", "config", "section"), [
    ("Lumina2T_ConfigureValidation", ValidationConfig, "validation"),
    ("Lumina2T_ConfigureTracking", TrackingConfig, "tracking"),
    ("Lumina2T_ConfigureHub", HubConfig, "hub"),
])
def test_every_config_field_has_a_widget_or_a_reason(pack, node_id, config, section):
    widgets = {i.id for i in pack.nodes[node_id].GET_SCHEMA().inputs}
    missing = {f.name for f in dataclasses.fields(config)} - widgets - set(NOT_WIDGETS.get(section, {}))
    assert not missing, f"{section} fields without a widget on {node_id}: {missing}"


def test_settings_nodes_make_their_configs(pack):
    (tracking,) = pack.run("Lumina2T_ConfigureTracking", report_to="tensorboard+wandb", project="p",
                           run_name=" r ", log_every_n_steps=5).args
    assert dataclasses.asdict(tracking) == dataclasses.asdict(TrackingConfig(("tensorboard", "wandb"), "p", "r", 5))
    (hub,) = pack.run("Lumina2T_ConfigureHub", model_id=" me/lora ", push=True, push_checkpoints=False,
                      private=True).args
    assert dataclasses.asdict(hub) == dataclasses.asdict(HubConfig(push=True, model_id="me/lora", private=True))
    with pytest.raises(pack.lib("errors").ConfigError, match="hub.model_id"):
        pack.run("Lumina2T_ConfigureHub", model_id="", push=True, push_checkpoints=False, private=False)
    (v,) = pack.run("Lumina2T_ConfigureValidation", **pack.defaults(
        "Lumina2T_ConfigureValidation", guidance_rescale=0.7, disable_unconditional=True,
        eval_sigmas="0.2, 0.6")).args
    assert (v.guidance_rescale, v.disable_unconditional, v.eval_sigmas) == (0.7, True, (0.2, 0.6))
    with pytest.raises(pack.lib("errors").ConfigError, match="eval_sigmas"):
        pack.run("Lumina2T_ConfigureValidation", **pack.defaults("Lumina2T_ConfigureValidation",
                                                                  eval_sigmas="0.2, high"))
    old = {k: v for k, v in pack.defaults("Lumina2T_ConfigureValidation").items()  # a workflow saved before them
           if k not in ("guidance_rescale", "disable_unconditional", "eval_sigmas")}
    (v,) = pack.run("Lumina2T_ConfigureValidation", **old).args
    assert v.eval_sigmas == ValidationConfig().eval_sigmas


@pytest.fixture(scope="module")
def train_inputs(pack, comfy_clip, comfy_vae, comfy_model):
    write_demo_dataset(pack.input / "shapes_settings", size_px=64)
    dataset = pack.run("Lumina2T_LoadDataset", **pack.defaults("Lumina2T_LoadDataset", folder="shapes_settings",
                                                                  resolution=64, min_size_px=0))
    cache = pack.run("Lumina2T_CacheLatentsText", dataset=dataset[0], clip=comfy_clip, vae=comfy_vae,
                     **pack.defaults("Lumina2T_CacheLatentsText"))[0]
    adapter = pack.run("Lumina2T_ConfigureAdapter", **pack.defaults("Lumina2T_ConfigureAdapter", rank=2,
                                                                      alpha=2.0, blocks="0", refiners=False))[0]
    return pack.defaults("Lumina2T_TrainLoRA", model=comfy_model, cache=cache, adapter=adapter, steps=2, lr=1e-3)


def test_a_missing_tracker_package_fails_before_training(pack, comfy_models, train_inputs):
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed in ComfyUI's Python")
    (tracking,) = pack.run("Lumina2T_ConfigureTracking", report_to="wandb", project="p", run_name="",
                           log_every_n_steps=1).args
    with pytest.raises(pack.lib("errors").OptionalDependencyError, match="pip install wandb"):
        pack.run("Lumina2T_TrainLoRA", unique_id="31", tracking=tracking,
                 **{**train_inputs, "lora_name": "unit/no_wandb"})
    assert not (comfy_models["loras"] / "unit" / "no_wandb.safetensors").exists()


class _Recorder:
    """A tracker standing in for TensorBoard (not installed in ComfyUI's Python here)."""

    def __init__(self):
        self.steps, self.closed = [], False

    def scalars(self, step, values):
        self.steps.append((step, sorted(values)))

    def images(self, step, v):
        pass

    def text(self, step, key, value):
        self.steps.append((step, key))

    def close(self):
        self.closed = True


def test_tracking_and_an_offline_hub_push(pack, comfy_models, train_inputs, monkeypatch):
    trackers = pack.lib("train.trackers")
    recorder = _Recorder()
    monkeypatch.setattr(pack.lib("run"), "check_trackers", lambda cfg: None)  # where prepare() calls it
    monkeypatch.setattr(trackers, "_open", lambda cfg, run_dir: [recorder])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tracking,) = pack.run("Lumina2T_ConfigureTracking", report_to="tensorboard", project="p", run_name="",
                           log_every_n_steps=1).args
    (hub,) = pack.run("Lumina2T_ConfigureHub", model_id="me/tiny-lora", push=True, push_checkpoints=False,
                      private=False).args
    with pytest.raises(pack.lib("errors").HubError, match="hub.model_id 'me/tiny-lora'") as err:
        pack.run("Lumina2T_TrainLoRA", unique_id="32", tracking=tracking, hub=hub,
                 **{**train_inputs, "lora_name": "unit/hubbed"})
    assert (comfy_models["loras"] / "unit" / "hubbed.safetensors").is_file()  # written before the upload failed
    run_dir = Path(re.search(r"complete in (\S+);", str(err.value)).group(1))
    assert (run_dir / "README.md").is_file() and "hf upload me/tiny-lora" in str(err.value)
    assert [s for s, keys in recorder.steps if isinstance(keys, list) and "train/loss" in keys] == [1, 2]
    assert (2, "lora_path") in recorder.steps and recorder.closed
    assert pack.lib("comfyui.jobs").history("32")["job"]["status"] == "done"


def test_cache_node_passes_its_text_batch_size(pack, comfy_clip, comfy_vae):
    write_demo_dataset(pack.input / "shapes_text_batch", size_px=64)
    dataset = pack.run("Lumina2T_LoadDataset", **pack.defaults("Lumina2T_LoadDataset", folder="shapes_text_batch",
                                                                  resolution=64, min_size_px=0))
    one = pack.run("Lumina2T_CacheLatentsText", dataset=dataset[0], clip=comfy_clip, vae=comfy_vae,
                   **pack.defaults("Lumina2T_CacheLatentsText", encode_batch_size=1))[0]
    assert one.config.encode_batch_size == 1 and len(one) > 1
    assert pack.defaults("Lumina2T_CacheLatentsText")["encode_batch_size"] == 4


def test_load_dataset_advanced_widgets_reach_the_scan(pack):
    import shutil

    folder = pack.input / "shapes_advanced"
    write_demo_dataset(folder, size_px=64)
    first = sorted(folder.glob("*.png"))[0]
    (folder / "sub").mkdir()
    shutil.copy(first, folder / "sub" / "copy.png")
    shutil.copy(first.with_suffix(".txt"), folder / "sub" / "copy.txt")
    (folder / "broken.png").write_bytes(b"")
    (folder / "broken.txt").write_text("a broken file")

    def scan(**widgets):
        return pack.run("Lumina2T_LoadDataset", **pack.defaults("Lumina2T_LoadDataset", folder="shapes_advanced",
                                                                  resolution=64, min_size_px=0, **widgets))[0]

    default = scan()
    assert "broken.png" in default.report.as_text() and default.require_usable() is default  # skipped, reported
    assert len(scan(recursive=False)) == len(default) - 1
    with pytest.raises(pack.lib("errors").DatasetError, match="broken.png"):
        scan(bad_image="error").require_usable()
