"""`python -m lumina2_train scan DATASET_DIR ...`: the dataset report, without loading any model.

Exit code 0 when at least one image is usable, 2 when none is. Output goes to stdout (text, or one JSON
object with --json); log lines go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from ..config import (
    BUCKET_STEPS,
    CAPTION_POLICIES,
    CAPTION_STRATEGIES,
    CROP_ASPECTS,
    CROP_STYLES,
    RESOLUTION_TYPES,
    DataConfig,
    DatasetConfig,
    load_run_config,
)

_D = DatasetConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset_dir", nargs="*", help="dataset folder(s); several folders = several datasets")
    parser.add_argument("--config", default="", help="scan the datasets of this run config (.toml/.json) instead")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--resolution", type=int, default=_D.resolution, help="bucket resolution in px")
    parser.add_argument("--resolution-type", choices=RESOLUTION_TYPES, default=_D.resolution_type)
    parser.add_argument("--bucket-step", type=int, choices=BUCKET_STEPS, default=_D.bucket_step_px)
    parser.add_argument("--min-size", type=int, default=_D.min_size_px, help="skip images with a smaller short side")
    parser.add_argument("--max-aspect", type=float, default=_D.max_aspect_ratio, help="skip more extreme aspects")
    parser.add_argument("--crop-style", choices=CROP_STYLES, default=_D.crop_style)
    parser.add_argument("--crop-aspect", choices=CROP_ASPECTS, default=_D.crop_aspect)
    parser.add_argument("--caption-strategy", choices=CAPTION_STRATEGIES, default=_D.caption_strategy)
    parser.add_argument("--caption-extension", default=_D.caption_extension)
    parser.add_argument("--metadata-file", default="", help="jsonl/csv with path + caption (for those strategies)")
    parser.add_argument("--instance-prompt", default="", help="caption of every image (strategy 'instance')")
    parser.add_argument("--missing-caption", choices=CAPTION_POLICIES, default=_D.missing_caption)
    parser.add_argument("--empty-caption", choices=CAPTION_POLICIES, default=_D.empty_caption)
    parser.add_argument("--no-recursive", action="store_true", help="do not look into subfolders")
    parser.add_argument("--seed", type=int, default=0, help="seed of random crops and tag shuffling")


def data_config_from_args(args: argparse.Namespace) -> DataConfig:
    if args.config:
        return load_run_config(args.config).data
    datasets = tuple(
        DatasetConfig(
            path=folder, resolution=args.resolution, resolution_type=args.resolution_type,
            bucket_step_px=args.bucket_step, min_size_px=args.min_size, max_aspect_ratio=args.max_aspect,
            crop_style=args.crop_style, crop_aspect=args.crop_aspect, caption_strategy=args.caption_strategy,
            caption_extension=args.caption_extension, metadata_file=args.metadata_file,
            instance_prompt=args.instance_prompt, missing_caption=args.missing_caption,
            empty_caption=args.empty_caption, recursive=not args.no_recursive,
        )
        for folder in args.dataset_dir
    )
    return DataConfig(datasets=datasets, seed=args.seed)


def run(args: argparse.Namespace) -> int:
    from . import scan_dataset

    if not args.dataset_dir and not args.config:
        sys.stderr.write("scan: give a dataset folder (or --config run.toml).\n")
        return 2
    # the report printed below already lists every file; keep the per-file log lines out of the way
    scan_log = logging.getLogger("lumina2_train.data.scan")
    level = scan_log.level
    scan_log.setLevel(logging.DEBUG if getattr(args, "verbose", False) else logging.ERROR)
    try:
        report = scan_dataset(data_config_from_args(args)).report
    finally:
        scan_log.setLevel(level)
    if args.json:
        sys.stdout.write(json.dumps(report.as_dict(), ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(report.as_text() + "\n")
    return 0 if report.used else 2
