"""Model card and Hub uploads: local files first, a clear error without network, never the real Hub."""

import dataclasses
import socket

import pytest

from lumina2_train.config import DataConfig, DatasetConfig, HubConfig, SaveConfig, ValidationConfig
from lumina2_train.errors import HubError
from lumina2_train.publish.hub import hub_hooks, model_card, push_run, write_model_card
from lumina2_train.train import train_lora

from builders import linear_decode


@pytest.fixture(autouse=True)
def _no_real_hub(tmp_path, monkeypatch):
    """Every test talks to a closed localhost port, with its own empty HF home."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def _hub_cfg(cfg, negative="", **hub):
    return dataclasses.replace(
        cfg, hub=HubConfig(**{"push": True, "model_id": "me/shapes-lora", **hub}),
        data=DataConfig(datasets=(DatasetConfig(path="/d", caption_strategy="instance", instance_prompt="sks shape"),)),
        validation=ValidationConfig(prompts=("a red cube",), negative_prompt=negative, width=32, height=32, steps=2))


def _trained(cfg, tiny_backbone, tensor_cache, run_dir, hooks=None):
    return train_lora(cfg, tiny_backbone, tensor_cache, hooks, run_dir=run_dir, decode=linear_decode)


def test_model_card_front_matter_prompts_settings_and_samples(run_config, tmp_path):
    cfg = _hub_cfg(run_config(tmp_path, steps=7), negative="blurry")
    card = model_card(cfg, lora_file="shapes.safetensors", step=7, samples=[("a red cube", "samples/s_00.png")])
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    for line in ("base_model: Alpha-VLLM/Lumina-Image-2.0", "- lora", "- lumina2", "- text-to-image",
                 'instance_prompt: "sks shape"', '- text: "a red cube"', '    url: "samples/s_00.png"'):
        assert line in front.splitlines()
    assert "# shapes-lora" in body and "`sks shape`" in body and "- a red cube" in body
    assert "Negative prompt: blurry" in body and "![a red cube](samples/s_00.png)" in body
    assert "| adapter | lora, rank 4, alpha 4 |" in body and "| learning rate | 0.001, constant schedule" in body
    assert "| steps | 7 of 7 (batch 2 × accumulation 1) |" in body


@pytest.mark.slow
def test_written_card_links_the_final_samples(run_config, tiny_backbone, tensor_cache, tmp_path):
    cfg = _hub_cfg(run_config(tmp_path, steps=1))
    res = _trained(cfg, tiny_backbone, tensor_cache, tmp_path / "run")
    text = write_model_card(cfg, res).read_text()
    assert f"`{res.lora_path.name}`" in text and "![a red cube](samples/step_000001_prompt_00.png)" in text
    assert (tmp_path / "run" / "samples" / "step_000001_prompt_00.png").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "closed-endpoint"])
def test_push_without_network_fails_clearly_after_the_local_files(run_config, tiny_backbone, tensor_cache, tmp_path,
                                                                  monkeypatch, offline):
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = _hub_cfg(run_config(tmp_path, steps=2))
    cfg = dataclasses.replace(cfg, save=dataclasses.replace(cfg.save, every_n_steps=1))
    res = _trained(cfg, tiny_backbone, tensor_cache, tmp_path / "run")
    with pytest.raises(HubError) as err:
        push_run(cfg, res)
    msg = str(err.value)
    assert msg.startswith("hub.model_id 'me/shapes-lora': the upload to the Hugging Face Hub failed (")
    assert ("HF_HUB_OFFLINE is set" if offline else "ConnectError") in msg
    assert f"hf upload me/shapes-lora {tmp_path / 'run'}" in msg
    run = tmp_path / "run"
    assert res.lora_path.is_file() and (run / "README.md").is_file() and (run / "config.json").is_file()
    assert list((run / "checkpoints").iterdir()) and list((run / "loras").glob("*.safetensors"))


class FakeApi:
    def __init__(self, fail: bool = False):
        self.calls, self.fail = [], fail

    def _record(self, name, *args, **kwargs):
        if self.fail:
            raise ConnectionError("no route to host")
        self.calls.append((name, args, kwargs))
        return f"https://hub.invalid/{args[0] if args else kwargs['repo_id']}"

    def create_repo(self, *a, **k):
        return self._record("create_repo", *a, **k)

    def upload_folder(self, *a, **k):
        return self._record("upload_folder", *a, **k)

    def upload_file(self, *a, **k):
        return self._record("upload_file", *a, **k)


@pytest.mark.slow
def test_push_uploads_card_lora_samples_and_an_outside_lora(run_config, tiny_backbone, tensor_cache, tmp_path):
    cfg = _hub_cfg(run_config(tmp_path, steps=1), private=True)
    res = train_lora(cfg, tiny_backbone, tensor_cache, run_dir=tmp_path / "run", decode=linear_decode,
                     lora_path=tmp_path / "comfy_loras" / "shapes.safetensors")
    api = FakeApi()
    assert push_run(cfg, res, api=api) == "https://hub.invalid/me/shapes-lora"
    (c_name, c_args, c_kw), (f_name, _, f_kw), (u_name, _, u_kw) = api.calls
    assert (c_name, c_args, c_kw["private"]) == ("create_repo", ("me/shapes-lora",), True)
    assert f_name == "upload_folder" and f_kw["folder_path"] == str(tmp_path / "run")
    assert {"README.md", "samples/*.png", "config.json"} <= set(f_kw["allow_patterns"])
    assert "checkpoints/**" not in f_kw["allow_patterns"]
    assert (u_name, u_kw["path_in_repo"]) == ("upload_file", "shapes.safetensors")


@pytest.mark.slow
def test_checkpoint_uploads_follow_saves_and_a_failure_never_stops_training(run_config, tiny_backbone, tensor_cache,
                                                                           tmp_path, caplog):
    cfg = _hub_cfg(run_config(tmp_path, steps=3), push_checkpoints=True)
    cfg = dataclasses.replace(cfg, save=SaveConfig(output_dir=str(tmp_path), every_n_steps=1, keep_last=5))
    api = FakeApi()
    _trained(cfg, tiny_backbone, tensor_cache, tmp_path / "a", hub_hooks(cfg, api=api))
    uploaded = [(n, k.get("path_in_repo")) for n, _, k in api.calls]
    assert uploaded == [("create_repo", None), ("upload_folder", "checkpoints/step_00000001"),
                        ("upload_file", "loras/lumina2_lora_step000001.safetensors"),
                        ("upload_folder", "checkpoints/step_00000002"),
                        ("upload_file", "loras/lumina2_lora_step000002.safetensors")]
    res = _trained(cfg, tiny_backbone, tensor_cache, tmp_path / "b", hub_hooks(cfg, api=FakeApi(fail=True)))
    assert res.step == 3 and res.lora_path.is_file()
    assert caplog.text.count("hub.push_checkpoints: uploading") == 1


def test_hub_config_errors_name_the_field():
    assert "hub.model_id is empty" in HubConfig(push=True).errors()[0]
    assert "not a Hub repository name" in HubConfig(model_id="me/a b").errors()[0]
    assert "hub.push_checkpoints needs hub.push" in HubConfig(push_checkpoints=True, model_id="a/b").errors()[0]
    assert HubConfig(push=True, model_id="me/x.y-z_1").errors() == []
