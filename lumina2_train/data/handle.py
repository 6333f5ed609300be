"""DataItem (one usable image) and DatasetHandle (the scan's result, handed to the cache stage)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..config import DataConfig
from ..errors import DatasetError
from .report import ScanReport

log = logging.getLogger(__name__)
MAX_LISTED_PROBLEMS = 20


@dataclass(frozen=True)
class DataItem:
    """One usable image (repeats are not expanded here). Everything `prepare_pixels` needs is in it."""

    path: str  # absolute path as found (symlink names kept)
    caption: str  # normalised (and tag-shuffled if enabled); "" only under the 'empty' caption policies
    dataset_index: int
    bucket: tuple[int, int]  # (width_px, height_px), multiples of bucket_step_px
    crop: tuple[int, int, int, int]  # (left, top, right, bottom) in the image resized to `resize_px`
    is_regularisation: bool
    loss_weight: float
    repeats: int
    image_fingerprint: str  # sha256[:16] of the file bytes
    flip: bool  # flip augmentation enabled for this item's dataset
    size_px: tuple[int, int] = (0, 0)  # source (width, height) after EXIF orientation
    downsample_px: tuple[int, int] = (0, 0)  # after the max_size_px downsample (== size_px when none)
    resize_px: tuple[int, int] = (0, 0)  # resized to this before cropping (== bucket for crop_style none)
    background: str = "white"  # colour transparent pixels are composited on
    mask_source: str = ""  # masked loss: "" (none), "alpha" (the image's alpha channel) or "file"
    mask_path: str = ""  # with mask_source "file": the mask image
    mask_fingerprint: str = ""  # sha256[:16] of the mask file's bytes


@dataclass(frozen=True)
class DatasetHandle:
    items: tuple[DataItem, ...]
    report: ScanReport
    fingerprint: str  # changes with any file, caption, crop, bucket or setting that changes training data
    config: DataConfig

    def __len__(self) -> int:
        return len(self.items)

    def require_usable(self) -> DatasetHandle:
        """The strict check before caching or training.

        Raises:
            DatasetError: listing every dataset-level problem and every file skipped under an 'error'
                policy (or saying that no image is usable at all). Files skipped under a 'skip' policy and
                size/aspect filters are not errors; they stay in the report.
        """
        errors = self.report.errors()
        if not errors:
            return self
        shown = errors[:MAX_LISTED_PROBLEMS]
        more = len(errors) - len(shown)
        tail = (f"\n- ... and {more} more; run `python -m lumina2_train scan <folder>` for the full list"
                if more else "")
        raise DatasetError(f"The dataset cannot be used for training ({len(errors)} problem"
                           f"{'s' if len(errors) != 1 else ''}):\n" + "\n".join(f"- {e}" for e in shown) + tail)
