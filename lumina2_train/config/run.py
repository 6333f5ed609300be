"""RunConfig (the whole tree), dict round trips with errors by field path, and TOML/JSON loading."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .choices import nonfinite_errors
from .data import CacheConfig, DataConfig
from .model import AdapterConfig, ModelConfig
from .outputs import HubConfig, SaveConfig, TrackingConfig, ValidationConfig
from .settings import setting
from .train import TrainConfig

try:  # Python 3.11+
    import tomllib
except ImportError:  # Python 3.10 (ComfyUI still supports it)
    import tomli as tomllib

@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    save: SaveConfig = field(default_factory=SaveConfig)
    resume_from: str = setting("", "A run folder or one of its checkpoint folders, written by a previous run; "
                                   "empty = a new run.")
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    hub: HubConfig = field(default_factory=HubConfig)

    def errors(self) -> list[str]:
        """Every problem of the tree, each once: the sections' own checks, then any non-finite float setting."""
        found = (self.data.errors("data") + self.model.errors("model") + self.cache.errors("cache")
                 + self.adapter.errors("adapter") + self.train.errors("train")
                 + self.validation.errors("validation") + self.save.errors("save")
                 + self.tracking.errors("tracking") + self.hub.errors("hub") + self._format_errors()
                 + self._compute_errors())
        found += [e for f in dataclasses.fields(self) for e in nonfinite_errors(getattr(self, f.name), f.name)]
        return list(dict.fromkeys(found))  # a ranged float reports its NaN in both checks, in the same words

    def _compute_errors(self) -> list[str]:
        if self.model.base_compute == "fp8" and self.train.precision != "bf16":
            return [f"model.base_compute 'fp8' computes in bf16 around its fp8 GEMMs, but train.precision is "
                    f"'{self.train.precision}'; set train.precision to 'bf16' or model.base_compute to 'bf16'"]
        return []

    def _format_errors(self) -> list[str]:
        """LoHa, LoKr and DoRA files exist only in the comfyui layout (found now, not when the file is saved)."""
        from ..adapters.kinds import KINDS, kind_of  # here: the adapters package imports config

        if self.adapter.kind not in KINDS:
            return []  # adapter.errors reports the unknown kind
        kind = kind_of(self.adapter)
        if kind.save_formats is not None and self.save.format not in kind.save_formats:
            return [f"save.format '{self.save.format}' cannot hold a {kind.title} adapter (kohya and diffusers files "
                    "hold plain LoRA); set save.format to comfyui"]
        return []

    def validate(self, *, need_data: bool = True) -> RunConfig:
        errs = self.errors()
        if not need_data:
            errs = [e for e in errs if not e.startswith("data.")]
        if errs:
            raise ConfigError(errs)
        return self

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        return from_dict(cls, d)


def to_dict(obj: Any) -> Any:
    """Dataclass tree -> plain JSON-able dict (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    return obj


def from_dict(cls: type, d: Any, at: str = "") -> Any:
    """Plain dict -> dataclass `cls`; unknown keys and wrong types raise ConfigError naming the path."""
    problems: list[str] = []
    value = _convert(cls, d, at, problems)
    if problems:
        raise ConfigError(problems)
    return value


def _convert(tp: Any, value: Any, at: str, problems: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"{at or 'config'} must be a table/object (got {type(value).__name__})")
            return tp()
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        for key in value:
            if key not in names:
                problems.append(f"{_join(at, key)} is not a known setting; known: {', '.join(sorted(names))}")
        kwargs = {k: _convert(hints[k], v, _join(at, k), problems) for k, v in value.items() if k in names}
        return tp(**kwargs)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value] if isinstance(value, str) else value
        if not isinstance(value, (list, tuple)):
            problems.append(f"{at} must be a list (got {type(value).__name__})")
            return ()
        args = typing.get_args(tp)
        item_types = [args[0]] * len(value) if (len(args) == 2 and args[1] is Ellipsis) else list(args)
        if len(item_types) != len(value):
            problems.append(f"{at} must have {len(item_types)} items (got {len(value)})")
            return tuple(value)
        return tuple(_convert(t, v, f"{at}[{i}]", problems) for i, (t, v) in enumerate(zip(item_types, value)))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        problems.append(f"{at} must be {tp.__name__} (got {value!r})")
    return value


def _join(at: str, key: str) -> str:
    return f"{at}.{key}" if at else key


def load_run_config(path: str | Path) -> RunConfig:
    """Read a TOML or JSON run config; relative dataset/model paths resolve against the file's folder."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such config file. Give the path of a .toml or .json run config")
    try:
        raw = tomllib.loads(p.read_text("utf-8")) if p.suffix == ".toml" else json.loads(p.read_text("utf-8"))
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot be parsed ({e}). Fix the syntax") from None
    return RunConfig.from_dict(_resolve_paths(raw, p.parent))


def _resolve_paths(raw: dict, base: Path) -> dict:
    def fix(v: str) -> str:
        return str((base / v).resolve()) if v and not Path(v).is_absolute() else v

    raw = json.loads(json.dumps(raw))
    for ds in raw.get("data", {}).get("datasets", []):
        for k in ("path", "mask_folder"):
            if k in ds:
                ds[k] = fix(ds[k])
    for k in ("transformer", "text_encoder", "tokenizer", "vae"):
        if k in raw.get("model", {}):
            raw["model"][k] = fix(raw["model"][k])
    for k in ("prompt_library", "clip_model"):
        if k in raw.get("validation", {}):
            raw["validation"][k] = fix(raw["validation"][k])
    return raw
