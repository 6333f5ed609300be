"""multidatabackend.json entries (and config.json's global dataset keys) mapped to `data.datasets`.

Local image folders become datasets; the text-embeds entry sets the cache folder; other storage and other
dataset types are reported as left out. Sizes follow the entry's resolution_type (pixel, pixel_area, or area
in megapixels). No ComfyUI imports.
"""

from __future__ import annotations

import math
from typing import Any

from ..data.captions import CAPTION_KEYS, PATH_KEYS
from .context import Context
from .ignored import reason

# config.json keys that are defaults for every dataset (SimpleTuner: "the global default")
GLOBAL_DATASET_KEYS = ("resolution", "resolution_type", "minimum_image_size", "maximum_image_size",
                       "target_downsample_size", "caption_strategy", "instance_prompt", "only_instance_prompt",
                       "prepend_instance_prompt", "aspect_bucket_alignment", "cache_dir_vae")
SIZE_KEYS = {"resolution": "resolution", "minimum_image_size": "min_size_px", "maximum_image_size": "max_size_px",
             "target_downsample_size": "target_downsample_px"}
RESOLUTION_TYPES = {"pixel": "shortest_side", "pixel_area": "pixel_area", "area": "pixel_area"}
ENTRY_REASONS = {
    "vae_cache_clear_each_epoch": "crops are drawn once per file at scan time (data.seed), so latents never go stale",
    "crop_aspect_buckets": "buckets follow each image's own aspect ratio",
    "max_upscale_threshold": "images below min_size_px are skipped instead",
    "train_batch_size": "one batch size for the run (train.batch_size)",
    "text_embeds": "one text cache for the run (cache.dir)",
    "image_embeds": "one latent cache for the run (cache.dir)",
    "max_num_samples": "every usable image is trained on",
    "start_epoch": "every dataset trains from the first step", "start_step": "every dataset trains from the first step",
    "end_epoch": "every dataset trains to the last step", "end_step": "every dataset trains to the last step",
    "hash_filenames": "cache entries are always named by hash", "scan_for_errors": "every file is checked on each scan",
    "caption_filter_list": "caption filters are not offered", "timestep_sampling_offset": "σ sampling is per run",
    "default": "only meaningful for text-embeds entries", "write_batch_size": "cache entries are written one by one",
    "metadata_backend": "images are read from the folder (discovery)",
}


class Entry:
    """One image dataset being converted: its report source, index and the DatasetConfig dict it fills."""

    def __init__(self, ctx: Context, index: int, merged: dict[str, Any], own: set[str]):
        self.ctx, self.index, self.merged, self.own, self.ds = ctx, index, merged, own, {}

    def put(self, key: str, field: str, ours: Any, note: str = "") -> None:
        self.ds[field] = ours
        if key in self.own:
            shown = "" if ours == self.merged.get(key) else f" = {ours!r}"
            self.ctx.report.add(self.ctx.source, key, self.merged.get(key), "mapped",
                                target=f"data.datasets[{self.index}].{field}{shown}", note=note)

    def note(self, key: str, status: str, note: str) -> None:
        if key in self.own:
            self.ctx.report.add(self.ctx.source, key, self.merged.get(key), status, note=note)


def _sizes(e: Entry) -> None:
    ctx, rtype = e.ctx, str(e.merged.get("resolution_type", "pixel_area"))
    if rtype not in RESOLUTION_TYPES:
        ctx.problem("resolution_type", f"must be pixel, pixel_area or area (got {rtype!r})", "Choose one")
        return
    if "resolution_type" in e.merged:
        e.put("resolution_type", "resolution_type", RESOLUTION_TYPES[rtype],
              "megapixel sizes are converted to pixels" if rtype == "area" else "")
    for key, field in SIZE_KEYS.items():
        if key not in e.merged or e.merged[key] in (None, ""):
            continue
        number = ctx.as_float(key, e.merged[key])
        if number is None:
            continue
        px = round(math.sqrt(number * 1e6)) if rtype == "area" else int(number)
        note = ""
        if key != "resolution" and rtype != "pixel":
            note = "ours compares the short/long side; SimpleTuner compares the area"
        e.put(key, field, px, note)


