"""Dataset and cache settings (docs/data.md; every option: docs/settings.md)."""

from __future__ import annotations

from dataclasses import dataclass

from .choices import (
    BUCKET_STEPS,
    CAPTION_POLICIES,
    CAPTION_STRATEGIES,
    CROP_ASPECTS,
    CROP_STYLES,
    DUPLICATE_POLICIES,
    FILE_POLICIES,
    MASK_STRATEGIES,
    RESOLUTION_TYPES,
    SEED_MAX,
    SYSTEM_PROMPTS,
    _colour,
)
from .settings import setting, setting_errors


@dataclass(frozen=True)
class DatasetConfig:
    """One folder (or metadata file) of images with captions; several make a run (multidatabackend)."""

    path: str = setting("", "The folder that holds the images.")
    caption_strategy: str = setting(
        "textfile", "textfile: a caption file with the image's name. filename: the file name is the caption. "
        "jsonl/csv: a metadata file with path and caption columns. instance: one prompt for every image.",
        choices=CAPTION_STRATEGIES)
    caption_extension: str = setting(".txt", "Extension of the caption files for 'textfile' (e.g. .txt or "
                                             ".caption).")
    metadata_file: str = setting("", "For jsonl/csv: the metadata file, looked up in the dataset folder first.")
    instance_prompt: str = setting("", "For 'instance': the caption of every image (e.g. 'a photo of sks dog').")
    recursive: bool = setting(True, "Also read images in sub-folders.")
    repeats: int = setting(1, "How many times each image counts per epoch (weights this dataset).", min=1,
                           widget_max=10000)
    resolution: int = setting(
        1024, "Training resolution. With pixel_area, each bucket holds about resolution² pixels at the image's "
        "aspect ratio (1024 = ~1 MP, Lumina2's native size).", min=64, max=4096, step=16)
    resolution_type: str = setting("pixel_area", "pixel_area: constant pixel count per bucket. shortest_side: the "
                                                 "short side equals the resolution.", choices=RESOLUTION_TYPES)
    bucket_step_px: int = setting(16, "Bucket sides are multiples of this (16 = VAE 1/8 x patch 2, the finest "
                                      "Lumina2 allows). Larger steps make fewer buckets.", choices=BUCKET_STEPS)
    min_size_px: int = setting(256, "Skip images whose short side is smaller than this (reported).", min=0,
                               widget_max=4096)
    max_size_px: int = setting(0, "Images whose long side is larger are downsampled before bucketing (0 = no "
                                  "limit).", min=0, widget_max=16384)
    target_downsample_px: int = setting(0, "The long side after that downsample (0 = max_size_px).", min=0,
                                        widget_max=16384)
    max_aspect_ratio: float = setting(4.0, "Skip images whose long/short side ratio is above this (reported).",
                                      min=1.0, widget_max=16.0, step=0.1)
    # 80 MP stays below Pillow's warning (89.5 MP) and holds 8K x 8K
    max_image_pixels: int = setting(80_000_000, "Images with more pixels are refused before decoding (bad_image "
                                                "policy; 0 = Pillow's own limit).", min=0, widget_max=SEED_MAX)
    crop_style: str = setting("center", "How an image is cropped to its bucket after resizing: center, random "
                                        "(fixed per image by the seed) or none (resized to the bucket, aspect "
                                        "slightly changed).", choices=CROP_STYLES)
    crop_aspect: str = setting("preserve", "preserve: buckets follow each image's aspect ratio. square: every "
                                           "image is cropped square.", choices=CROP_ASPECTS)
    flip: bool = setting(False, "Also cache each image mirrored and train on either at random (avoid for text or "
                                "asymmetric subjects).")
    missing_caption: str = setting("error", "An image without a caption: error (stop at caching), skip it, or "
                                            "train it with an empty caption.", choices=CAPTION_POLICIES)
    empty_caption: str = setting("error", "A caption that is empty: stop with an error, skip the image, or train "
                                          "it with an empty caption.", choices=CAPTION_POLICIES)
    invalid_caption: str = setting("error", "A caption file that is not UTF-8 or cannot be read: error or skip "
                                            "(reported).", choices=FILE_POLICIES)
    duplicate_stem: str = setting("error", "Images sharing one caption file (a.png and a.jpg): error, skip both, "
                                           "or keep both with that caption.", choices=DUPLICATE_POLICIES)
    bad_image: str = setting("skip", "Zero-byte, truncated or unreadable images: error or skip (reported either "
                                     "way).", choices=FILE_POLICIES)
    background: str = setting("white", "Colour transparent pixels are composited on: a name or #rrggbb.")
    shuffle_tags: bool = setting(False, "Shuffle comma-separated tags in each caption (booru-style captions).")
    keep_tags: int = setting(0, "With shuffle_tags: keep the first N tags in place.", min=0, widget_max=100)
    is_regularisation: bool = setting(False, "A regularisation (prior-preservation) set.")
    loss_weight: float = setting(1.0, "Loss weight of this set's samples (prior-loss weight for regularisation "
                                      "sets).", min=0.0)
    mask_strategy: str = setting("none", "Masked loss: 'alpha' uses each image's transparency, 'folder' a mask "
                                         "image with the same name in mask_folder (white trains, black is "
                                         "ignored).", choices=MASK_STRATEGIES)
    mask_folder: str = setting("", "For mask_strategy 'folder': the masks, with the image's relative path and "
                                   "stem, any image type.")
    missing_mask: str = setting("error", "With mask_strategy 'folder': an image without a mask file: error or "
                                         "skip.", choices=FILE_POLICIES)

    def errors(self, at: str) -> list[str]:
        out = [] if self.path else [f"{at}.path is empty; give the folder that holds the images"]
        out += setting_errors(self, at)
        out += _colour(f"{at}.background", self.background)
        if self.caption_strategy == "instance" and not self.instance_prompt:
            out.append(f"{at}.instance_prompt is empty but caption_strategy is 'instance'; write the prompt")
        if self.caption_strategy in ("jsonl", "csv") and not self.metadata_file:
            out.append(f"{at}.metadata_file is empty but caption_strategy is '{self.caption_strategy}'; "
                       "give the metadata file")
        if self.mask_strategy == "folder" and not self.mask_folder:
            out.append(f"{at}.mask_folder is empty but mask_strategy is 'folder'; give the mask folder")
        return out


