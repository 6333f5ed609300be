"""The previous release's example workflows (tests/fixtures/previous_release/) on a real ComfyUI with today's pack:
every node id is still registered, every widget a saved workflow stores still lands on the input it was saved
for (a release adds widgets after those), and the workflows validate with the values they were saved with."""

import asyncio
import json
from pathlib import Path

import pytest

from lumina2_train.comfyui.workflow import FRONTEND_ONLY, node_types, ui_to_api, widget_names

pytestmark = pytest.mark.comfy
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "previous_release"
WORKFLOWS = sorted(p for p in FIXTURES.glob("*.json") if "nodes" in json.loads(p.read_text(encoding="utf-8")))
SAVED = {  # what the two workflows were saved with, by input name (at the previous release's widget order)
    "Lumina2T_LoadDataset": {"folder": "lumina2_dataset", "caption_strategy": "textfile", "resolution": 1024,
                             "resolution_type": "pixel_area", "bucket_step_px": 16, "min_size_px": 256,
                             "max_aspect_ratio": 4.0, "mask_strategy": "none"},
    "Lumina2T_CacheLatentsText": {"system_prompt": "superior"},
    "Lumina2T_ConfigureAdapter": {"kind": "lora", "rank": 16, "alpha": 16.0, "blocks": "all"},
    "Lumina2T_TrainLoRA": {"lora_name": "lumina2_lora", "lr": 0.0001, "batch_size": 1, "seed": 42,
                           "save_every_n_steps": 250},
    "Lumina2T_SaveLoRA": {"name": "lumina2_lora_kohya", "format": "kohya", "dtype": "bf16", "destination": "loras"},
}


def test_the_widgets_a_previous_workflow_stores_keep_their_places(pack, object_info):
    """Widget values are stored by position: a widget inserted before an old one shifts every later value of a
    saved workflow onto the wrong input (widgets.json: the previous release's order, read from its nodes)."""
    info, before = object_info, json.loads((FIXTURES / "widgets.json").read_text(encoding="utf-8"))
    assert len(before) == 12
    for node_id, widgets in before.items():
        now = [list(w) for w in widget_names(info[node_id])]
        assert now[: len(widgets)] == widgets, f"{node_id}: today's widgets {now} do not start with {widgets}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_a_previous_workflow_loads_with_its_values_and_validates(pack, comfy, comfy_models, object_info, path):
    workflow = json.loads(path.read_text(encoding="utf-8"))
    assert not node_types(workflow) - set(comfy.nodes.NODE_CLASS_MAPPINGS) - FRONTEND_ONLY
    info = object_info
    prompt = ui_to_api(workflow, info)
    seen = set()
    for node in prompt.values():
        for name, value in SAVED.get(node["class_type"], {}).items():
            assert node["inputs"][name] == value, (node["class_type"], name, node["inputs"])
            seen.add(node["class_type"])
    assert {"Lumina2T_LoadDataset", "Lumina2T_TrainLoRA"} <= seen
    train = next(n for n in prompt.values() if n["class_type"] == "Lumina2T_TrainLoRA")
    assert (train["inputs"]["steps"], train["inputs"]["resume_from"]) == \
        ((2000, "lumina2_lora") if path.stem.startswith("Resume") else (1000, ""))

    from lumina2_train.comfyui.e2e import tiny_prompt

    names = {k: Path(v).name for k, v in comfy_models.items() if k in ("diffusion_model", "text_encoder", "vae")}
    (pack.input / "lumina2_dataset").mkdir(exist_ok=True)
    import execution

    ok, error, _, node_errors = asyncio.run(execution.validate_prompt("old", tiny_prompt(workflow, info, names, 2),
                                                                      None))
    assert ok, (error, node_errors)
