"""The registered nodes' widgets agree with the config declarations (config/settings.py): each widget that sets a
config field has its field's default, range, step and options, except the node-only overrides listed here."""

import pytest

from lumina2_train.config import (
    AdapterConfig,
    CacheConfig,
    DataConfig,
    DatasetConfig,
    HubConfig,
    ModelConfig,
    SaveConfig,
    TrackingConfig,
    TrainConfig,
    ValidationConfig,
)
from lumina2_train.config.settings import widget_spec

pytestmark = pytest.mark.comfy
_SAVE = {"save_format": (SaveConfig, "format"), "save_dtype": (SaveConfig, "dtype"),
         "save_every_n_steps": (SaveConfig, "every_n_steps"), "keep_last": (SaveConfig, "keep_last"),
         "save_ema": (SaveConfig, "save_ema")}
_TRAIN = {n: (TrainConfig, n) for n in ("steps", "lr", "batch_size", "seed")}
# node -> {input id: (config class, field)}: every widget of the node that sets a config field
FIELDS = {
    "Lumina2T_LoadDataset": {"folder": (DatasetConfig, "path"), "seed": (DataConfig, "seed")},
    "Lumina2T_LoadImageDataset": {"seed": (DataConfig, "seed")},
    "Lumina2T_CacheLatentsText": CacheConfig,
    "Lumina2T_ConfigureAdapter": AdapterConfig,
    "Lumina2T_ConfigureValidation": ValidationConfig,
    "Lumina2T_ConfigureTracking": TrackingConfig,
    "Lumina2T_ConfigureHub": HubConfig,
    "Lumina2T_TrainLoRA": {**_TRAIN, "save_every_n_steps": (SaveConfig, "every_n_steps")},
    "Lumina2T_TrainLoRAAdvanced": {**_SAVE, "base_compute": (ModelConfig, "base_compute"),
                                   "variant": (ModelConfig, "variant")},
    "Lumina2T_SaveLoRA": {"format": (SaveConfig, "format"), "dtype": (SaveConfig, "dtype")},
}
EXTRA = {"Lumina2T_LoadDataset": DatasetConfig, "Lumina2T_LoadImageDataset": DatasetConfig,
         "Lumina2T_TrainLoRAAdvanced": TrainConfig}
OVERRIDES = {("Lumina2T_TrainLoRAAdvanced", "save_format"): {"options": ["comfyui", "kohya"]}}
# widgets the nodes write themselves: list settings (a list has no single widget), a file list
OWN = {"prompts", "eval_sigmas", "report_to", "beta1", "beta2", "init_from",  # init_from, training_adapter:
       "training_adapter"}  # models/loras files


def _field(node_id, input_id):
    table = FIELDS[node_id]
    if isinstance(table, type):
        table = {}
        cls = FIELDS[node_id]
    else:
        cls = EXTRA.get(node_id)
    if input_id in table:
        return table[input_id]
    if cls is not None and input_id in cls.__dataclass_fields__:
        return cls, input_id
    return None


def test_every_config_widget_has_its_fields_default_range_and_options(pack, comfy):
    checked = 0
    for node_id in FIELDS:
        info = comfy.nodes.NODE_CLASS_MAPPINGS[node_id].GET_NODE_INFO_V1()
        inputs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        for input_id, (kind, *opts) in inputs.items():
            found = _field(node_id, input_id)
            if found is None or input_id in OWN:
                continue
            cls, name = found
            want = {k: v for k, v in widget_spec(cls, name, **OVERRIDES.get((node_id, input_id), {})).items()
                    if k in ("default", "min", "max", "step", "options")}
            got = {k: v for k, v in (opts[0] if opts else {}).items() if k in want}
            assert (kind, got) == (widget_spec(cls, name)["kind"], want), f"{node_id}.{input_id}"
            checked += 1
    assert checked > 100