def _captions(e: Entry) -> bool:
    """Caption settings; False when the captions cannot be read here (the dataset is left out)."""
    m, ctx = e.merged, e.ctx
    strategy = str(m.get("caption_strategy", "textfile"))
    if ctx.as_bool("only_instance_prompt", m.get("only_instance_prompt", False)):
        e.put("only_instance_prompt", "caption_strategy", "instance", "every caption is instance_prompt")
        strategy = "instanceprompt"
    elif "only_instance_prompt" in m:
        e.note("only_instance_prompt", "used", "off")
    if m.get("prepend_instance_prompt") and ctx.as_bool("prepend_instance_prompt", m["prepend_instance_prompt"]):
        e.note("prepend_instance_prompt", "ignored", "prepending the instance prompt is not offered; write it "
                                                     "into the captions")
    elif "prepend_instance_prompt" in m:
        e.note("prepend_instance_prompt", "used", "off")
    if "instance_prompt" in m:
        e.put("instance_prompt", "instance_prompt", str(m["instance_prompt"]))
    if strategy in ("textfile", "filename"):
        e.put("caption_strategy", "caption_strategy", strategy)
    elif strategy in ("instanceprompt", "instance_prompt"):
        e.put("caption_strategy", "caption_strategy", "instance")
    elif strategy == "parquet":
        return _parquet(e)
    else:
        e.note("caption_strategy", "ignored", f"'{strategy}' captions are not offered; the dataset is left out")
        return False
    return True


def _parquet(e: Entry) -> bool:
    block = e.merged.get("parquet") or {}
    path = str(block.get("path", ""))
    kind = "jsonl" if path.endswith((".jsonl", ".json")) else "csv" if path.endswith(".csv") else ""
    columns_ok = (block.get("filename_column", "file_name") in PATH_KEYS
                  and block.get("caption_column", "caption") in CAPTION_KEYS)
    if not (kind and columns_ok):
        e.note("caption_strategy", "ignored", "parquet files are not read here (convert it to .jsonl with columns "
                                              "file_name and caption); the dataset is left out")
        e.note("parquet", "ignored", "see caption_strategy")
        return False
    e.put("caption_strategy", "caption_strategy", kind, "the parquet block names a JSON-lines/CSV file")
    e.put("parquet", "metadata_file", str(e.ctx.input_path(path)))
    return True


def _crop(e: Entry) -> None:
    m, ctx = e.merged, e.ctx
    crop = ctx.as_bool("crop", m.get("crop", False))
    if not crop:
        e.ds["crop_style"] = "none"
        how = "crop false" if "crop" in m else "crop unset (SimpleTuner's default is false)"
        ctx.report.add(ctx.source, "crop", m.get("crop", "(unset)"), "mapped",
                       target=f"data.datasets[{e.index}].crop_style = 'none'",
                       note=f"{how}: resized to the bucket, not cropped")
        e.note("crop_style", "ignored", "crop is false")
        e.note("crop_aspect", "ignored", "crop is false")
        return
    style = str(m.get("crop_style", "random"))
    if "crop_style" in m:
        e.note("crop", "used", "cropping on; crop_style decides how")
        e.put("crop_style", "crop_style", style if style in ("center", "random") else "center",
              "" if style in ("center", "random") else f"'{style}' crops are not offered; centre crops")
    else:
        e.put("crop", "crop_style", "random", "crop_style unset: SimpleTuner's default is random")
    aspect = str(m.get("crop_aspect", "square"))
    note = {"closest": "the bucket closest to each image's aspect", "random": "random aspect buckets are not "
            "offered; each image keeps its own aspect"}.get(aspect, "")
    e.put("crop_aspect", "crop_aspect", "square" if aspect == "square" else "preserve", note)


