"""The pack's nodes as ComfyUI registers them: schemas, names, tooltips, help pages, widgets covering the configs,
and example workflows that use only registered node types and validate on a real ComfyUI."""

import asyncio
import dataclasses
import json
import re
from pathlib import Path

import pytest

from lumina2_train.comfyui.workflow import FRONTEND_ONLY, node_types
from lumina2_train.config import SaveConfig, TrainConfig

pytestmark = pytest.mark.comfy
REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "example_workflows").glob("*.json"))
EXPECTED = {"Lumina2T_LoadDataset", "Lumina2T_LoadImageDataset", "Lumina2T_CacheLatentsText",
            "Lumina2T_ConfigureAdapter", "Lumina2T_ConfigureValidation", "Lumina2T_TrainLoRA",
            "Lumina2T_TrainLoRAAdvanced", "Lumina2T_SaveLoRA", "Lumina2T_PlotLoss", "Lumina2T_LoadTinyCLIP",
            "Lumina2T_ConfigureTracking", "Lumina2T_ConfigureHub"}


def test_every_node_registers_with_a_valid_schema(pack):
    assert set(pack.nodes) == EXPECTED
    registered = {cls.GET_SCHEMA().node_id for cls in pack.module.nodes.NODES}
    assert registered == EXPECTED and len(pack.module.nodes.NODES) == len(EXPECTED)
    for node_id, cls in pack.nodes.items():
        schema = cls.GET_SCHEMA()  # validates: unique input/output ids
        assert re.fullmatch(r"Lumina2T_[A-Z][A-Za-z]+", node_id)
        assert re.fullmatch(r"Lumina2 Trainer/\d [A-Z][A-Za-z ()]+", schema.category), schema.category
        assert schema.description and schema.display_name, node_id
        info = cls.GET_NODE_INFO_V1()
        assert info["name"] == node_id and info["output"]


def test_every_input_and_output_is_documented(pack):
    for node_id, cls in pack.nodes.items():
        schema = cls.GET_SCHEMA()
        for i in schema.inputs:
            assert i.tooltip and len(i.tooltip) > 10, f"{node_id}.{i.id} has no tooltip"
        for o in schema.outputs:
            assert o.tooltip and o.display_name, f"{node_id} output {o.id} needs a tooltip and a display name"
        assert (REPO / "web" / "docs" / f"{node_id}.md").is_file(), f"no help page web/docs/{node_id}.md"


def test_wire_types_are_ours_or_comfyuis(pack):
    ours = set()
    for cls in pack.nodes.values():
        schema = cls.GET_SCHEMA()
        ours |= {str(x.io_type) for x in [*schema.inputs, *schema.outputs]}
    custom = {t for t in ours if t.startswith("LUMINA2T_")}
    assert custom == {"LUMINA2T_DATASET", "LUMINA2T_CACHE", "LUMINA2T_ADAPTER", "LUMINA2T_VALIDATION",
                      "LUMINA2T_TRACKING", "LUMINA2T_HUB"}
    stock = ours - custom
    assert stock <= {"MODEL", "CLIP", "VAE", "IMAGE", "LORA_MODEL", "LOSS_MAP", "STRING", "INT", "FLOAT", "BOOLEAN",
                     "COMBO"}


def test_advanced_train_node_exposes_every_train_and_save_option(pack):
    schema = pack.nodes["Lumina2T_TrainLoRAAdvanced"].GET_SCHEMA()
    widgets = {i.id for i in schema.inputs}
    options = pack.module.nodes.train_options
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"betas"} | {"beta1", "beta2"}
    assert train_fields <= widgets, f"TrainConfig fields without a widget: {train_fields - widgets}"
    save_fields = {f.name for f in dataclasses.fields(SaveConfig)} - {"output_dir", "name"}
    assert save_fields == set(options.SAVE_WIDGETS.values())
    defaults = {i.id: i.default for i in schema.inputs if hasattr(i, "default") and i.default is not None}
    cfg = options.train_from_widgets({k: v for k, v in defaults.items() if k in train_fields})
    # widget defaults are the config's defaults (compared as dicts: the pack holds its own copy of the library)
    assert dataclasses.asdict(cfg) == dataclasses.asdict(TrainConfig())
    assert dataclasses.asdict(options.save_from_widgets(defaults)) == dataclasses.asdict(SaveConfig())
    # model.base_compute: a widget too, after saved_activations and the save options (older workflows keep the
    # places of their widget values)
    ids = [i.id for i in schema.inputs]
    assert ids.index("save_ema") < ids.index("saved_activations") == ids.index("base_compute") - 1
    # model.variant (Z-Image-Turbo or Base), then train.selective_recompute, the newest widget, last
    assert ids[-2:] == ["variant", "selective_recompute"]
    assert options.model_from_widgets(defaults).variant == "auto"
    assert options.model_from_widgets({**defaults, "variant": "base"}).variant == "base"
    assert options.model_from_widgets(defaults).base_compute == "bf16"
    assert options.model_from_widgets({**defaults, "base_compute": "fp8"}).base_compute == "fp8"
    train_widgets = {k: v for k, v in defaults.items() if k in train_fields}
    assert options.train_from_widgets({**train_widgets, "base_compute": "fp8"}) == cfg


