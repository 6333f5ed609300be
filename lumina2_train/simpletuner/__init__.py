"""Import a SimpleTuner run: config.json + its data_backend_config (multidatabackend.json) -> RunConfig.

`import_simpletuner(path)` returns the RunConfig and a KeyReport saying, for every key read, whether it was
mapped to one of our settings, used by the importer, or ignored and why (docs/simpletuner.md has the table).
Keys absent from the files keep our defaults, except where SimpleTuner's default changes the training
(lora_alpha = rank, crop false). Reads the config files and, to convert num_train_epochs, scans the datasets;
loads no model. No ComfyUI imports.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..errors import ConfigError, Lumina2TrainError
from . import backends, options, outputs
from .context import Context, strip_dashes, substitute
from .ignored import reason
from .lycoris import lycoris_config
from .report import KeyEntry, KeyReport

__all__ = ["KeyEntry", "KeyReport", "import_simpletuner"]

HANDLERS = {**options.HANDLERS, **outputs.HANDLERS, "lycoris_config": lycoris_config}
LATE = (*outputs.LATE, "lycoris_config")  # after the keys they read
SEPARATE = ("data_backend_config", "max_train_steps", "num_train_epochs", *backends.GLOBAL_DATASET_KEYS)


def _read_json(path: Path, what: str, kind: type) -> Any:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file. Give the SimpleTuner {what}") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot be read as JSON ({e}). Fix the {what}") from None
    if not isinstance(data, kind):
        raise ConfigError(f"{path}: the {what} must hold a JSON {'object' if kind is dict else 'list'} "
                          f"(got {type(data).__name__}). Use SimpleTuner's layout")
    return data


def import_simpletuner(config_path: str | Path, *, cwd: str | Path | None = None) -> tuple[RunConfig, KeyReport]:
    """Map a SimpleTuner config.json and its multidatabackend.json to a RunConfig.

    Args:
        config_path: SimpleTuner's config.json (keys with or without the leading '--').
        cwd: the folder relative paths are resolved against, as SimpleTuner does (default: the current one);
            input files are also looked for next to config.json.

    Returns:
        (RunConfig, KeyReport). The RunConfig is not validated yet; `cfg.validate()` names any bad value.

    Raises:
        ConfigError: every problem found (unreadable files, a non-Lumina2 model, remote model ids, bad values).
    """
    path = Path(config_path).resolve()
    problems: list[str] = []
    raw = substitute(strip_dashes(_read_json(path, "config.json", dict)), path.name, problems)
    ctx = Context(raw, base=path.parent, cwd=Path(cwd or os.getcwd()).resolve(), source=path.name)
    ctx.problems += problems
    if "model_family" not in raw:
        ctx.problem("model_family", "is missing", "Set it to 'lumina2'")
    for key, value in raw.items():
        if key not in LATE and key not in SEPARATE:
            HANDLERS.get(key, _ignore)(ctx, key, value)
    _datasets(ctx)
    for key in LATE:
        if key in raw:
            HANDLERS[key](ctx, key, raw[key])
    _run_length(ctx)
    if "pretrained_model_name_or_path" not in raw and "transformer" not in ctx.out.get("model", {}):
        ctx.problem("pretrained_model_name_or_path", f"is not set (SimpleTuner would download {outputs.DEFAULT_BASE})",
                    "Download it first and give the local folder")
    if ctx.problems:
        raise ConfigError(ctx.problems)
    return RunConfig.from_dict(ctx.out), ctx.report


def _ignore(ctx: Context, key: str, value: Any) -> None:
    ctx.ignored(key, value, reason(key))


def _datasets(ctx: Context) -> None:
    key, value = "data_backend_config", ctx.get("data_backend_config")
    if not value:
        ctx.problem(key, "is not set", "Give the multidatabackend.json of the run")
        return
    path = ctx.input_path(str(value))
    entries = _read_json(path, "data_backend_config (multidatabackend.json)", list)
    ctx.used(key, value, f"read {path}")
    defaults = {k: ctx.raw[k] for k in backends.GLOBAL_DATASET_KEYS if k in ctx.raw}
    for k, v in defaults.items():
        target = "cache.dir" if k == "cache_dir_vae" else "data.datasets[*]"
        ctx.report.add(ctx.source, k, v, "mapped", target=target, note="the default of every dataset that does not "
                                                                       "set it")
    datasets, outer = [], ctx.source
    for i, entry in enumerate(entries):
        entry = substitute(entry, f"{path.name}[{i}]", ctx.problems)
        ctx.source = f"{path.name}[{entry.get('id', i) if isinstance(entry, dict) else i}]"
        ds = _entry(ctx, entry, len(datasets), defaults) if isinstance(entry, dict) else None
        if ds is not None:
            datasets.append(ds)
    ctx.source = outer
    ctx.out.setdefault("data", {})["datasets"] = datasets


def _entry(ctx: Context, entry: dict[str, Any], index: int, defaults: dict[str, Any]) -> dict | None:
    kind, storage = entry.get("dataset_type", "image"), entry.get("type", "local")
    if ctx.as_bool("disabled", entry.get("disabled", entry.get("disable", False))):
        backends.left_out(ctx, entry, "the entry is disabled")
    elif kind == "text_embeds":
        backends.text_embeds(ctx, entry)
    elif kind != "image":
        backends.left_out(ctx, entry, f"dataset_type '{kind}' is not trained here; the entry is left out")
    elif storage != "local":
        backends.left_out(ctx, entry, f"type '{storage}': this trainer reads local folders only; copy the images "
                                      "into a folder and use type 'local'")
    else:
        return backends.image_dataset(ctx, index, entry, defaults)
    return None


def _run_length(ctx: Context) -> None:
    """max_train_steps wins when > 0; else num_train_epochs is converted with the datasets' batch count."""
    steps_v, epochs_v = ctx.get("max_train_steps"), ctx.get("num_train_epochs")
    steps = ctx.as_int("max_train_steps", steps_v) if steps_v is not None else 0
    epochs = ctx.as_float("num_train_epochs", epochs_v) if epochs_v is not None else 0
    if steps:
        ctx.set("max_train_steps", steps_v, "train.steps", steps)
        if epochs_v is not None:
            (ctx.ignored if epochs else ctx.used)("num_train_epochs", epochs_v, "max_train_steps decides the length")
        return
    if not epochs:
        for key in ("max_train_steps", "num_train_epochs"):
            if key in ctx.raw:
                ctx.used(key, ctx.raw[key], "both are 0: train.steps keeps its default")
        return
    counted = _steps_per_epoch(ctx)
    if counted is None:
        ctx.ignored("num_train_epochs", epochs_v, "the datasets could not be scanned to count batches; set "
                                                  "max_train_steps instead")
    else:
        batches, images, accum = counted
        ctx.set("num_train_epochs", epochs_v, "train.steps", math.ceil(epochs * batches / accum),
                f"{epochs:g} epochs × {batches} batches of {images} images (with repeats) / {accum} accumulation")
    if steps_v is not None:
        ctx.used("max_train_steps", steps_v, "0: num_train_epochs decides the length")


def _steps_per_epoch(ctx: Context) -> tuple[int, int, int] | None:
    from ..data import scan_dataset

    try:
        cfg = RunConfig.from_dict(ctx.out)
        items = scan_dataset(cfg.data).items
    except Lumina2TrainError:
        return None
    per_bucket: dict[tuple[int, int], int] = {}
    for item in items:
        per_bucket[item.bucket] = per_bucket.get(item.bucket, 0) + item.repeats
    if not per_bucket:
        return None
    batches = sum(math.ceil(n / cfg.train.batch_size) for n in per_bucket.values())
    return batches, sum(per_bucket.values()), cfg.train.grad_accum