def _extras(e: Entry) -> None:
    m, ctx, out = e.merged, e.ctx, e.ctx.out
    if "repeats" in m and (n := ctx.as_int("repeats", m["repeats"])) is not None:
        e.put("repeats", "repeats", n + 1, "SimpleTuner counts extra passes (0 = seen once); ours counts passes")
    for key in ("is_regularisation_data", "is_regularization_data"):
        if key in m and (flag := ctx.as_bool(key, m[key])) is not None:
            e.put(key, "is_regularisation", flag, "a prior-preservation set weighted by loss_weight")
    if "probability" in m:
        same = ctx.as_float("probability", m["probability"]) == 1.0
        e.note("probability", "used" if same else "ignored", "1 = the default weight" if same else
               "per-dataset sampling weights are not offered; use repeats")
    if "maximum_aspect_ratio" in m or "minimum_aspect_ratio" in m:
        hi = ctx.as_float("maximum_aspect_ratio", m.get("maximum_aspect_ratio", 4.0)) or 4.0
        lo = ctx.as_float("minimum_aspect_ratio", m.get("minimum_aspect_ratio", 0.25)) or 0.25
        ratio = max(hi, 1 / lo, 1.0)
        for key in ("maximum_aspect_ratio", "minimum_aspect_ratio"):
            e.put(key, "max_aspect_ratio", ratio, "ours bounds long/short side: max(max, 1/min)")
    if "aspect_bucket_alignment" in m:
        step = ctx.as_int("aspect_bucket_alignment", m["aspect_bucket_alignment"])
        if step in (16, 32, 64):
            e.put("aspect_bucket_alignment", "bucket_step_px", step)
        else:
            e.note("aspect_bucket_alignment", "ignored", "bucket sides are multiples of 16, 32 or 64 here")
    if "cache_dir_vae" in m:
        if "dir" in out.get("cache", {}):
            e.note("cache_dir_vae", "ignored", f"one cache for the run: cache.dir '{out['cache']['dir']}'")
        else:
            out.setdefault("cache", {})["dir"] = str(ctx.output_path(str(m["cache_dir_vae"])))
            if "cache_dir_vae" in e.own:
                ctx.report.add(ctx.source, "cache_dir_vae", m["cache_dir_vae"], "mapped",
                               target=f"cache.dir = {out['cache']['dir']!r}",
                               note="one cache holds the latents and the text")
    if "vae_cache_disable" in m and (off := ctx.as_bool("vae_cache_disable", m["vae_cache_disable"])) is not None:
        out.setdefault("cache", {})["vae_cache_disable"] = off
        ctx.report.add(ctx.source, "vae_cache_disable", m["vae_cache_disable"], "mapped",
                       target=f"cache.vae_cache_disable = {off}", note="for every dataset here")
    _caption_options(e)


def _caption_options(e: Entry) -> None:
    m = e.merged
    shuffle = m.get("caption_shuffle")
    if isinstance(shuffle, dict) and shuffle.get("enable"):
        e.put("caption_shuffle", "shuffle_tags", True, "one shuffle per caption at scan time (count/seed/"
                                                       "split_on are not offered)")
        e.ds["keep_tags"] = int(shuffle.get("position_start", 0))
    elif "caption_shuffle" in m:
        e.note("caption_shuffle", "used", "off")
    if "disable_multiline_split" in m:
        e.note("disable_multiline_split", "used", "captions are always one text here (newlines become spaces)")


HANDLED = {"id", "type", "dataset_type", "disabled", "disable", "instance_data_dir", "caption_strategy",
           "instance_prompt", "only_instance_prompt", "prepend_instance_prompt", "parquet", "resolution",
           "resolution_type", "minimum_image_size", "maximum_image_size", "target_downsample_size", "crop",
           "crop_style", "crop_aspect", "repeats", "is_regularisation_data", "is_regularization_data", "probability",
           "maximum_aspect_ratio", "minimum_aspect_ratio", "aspect_bucket_alignment", "cache_dir_vae",
           "vae_cache_disable", "caption_shuffle", "disable_multiline_split"}


def image_dataset(ctx: Context, index: int, entry: dict[str, Any], defaults: dict[str, Any]) -> dict | None:
    """One local image entry -> a DatasetConfig dict (None when it cannot be used here)."""
    e = Entry(ctx, index, {**defaults, **entry}, set(entry))
    for key in ("id", "type", "dataset_type"):
        e.note(key, "used", "a local image dataset")
    folder = entry.get("instance_data_dir")
    if not folder:
        ctx.problem("instance_data_dir", "is missing", "Give the folder of the images")
        return None
    e.put("instance_data_dir", "path", str(ctx.input_path(str(folder))))
    usable = _captions(e)
    _sizes(e)
    _crop(e)
    _extras(e)
    for key in sorted(set(entry) - HANDLED):
        e.note(key, "ignored", ENTRY_REASONS.get(key) or reason(key))
    return e.ds if usable else None


def text_embeds(ctx: Context, entry: dict[str, Any]) -> None:
    for key, value in entry.items():
        if key in ("id", "type", "dataset_type", "default", "disabled", "disable"):
            ctx.used(key, value, "the text-embeds cache entry")
        elif key == "cache_dir" and "dir" in ctx.out.get("cache", {}):
            ctx.ignored(key, value, f"text features share the run's one cache, cache.dir '{ctx.out['cache']['dir']}'")
        elif key == "cache_dir":
            ctx.set(key, value, "cache.dir", str(ctx.output_path(str(value))), "latents and text together")
        elif key == "text_encoder_batch_size" and (n := ctx.as_int(key, value)) is not None:
            ctx.set(key, value, "cache.encode_batch_size", n)
        else:
            ctx.ignored(key, value, ENTRY_REASONS.get(key) or reason(key))


def left_out(ctx: Context, entry: dict[str, Any], why: str) -> None:
    for key, value in entry.items():
        ctx.ignored(key, value, why)