def test_seeds_have_no_control_widget_and_the_train_nodes_output_the_samples_last(pack):
    """The frontend gives any INT named seed a 'control after generate' widget (randomize) unless the input says
    False: a training seed must stay put, and workflows must store one value per seed widget."""
    for node_id, cls in pack.nodes.items():
        for specs in cls.GET_NODE_INFO_V1()["input"].values():
            for name, spec in specs.items():
                if name in ("seed", "noise_seed"):
                    assert spec[1].get("control_after_generate") is False, f"{node_id}.{name}"
    for node_id in ("Lumina2T_TrainLoRA", "Lumina2T_TrainLoRAAdvanced"):
        outputs = pack.nodes[node_id].GET_SCHEMA().outputs
        assert [o.id for o in outputs][:5] == ["trained_model", "lora", "loss", "lora_path", "samples"]
        assert str(outputs[4].io_type) == "IMAGE"


# where each family's example workflow declares its model files (ComfyUI's repackaged repositories)
MODEL_REPOS = {"lumina2": "https://huggingface.co/Comfy-Org/Lumina_Image_2.0_Repackaged/",
               "zimage": "https://huggingface.co/Comfy-Org/z_image_turbo/"}


@pytest.fixture
def zimage_files(comfy, comfy_models):
    """The tiny Z-Image DiT and Qwen3-4B-layout CLIP files (tiny/zimage.py) in the registered model folders, for
    the Z-Image workflow's loaders to list; removed afterwards (2.6 GB). Skips on a ComfyUI without Z-Image."""
    import importlib

    from safetensors.torch import save_file

    from lumina2_train.tiny.comfy_layout import write_comfy_tiny_zimage
    from lumina2_train.tiny.qwen3 import comfy_tiny_qwen3_state_dict
    from lumina2_train.tiny.zimage import COMFY_QWEN3_FILE_NAME

    if not hasattr(importlib.import_module("comfy.supported_models"), "ZImage"):
        pytest.skip("this ComfyUI has no Z-Image (0.3.64)")
    paths = [write_comfy_tiny_zimage(comfy_models["root"], seed=0), comfy_models["root"] / COMFY_QWEN3_FILE_NAME]
    save_file(comfy_tiny_qwen3_state_dict(seed=0), str(paths[1]))
    yield paths
    for path in paths:
        path.unlink()


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_example_workflow_uses_registered_nodes_and_validates(pack, comfy, comfy_models, object_info, path, request):
    from lumina2_train.comfyui.e2e import tiny_model_names, tiny_prompt, workflow_family

    workflow = json.loads(path.read_text(encoding="utf-8"))
    family = workflow_family(workflow)
    assert family == ("zimage" if "Z-Image" in path.stem else "lumina2")
    unknown = node_types(workflow) - set(comfy.nodes.NODE_CLASS_MAPPINGS) - FRONTEND_ONLY
    assert not unknown
    assert path.with_suffix(".jpg").is_file(), f"no thumbnail {path.with_suffix('.jpg').name}"
    for node in workflow["nodes"]:  # model files are declared as ComfyUI's own templates do
        if node["type"] in ("UNETLoader", "CLIPLoader", "VAELoader", "CheckpointLoaderSimple"):
            models = node["properties"]["models"]
            assert models and all(m["url"].startswith(MODEL_REPOS[family]) and m["name"] in node["widgets_values"]
                                  and m["url"].endswith("/" + m["name"]) for m in models)
        if node["type"] == "CLIPLoader":  # ComfyUI loads Gemma2-2B and Z-Image's Qwen3-4B with type lumina2
            assert node["widgets_values"][1] == "lumina2"
    if family == "zimage":
        request.getfixturevalue("zimage_files")
    names = tiny_model_names(family)
    prompt = tiny_prompt(workflow, object_info, names, steps=2)
    assert {n["inputs"].get("unet_name") for n in prompt.values() if n["class_type"] == "UNETLoader"} == {
        names["diffusion_model"]}
    (pack.input / "lumina2_dataset").mkdir(exist_ok=True)
    import execution

    ok, error, _, node_errors = asyncio.run(execution.validate_prompt("test", prompt, None))
    assert ok, (error, node_errors)


def test_bad_inputs_are_refused_when_queued(pack, comfy, comfy_models, object_info):
    """validate_inputs: a missing dataset folder and an unsafe LoRA name fail validation, before anything runs."""
    import execution

    from lumina2_train.comfyui.e2e import tiny_prompt

    train = REPO / "example_workflows" / "Train a LoRA and sample with it.json"  # not WORKFLOWS[-1]: Z-Image sorts last
    workflow = json.loads(train.read_text(encoding="utf-8"))
    names = {k: Path(v).name for k, v in comfy_models.items() if k in ("diffusion_model", "text_encoder", "vae")}
    prompt = tiny_prompt(workflow, object_info, names, steps=2)
    (pack.input / "lumina2_dataset").mkdir(exist_ok=True)
    for node in prompt.values():
        if node["class_type"] == "Lumina2T_LoadDataset":
            node["inputs"]["folder"] = "no_such_folder"
        if node["class_type"] == "Lumina2T_TrainLoRA":
            node["inputs"]["lora_name"] = "../outside"
    ok, _, _, node_errors = asyncio.run(execution.validate_prompt("bad", prompt, None))
    details = json.dumps(node_errors)
    assert not ok and "no_such_folder" in details and "lora_name" in details and "'..'" in details
