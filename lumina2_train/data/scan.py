"""Scanning dataset folders: every file checked, policies applied, buckets and crops planned.

Never raises for a bad file or folder (the report says what is wrong); never loads a model; never
modifies a user file. `DatasetHandle.require_usable()` is the strict check.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..config import DataConfig, DatasetConfig, to_dict
from ..errors import ConfigError
from .buckets import plan_crop
from .captions import CaptionSource, shuffle_tags
from .files import IMAGE_EXTENSIONS, is_image_name, list_images
from .handle import DataItem, DatasetHandle
from .images import ImageProblem, bytes_fingerprint, probe_image
from .report import DatasetReport, ScanReport, Skipped, bucket_name

log = logging.getLogger(__name__)
CHUNK_FILES = 1024  # files checked per batch of thread-pool work


@dataclass(frozen=True)
class _Context:
    ds: DatasetConfig
    index: int
    seed: int
    root: Path
    captions: CaptionSource
    duplicates: dict[Path, str]  # image -> reason, for images sharing a caption file


def scan_dataset(cfg: DataConfig) -> DatasetHandle:
    """Scan every dataset folder of `cfg` and plan each usable image's bucket and crop. Loads no model.

    Raises:
        ConfigError: `cfg` itself is invalid (every problem, by field path). Bad files and folders do not
            raise: they are in `handle.report`; call `handle.require_usable()` before training.
    """
    errors = cfg.errors("data")
    if errors:
        raise ConfigError(errors)
    items: list[DataItem] = []
    reports: list[DatasetReport] = []
    for index, ds in enumerate(cfg.datasets):
        found, report = _scan_one(ds, index, cfg.seed)
        items += found
        reports.append(report)
        _log_report(report)
    fingerprint = _fingerprint(items, cfg)
    return DatasetHandle(tuple(items), ScanReport(tuple(reports)), fingerprint, cfg)


def _scan_one(ds: DatasetConfig, index: int, seed: int) -> tuple[list[DataItem], DatasetReport]:
    at = f"data.datasets[{index}]"
    root = Path(os.path.abspath(os.path.expanduser(ds.path)))
    problems = []
    if ds.mask_strategy == "folder" and not Path(ds.mask_folder).expanduser().is_dir():
        problems.append(f"{ds.mask_folder}: mask folder does not exist ({at}.mask_folder). Check the path.")
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        problems.append(f"{root}: dataset folder {what} ({at}.path = '{ds.path}'). Check the path.")
        return [], DatasetReport(str(root), 0, (), (), {}, tuple(problems))
    listing = list_images(root, recursive=ds.recursive, bad_image_policy=ds.bad_image)
    if not listing.images:
        where = "in it or its subfolders" if ds.recursive else "directly in it (recursive is off)"
        problems.append(f"{root}: no PNG, JPEG, WebP or BMP image {where} ({listing.ignored} other files). "
                        "Put the images there or fix the path.")
    captions = CaptionSource(ds, root)
    problems += captions.problems
    if captions.problems:  # without a usable metadata file every caption would be 'missing': say it once
        return [], DatasetReport(str(root), len(listing.images), (), listing.skipped, {}, tuple(problems),
                                 listing.ignored)
    ctx = _Context(ds, index, seed, root, captions, _duplicates(listing.images, captions, ds))
    results: list[DataItem | Skipped] = []
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(listing.images), CHUNK_FILES):  # bounded: not one future per file at once
            results += pool.map(lambda p: _check_file(p, ctx), listing.images[start:start + CHUNK_FILES])
    items = [r for r in results if isinstance(r, DataItem)]
    skipped = list(listing.skipped) + [r for r in results if isinstance(r, Skipped)]
    skipped += captions.skipped + _unmatched_metadata(listing.images, ctx)
    skipped.sort(key=lambda s: s.path)
    buckets = Counter(bucket_name(i.bucket) for i in items)
    found = len(listing.images) + sum(1 for s in listing.skipped if is_image_name(Path(s.path)))
    return items, DatasetReport(str(root), found, tuple(i.path for i in items), tuple(skipped),
                                dict(buckets), tuple(problems), listing.ignored)


def _fingerprint(items: list[DataItem], cfg: DataConfig) -> str:
    """json_fingerprint({"items": [asdict(i) ...], "config": ...}), streamed item by item (same digest, without
    holding the whole JSON text of a 100,000-image dataset in memory)."""
    h = hashlib.sha256(b'{"config": ' + _dumps(to_dict(cfg)).encode() + b', "items": [')
    for n, item in enumerate(items):
        h.update((", " if n else "").encode() + _dumps(dataclasses.asdict(item)).encode())
    h.update(b"]}")
    return h.hexdigest()[:16]


def _dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def _duplicates(images: tuple[Path, ...], captions: CaptionSource, ds: DatasetConfig) -> dict[Path, str]:
    """Images that share one caption file (a.png + a.jpg with textfile captions), unless policy is 'keep'."""
    if ds.caption_strategy != "textfile" or ds.duplicate_stem == "keep":
        return {}
    groups: dict[Path, list[Path]] = {}
    for p in images:
        groups.setdefault(captions.caption_file(p), []).append(p)
    out = {}
    for caption_file, group in groups.items():
        if len(group) < 2:
            continue
        names = ", ".join(p.name for p in group)
        for p in group:
            out[p] = (f"several images share the caption file '{caption_file.name}' ({names}). Rename one so "
                      "each has its own caption, or set duplicate_stem to 'keep' (same caption) or 'skip'.")
    return out


def _check_file(path: Path, ctx: _Context) -> DataItem | Skipped:
    ds = ctx.ds
    try:
        data = path.read_bytes()
    except OSError as e:
        return Skipped(str(path), f"file cannot be read ({e.strerror or e}). Fix its permissions.",
                       "bad_image", ds.bad_image == "error")
    try:
        width, height = probe_image(data, ds.max_image_pixels, f"data.datasets[{ctx.index}].max_image_pixels")
    except ImageProblem as e:
        return Skipped(str(path), str(e), "bad_image", ds.bad_image == "error")
    short, long = min(width, height), max(width, height)
    if short < ds.min_size_px:
        return Skipped(str(path), f"image too small ({width}x{height} px; short side {short} < min_size_px "
                       f"{ds.min_size_px}). Use a larger image or lower min_size_px.", "too_small", False)
    if long / short > ds.max_aspect_ratio:
        return Skipped(str(path), f"aspect ratio too extreme ({long / short:.1f}:1 from {width}x{height} px; "
                       f"max_aspect_ratio is {ds.max_aspect_ratio:g}). Crop the image, or raise "
                       "max_aspect_ratio.", "aspect", False)
    if path in ctx.duplicates:
        return Skipped(str(path), ctx.duplicates[path], "duplicate_stem", ds.duplicate_stem == "error")
    found = ctx.captions.caption_for(path)
    caption = found.caption
    if found.kind:
        policy = getattr(ds, found.kind)
        if policy != "empty":
            return Skipped(str(path), found.reason, found.kind, policy == "error")
        caption = ""
    rel = path.relative_to(ctx.root).as_posix()
    if ds.shuffle_tags and caption:
        caption = shuffle_tags(caption, ds.keep_tags, random.Random(f"tags:{ctx.seed}:{ctx.index}:{rel}"))
    mask = _mask_for(path, rel, (width, height), ds)
    if isinstance(mask, Skipped):
        return mask
    plan = plan_crop((width, height), ds, random.Random(f"crop:{ctx.seed}:{ctx.index}:{rel}"))
    return DataItem(
        path=str(path), caption=caption, dataset_index=ctx.index, bucket=plan.bucket, crop=plan.crop,
        is_regularisation=ds.is_regularisation, loss_weight=ds.loss_weight, repeats=ds.repeats,
        image_fingerprint=bytes_fingerprint(data), flip=ds.flip, size_px=(width, height),
        downsample_px=plan.downsample_px, resize_px=plan.resize_px, background=ds.background,
        mask_source=mask[0], mask_path=mask[1], mask_fingerprint=mask[2],
    )


def _mask_for(path: Path, rel: str, size: tuple[int, int], ds: DatasetConfig) -> tuple[str, str, str] | Skipped:
    """(mask_source, mask_path, mask_fingerprint) of an image, or the reason it must be skipped."""
    if ds.mask_strategy == "alpha":
        return ("alpha", "", "")
    if ds.mask_strategy != "folder":
        return ("", "", "")
    folder = Path(ds.mask_folder).expanduser()
    stem = Path(rel).with_suffix("")
    found = [folder / stem.with_suffix(ext) for ext in sorted(IMAGE_EXTENSIONS)
             if (folder / stem.with_suffix(ext)).is_file()]
    if not found:
        return Skipped(str(path), f"no mask '{stem}.png' (or .jpg/.webp/.bmp) in the mask folder {folder}. Add "
                       "one (white = train, black = ignore), or set missing_mask to 'skip'.", "missing_mask",
                       ds.missing_mask == "error")
    try:
        data = found[0].read_bytes()
        mask_size = probe_image(data, ds.max_image_pixels, "max_image_pixels")
    except (OSError, ImageProblem) as e:
        return Skipped(str(path), f"its mask {found[0]} cannot be used ({e}). Replace the mask.", "missing_mask",
                       ds.missing_mask == "error")
    if mask_size != size:
        return Skipped(str(path), f"its mask {found[0]} is {mask_size[0]}x{mask_size[1]} px but the image is "
                       f"{size[0]}x{size[1]}. Export the mask at the image's size.", "missing_mask",
                       ds.missing_mask == "error")
    return ("file", str(found[0]), bytes_fingerprint(data))


def _unmatched_metadata(images: tuple[Path, ...], ctx: _Context) -> list[Skipped]:
    if ctx.captions.meta_path is None:
        return []
    matched = {ctx.captions.key_for(p) for p in images} | {os.path.normpath(str(p)) for p in images}
    meta = ctx.captions.meta_path.name
    return [Skipped(str(ctx.root / key), f"listed in '{meta}' line {line} but no such image was found (or it "
                    "is not a PNG, JPEG, WebP or BMP). Fix the path or remove the line.", "bad_image",
                    ctx.ds.bad_image == "error")
            for key, line in ctx.captions.unmatched(matched)]


def _log_report(report: DatasetReport) -> None:
    log.info("dataset %s: %d images found, %d used, %d skipped", report.path, report.found, len(report.used),
             len(report.skipped))
    for problem in report.problems:
        log.warning("%s", problem)
    for s in report.skipped:
        log.log(logging.WARNING if s.is_error else logging.INFO, "skipped %s: %s", s.path, s.reason)