@dataclass(frozen=True)
class DataConfig:
    datasets: tuple[DatasetConfig, ...] = ()
    seed: int = setting(0, "Seed of the scan's random choices (random crops, tag shuffles).", widget_min=0,
                        widget_max=SEED_MAX)

    def errors(self, at: str = "data") -> list[str]:
        if not self.datasets:
            return [f"{at}.datasets is empty; add at least one dataset folder"]
        return [e for i, d in enumerate(self.datasets) for e in d.errors(f"{at}.datasets[{i}]")]


@dataclass(frozen=True)
class CacheConfig:
    dir: str = setting("", "Cache root; empty = '<output_dir>/cache'.")
    system_prompt: str = setting(
        "superior", "Prefix encoded before each caption, as CLIP Text Encode for Lumina2 does (superior / "
        "alignment are its two strings). Sample with the same one. 'custom' uses the text below; 'none' encodes "
        "the bare caption.", choices=SYSTEM_PROMPTS)
    custom_system_prompt: str = setting("", "For system_prompt 'custom': the prefix text (before ' <Prompt "
                                            "Start> ').")
    max_caption_tokens: int = setting(256, "Text tokens kept per caption, system prompt included. Left at 256, "
                                           "each model's own: Lumina2 256, Z-Image 512 (its pipeline's limit).",
                                      min=8, max=4096)
    encode_batch_size: int = setting(
        4, "Captions per text-encoder call. Larger is faster on a GPU and needs more memory while caching; the "
        "features do not depend on it beyond the last float bits.", min=1, widget_max=256)
    # 1 keeps cached latents bit-identical to on-the-fly (vae_cache_disable) encoding; larger batches can
    # differ in the last float bits (kernels depend on batch size)
    vae_batch_size: int = setting(1, "Images per VAE call. 1 keeps latents bit-identical whatever the batch; "
                                     "larger is faster on a GPU.", min=1, widget_max=64)
    vae_cache_disable: bool = setting(False, "Encode latents on the fly during training instead of caching them.")

    def errors(self, at: str = "cache") -> list[str]:
        out = setting_errors(self, at)
        if self.system_prompt == "custom" and not self.custom_system_prompt.strip():
            out.append(f"{at}.custom_system_prompt is empty but system_prompt is 'custom'; write the prompt")
        return out
