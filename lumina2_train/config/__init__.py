"""The one typed configuration tree (`RunConfig`) used by the nodes and the CLI alike.

Defaults live only in these dataclasses (one module per group of sections). `validate()` reports every problem at once, each naming its dotted field
path. `from_dict()` rejects unknown keys by name; `to_dict()` / `from_dict()` round-trip exactly.
Choice lists are module constants so node widgets, validation and error text share one source.
"""

from .choices import (  # noqa: F401  (re-exported: widgets and validation share these lists)
    ADAPTER_KINDS,
    BASE_COMPUTES,
    BASE_PRECISIONS,
    BUCKET_STEPS,
    CAPTION_POLICIES,
    CAPTION_STRATEGIES,
    CHECKPOINTING,
    CROP_ASPECTS,
    CROP_STYLES,
    DUPLICATE_POLICIES,
    FILE_POLICIES,
    LORA_FORMATS,
    LORA_INITS,
    LOSS_WEIGHTINGS,
    NONFINITE_POLICIES,
    OPTIMIZER_STATES,
    OPTIMIZERS,
    PRECISIONS,
    RESOLUTION_TYPES,
    SAVE_DTYPES,
    SAVED_ACTIVATIONS,
    SCHEDULERS,
    SHIFT_MODES,
    SYSTEM_PROMPTS,
    TARGET_GROUPS,
    TARGET_PRESETS,
    TIMESTEP_SAMPLINGS,
)
from .data import CacheConfig, DataConfig, DatasetConfig
from .model import AdapterConfig, ModelConfig, parse_block_spec
from .outputs import REPORT_TO, HubConfig, SaveConfig, TrackingConfig, ValidationConfig
from .run import RunConfig, from_dict, load_run_config, to_dict
from .train import TrainConfig

__all__ = [
    "REPORT_TO",
    "ADAPTER_KINDS",
    "BASE_PRECISIONS",
    "BUCKET_STEPS",
    "CAPTION_POLICIES",
    "CAPTION_STRATEGIES",
    "CHECKPOINTING",
    "CROP_ASPECTS",
    "CROP_STYLES",
    "DUPLICATE_POLICIES",
    "FILE_POLICIES",
    "LORA_FORMATS",
    "LORA_INITS",
    "LOSS_WEIGHTINGS",
    "NONFINITE_POLICIES",
    "OPTIMIZERS",
    "OPTIMIZER_STATES",
    "PRECISIONS",
    "RESOLUTION_TYPES",
    "SAVE_DTYPES",
    "SCHEDULERS",
    "SHIFT_MODES",
    "SYSTEM_PROMPTS",
    "TARGET_GROUPS",
    "TARGET_PRESETS",
    "TIMESTEP_SAMPLINGS",
    "AdapterConfig",
    "CacheConfig",
    "DataConfig",
    "DatasetConfig",
    "HubConfig",
    "ModelConfig",
    "RunConfig",
    "SaveConfig",
    "TrackingConfig",
    "TrainConfig",
    "ValidationConfig",
    "from_dict",
    "load_run_config",
    "parse_block_spec",
    "to_dict",
]
