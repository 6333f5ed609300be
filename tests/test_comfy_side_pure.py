"""The ComfyUI-side library code that runs without ComfyUI: workflow conversion, the job history of the live chart,
dataset helpers, output-name confinement, the pack's import-light entry point and its JavaScript syntax.
(The nodes themselves, against a real ComfyUI: tests/comfy/.)"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lumina2_train.comfyui import jobs as comfy_jobs
from lumina2_train.comfyui.data import folder_fingerprint, match_captions, write_image_set
from lumina2_train.comfyui.train import lora_file, resume_folder
from lumina2_train.comfyui.workflow import WorkflowError, ui_to_api, widget_names
from lumina2_train.errors import ConfigError, DatasetError
from lumina2_train.train import StepInfo

REPO = Path(__file__).resolve().parents[1]
INFO = {
    "Loader": {"input": {"required": {"name": [["a.safetensors", "b.safetensors"], {}]}},
               "input_order": {"required": ["name"]}, "output": ["MODEL"]},
    "Sampler": {"input": {"required": {"model": ["MODEL", {}], "seed": ["INT", {"control_after_generate": True}],
                                       "steps": ["INT", {}], "text": ["STRING", {"forceInput": True}]},
                          "optional": {"note": ["STRING", {}]}},
                "input_order": {"required": ["model", "seed", "steps", "text"], "optional": ["note"]},
                "output": ["LATENT"]},
    "Text": {"input": {"required": {"value": ["STRING", {"multiline": True}]}}, "output": ["STRING"]},
}


def _workflow(mode: int = 0) -> dict:
    return {"nodes": [
        {"id": 1, "type": "Loader", "widgets_values": ["b.safetensors"], "inputs": [], "mode": 0},
        {"id": 2, "type": "Reroute", "inputs": [{"name": "", "link": 1}], "mode": 0},
        {"id": 3, "type": "Sampler", "widgets_values": [7, "fixed", 20, "hello"], "mode": mode,
         "inputs": [{"name": "model", "link": 2}, {"name": "text", "link": 3}]},
        {"id": 4, "type": "Text", "widgets_values": ["a prompt"], "mode": 0},
        {"id": 5, "type": "MarkdownNote", "widgets_values": ["# notes"], "mode": 0}],
        "links": [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 3, 0, "MODEL"], [3, 4, 0, 3, 1, "STRING"]]}


def test_ui_workflow_becomes_an_api_prompt():
    assert widget_names(INFO["Sampler"]) == [("seed", 2), ("steps", 1), ("note", 1)]
    legacy = {"input": {"required": {"seed": ["INT", {}], "noise_seed": ["INT", {"control_after_generate": False}],
                                     "n": ["INT", {}]}}}
    assert widget_names(legacy) == [("seed", 2), ("noise_seed", 1), ("n", 1)]  # as the frontend makes them
    prompt = ui_to_api(_workflow(), INFO)
    assert set(prompt) == {"1", "3", "4"}  # no reroute, no note
    assert prompt["1"]["inputs"] == {"name": "b.safetensors"}
    assert prompt["3"]["inputs"] == {"model": ["1", 0], "seed": 7, "steps": 20, "note": "hello", "text": ["4", 0]}
    assert ui_to_api(prompt, INFO) == prompt  # API format passes through


def test_workflow_errors_name_the_problem():
    with pytest.raises(WorkflowError, match="Missing"):
        ui_to_api({"nodes": [{"id": 1, "type": "Missing", "mode": 0}], "links": []}, INFO)
    with pytest.raises(WorkflowError, match="bypassed"):
        ui_to_api(_workflow(mode=4), INFO)
    assert "3" not in ui_to_api(_workflow(mode=2), INFO)  # muted


def test_example_workflows_are_ui_workflows_with_thumbnails():
    files = sorted((REPO / "example_workflows").glob("*.json"))
    assert len(files) >= 2
    for f in files:
        wf = json.loads(f.read_text(encoding="utf-8"))
        assert wf["nodes"] and f.with_suffix(".jpg").is_file()
        train = [n for n in wf["nodes"] if n["type"] == "Lumina2T_TrainLoRA"]
        assert train and all([o["name"] for o in n["outputs"]][-1] == "samples" for n in train)


def test_tiny_workflow_swaps_the_models_in_the_ui_format():
    from lumina2_train.comfyui.e2e import tiny_workflow

    info = {"Lumina2T_TrainLoRA": {"input": {"required": {
        "lora_name": ["STRING", {}], "steps": ["INT", {}], "seed": ["INT", {"control_after_generate": False}],
        "save_every_n_steps": ["INT", {}]}}}}
    wf = {"nodes": [{"id": 2, "type": "CLIPLoader", "widgets_values": ["big.safetensors", "lumina2", "default"],
                     "properties": {"models": [{"name": "big.safetensors"}]}},
                    {"id": 8, "type": "Lumina2T_TrainLoRA", "widgets_values": ["mine", 1000, 42, 250]}], "links": []}
    models = {"diffusion_model": "d.safetensors", "text_encoder": "tiny.safetensors", "vae": "v.safetensors"}
    out = tiny_workflow(wf, info, models, steps=3)
    assert out["nodes"][0]["type"] == "Lumina2T_LoadTinyCLIP" and out["nodes"][0]["widgets_values"] == [
        "tiny.safetensors"] and "models" not in out["nodes"][0]["properties"]
    assert out["nodes"][1]["widgets_values"] == ["e2e/lumina2_tiny", 3, 42, 2]
    assert wf["nodes"][1]["widgets_values"] == ["mine", 1000, 42, 250]  # the input is not modified


def test_job_history_records_steps_and_thins_long_runs(monkeypatch):
    monkeypatch.setattr(comfy_jobs, "MAX_POINTS", 10)
    job = comfy_jobs.start_job("42", "prompt-1")
    hooks = comfy_jobs.job_hooks(job)
    hooks.on_status("training", "step 0/30")
    for k in range(1, 31):
        hooks.on_step(StepInfo(k, 30, 1.0 / k, 1e-4, 0.5, 2.0, 1.0, 0, "64x64"))
    hooks.on_checkpoint(Path("/out/run/checkpoints/step_00000030"), 30)
    got = comfy_jobs.history("42")["job"]
    assert got["prompt_id"] == "prompt-1" and got["status"] == "training" and len(got["steps"]) <= 10
    assert got["steps"][-1]["step"] == 30 and got["checkpoint"].endswith("step_00000030")
    json.dumps(comfy_jobs.history())  # what the route returns is JSON
    assert comfy_jobs.history("nope") == {"job": None}
    for i in range(comfy_jobs.MAX_JOBS + 3):
        comfy_jobs.start_job(f"n{i}", None)
    assert len(comfy_jobs.history()["jobs"]) == comfy_jobs.MAX_JOBS
    assert comfy_jobs.register_routes() is False  # no ComfyUI server in this process


def test_step_payload_has_what_the_chart_draws():
    """StepInfo.as_dict() is the lumina2t.step payload: web/js/chart_core.js reads these keys."""
    d = StepInfo(3, 10, 0.5, 1e-4, 0.25, 2.0, 3.5, 0, "64x64").as_dict()
    assert {"step", "total_steps", "loss", "lr", "sigma", "samples_per_s", "eta_s", "memory_gib", "status"} <= set(d)
    assert d["grad_norm"] is None and d["status"] == "training"  # NaN -> null: the payload is strict JSON
    json.loads(json.dumps(d, allow_nan=False))


def test_stop_status_names_the_checkpoint_or_the_error():
    status, detail = comfy_jobs.stop_status(KeyboardInterrupt(), "/out/run/checkpoints/step_00000004", "run")
    assert status == "cancelled" and "step_00000004" in detail and "set resume_from to 'run'" in detail

    class InterruptProcessingException(Exception):  # ComfyUI's, by name
        pass

    assert comfy_jobs.stop_status(InterruptProcessingException(), None, "run") == (
        "cancelled", "no checkpoint (stopped before the first step)")
    status, detail = comfy_jobs.stop_status(ConfigError("train.lr: must be > 0 (got -1). Set a positive lr"), None,
                                            "run")
    assert status == "failed" and detail.startswith("ConfigError: ") and "train.lr: must be > 0 (got -1)" in detail
    status, detail = comfy_jobs.stop_status(RuntimeError("boom\n" + "x\n" * 50), "/ck", "run")
    assert detail.count("\n") <= 4 and detail.endswith("resumable checkpoint: /ck")


def test_reporting_stop_sends_the_status_and_reraises(tmp_path):
    job, sent = comfy_jobs.start_job("77", "p"), []
    hooks = comfy_jobs.job_hooks(job)
    hooks.on_status = lambda status, detail: (sent.append(status), comfy_jobs.finish_job(job, status, detail))
    hooks.on_checkpoint(tmp_path / "lora" / "checkpoints" / "step_00000002", 2)
    with pytest.raises(KeyboardInterrupt), comfy_jobs.reporting_stop(hooks, job, tmp_path / "lora", tmp_path):
        raise KeyboardInterrupt
    assert sent == ["cancelled"] and "set resume_from to 'lora'" in comfy_jobs.history("77")["job"]["detail"]


@pytest.mark.skipif(shutil.which("node") is None, reason="no node.js to run tests/js")
def test_chart_helpers_pass_their_node_tests():
    r = subprocess.run(["node", "--test", str(REPO / "tests" / "js")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]


def test_captions_match_images():
    assert match_captions(2, ["a", "b"]) == ["a", "b"]
    assert match_captions(3, ["x\ny\n\nz"]) == ["x", "y", "z"]
    assert match_captions(2, ["same"]) == ["same", "same"]
    with pytest.raises(DatasetError, match="2 lines for 3 images"):
        match_captions(3, ["x\ny"])
    with pytest.raises(DatasetError, match="2 captions for 3 images"):
        match_captions(3, ["a", "b"])


def test_image_sets_are_content_addressed(tmp_path):
    images = [torch.zeros(2, 16, 16, 3), torch.ones(1, 16, 24, 3)]
    a = write_image_set(images, ["one\ntwo\nthree"], tmp_path)
    assert sorted(p.name for p in a.iterdir()) == [".complete", "00000.png", "00000.txt", "00001.png", "00001.txt",
                                                   "00002.png", "00002.txt"]
    assert (a / "00002.txt").read_text() == "three\n"
    assert write_image_set(images, ["one\ntwo\nthree"], tmp_path) == a
    assert write_image_set(images, ["one\ntwo\nfour"], tmp_path) != a
    with pytest.raises(DatasetError, match="IMAGE"):
        write_image_set([torch.zeros(4, 4)], ["x"], tmp_path)


def test_folder_fingerprint_follows_files(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    first = folder_fingerprint(tmp_path)
    assert folder_fingerprint(tmp_path) == first
    (tmp_path / "a.txt").write_text("xy")
    assert folder_fingerprint(tmp_path) != first


def test_output_names_stay_inside_their_folder(tmp_path):
    loras = tmp_path / "loras"
    loras.mkdir()
    assert lora_file(loras, "chars/alice") == loras / "chars" / "alice.safetensors"
    (loras / "mine.safetensors").write_bytes(b"x")
    assert lora_file(loras, "mine.safetensors") == loras / "mine_2.safetensors"  # never overwritten
    for bad in ("../up", "/etc/x", "a/../../b", "", "c:/x"):
        with pytest.raises(ConfigError, match="lora_name"):
            lora_file(loras, bad)
    (loras / "link").symlink_to(tmp_path)
    with pytest.raises(ConfigError, match="outside"):
        lora_file(loras, "link/evil")  # a link inside models/loras that points elsewhere


def test_resume_folder_is_confined_to_the_output_folder(tmp_path):
    ck = tmp_path / "run" / "checkpoints" / "step_00000002"
    ck.mkdir(parents=True)
    (ck / "state.json").write_text("{}")
    assert resume_folder(tmp_path, "run") == str(ck)
    assert resume_folder(tmp_path, str(tmp_path / "run")) == str(ck)
    assert resume_folder(tmp_path, "") == ""
    with pytest.raises(ConfigError, match="resume_from"):
        resume_folder(tmp_path, "../elsewhere")
    with pytest.raises(ConfigError, match="resume_from"):
        resume_folder(tmp_path, "/somewhere/else")


def test_pack_entry_point_is_import_light():
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('pack', {str(REPO / '__init__.py')!r}, "
            f"submodule_search_locations=[{str(REPO)!r}])\n"
            "m = importlib.util.module_from_spec(spec); sys.modules['pack'] = m; spec.loader.exec_module(m)\n"
            "assert m.WEB_DIRECTORY == './web' and callable(m.comfy_entrypoint)\n"
            "bad = [k for k in sys.modules if k.split('.')[0] in ('comfy', 'comfy_api', 'torch', 'pack.nodes')]\n"
            "sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(shutil.which("node") is None, reason="no node.js to check the web/js syntax")
def test_web_scripts_parse():
    for js in sorted((REPO / "web" / "js").glob("*.js")):
        r = subprocess.run(["node", "--check", "--input-type=module"], input=js.read_text(), capture_output=True,
                           text=True)
        assert r.returncode == 0, f"{js.name}: {r.stderr}"


def test_inference_tensors_wrapped_outside_inference_mode_are_not_autograd_safe():
    from lumina2_train.backbones.inference import is_autograd_safe

    with torch.inference_mode():
        w = torch.randn(3, 3)
    restored = torch.nn.Parameter(w, requires_grad=False)  # as ComfyUI's unpatch_model restores a weight
    assert restored.is_inference() and not is_autograd_safe(restored)
    assert is_autograd_safe(torch.randn(3, 3))
