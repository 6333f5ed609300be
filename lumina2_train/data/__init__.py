"""Datasets: folders of images with captions, scanned into usable items with aspect buckets and crops.

`scan_dataset(DataConfig) -> DatasetHandle` never loads a model and never raises for a bad file: the
handle's report lists every skipped file with its reason, and `require_usable()` is the strict check
used before caching/training (it raises DatasetError for problems whose policy is 'error').
No ComfyUI imports.
"""

from __future__ import annotations

from .buckets import CropPlan, bucket_for, plan_batches, plan_crop
from .captions import normalise_caption, shuffle_tags
from .files import IMAGE_EXTENSIONS
from .handle import DataItem, DatasetHandle
from .images import load_image_rgb, prepare_pixels
from .report import DatasetReport, ScanReport, Skipped
from .scan import scan_dataset

__all__ = [
    "IMAGE_EXTENSIONS", "CropPlan", "DataItem", "DatasetHandle", "DatasetReport", "ScanReport", "Skipped",
    "bucket_for", "load_image_rgb", "normalise_caption", "plan_batches", "plan_crop", "prepare_pixels",
    "scan_dataset", "shuffle_tags",
]
