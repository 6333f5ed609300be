"""Dataset and cache settings (docs/data.md)."""

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
    RESOLUTION_TYPES,
    SYSTEM_PROMPTS,
    _choice,
    _colour,
    _range,
)


@dataclass(frozen=True)
class DatasetConfig:
    """One folder (or metadata file) of images with captions; several make a run (multidatabackend)."""

    path: str = ""
    caption_strategy: str = "textfile"
    caption_extension: str = ".txt"
    metadata_file: str = ""  # jsonl/csv with path + caption columns (relative paths resolve against `path`)
    instance_prompt: str = ""  # the caption of every image for caption_strategy 'instance'
    recursive: bool = True
    repeats: int = 1
    resolution: int = 1024  # pixel_area: target area = resolution²; shortest_side: the short side in px
    resolution_type: str = "pixel_area"
    bucket_step_px: int = 16
    min_size_px: int = 256  # images whose short side is smaller are skipped
    max_size_px: int = 0  # 0 = no limit; images whose long side is larger are downsampled before bucketing
    target_downsample_px: int = 0  # long side after that downsample; 0 = max_size_px
    max_aspect_ratio: float = 4.0  # long/short side above this is skipped
    # images with more pixels are refused before they are decoded (bad_image policy); 0 = only Pillow's own
    # decompression-bomb limit (about 179 MP). 80 MP stays below Pillow's warning (89.5 MP) and holds 8K x 8K.
    max_image_pixels: int = 80_000_000
    crop_style: str = "center"
    crop_aspect: str = "preserve"
    flip: bool = False  # also cache the horizontally flipped latent, drawn at random
    missing_caption: str = "error"
    empty_caption: str = "error"
    invalid_caption: str = "error"  # caption that is not UTF-8 or cannot be read: error | skip
    duplicate_stem: str = "error"  # textfile captions shared by a.png and a.jpg: error | skip | keep
    bad_image: str = "skip"  # zero-byte, truncated, not an image, unreadable: error | skip (reported either way)
    background: str = "white"  # colour that transparent pixels are composited on (name or #rrggbb)
    shuffle_tags: bool = False
    keep_tags: int = 0  # with shuffle_tags: keep the first N comma-separated tags in place
    is_regularisation: bool = False
    loss_weight: float = 1.0  # prior-loss weight for regularisation sets
    mask_strategy: str = "none"  # none | alpha | folder (masked loss: white/opaque trains, black is ignored)
    mask_folder: str = ""  # for 'folder': masks with the image's relative path and stem, any image type
    missing_mask: str = "error"  # with mask_strategy 'folder': an image without a mask file: error | skip

    def errors(self, at: str) -> list[str]:
        out = [] if self.path else [f"{at}.path is empty; give the folder that holds the images"]
        out += _choice(f"{at}.caption_strategy", self.caption_strategy, CAPTION_STRATEGIES)
        out += _choice(f"{at}.resolution_type", self.resolution_type, RESOLUTION_TYPES)
        out += _choice(f"{at}.bucket_step_px", self.bucket_step_px, BUCKET_STEPS)
        out += _choice(f"{at}.crop_style", self.crop_style, CROP_STYLES)
        out += _choice(f"{at}.crop_aspect", self.crop_aspect, CROP_ASPECTS)
        out += _choice(f"{at}.missing_caption", self.missing_caption, CAPTION_POLICIES)
        out += _choice(f"{at}.empty_caption", self.empty_caption, CAPTION_POLICIES)
        out += _choice(f"{at}.invalid_caption", self.invalid_caption, FILE_POLICIES)
        out += _choice(f"{at}.duplicate_stem", self.duplicate_stem, DUPLICATE_POLICIES)
        out += _choice(f"{at}.bad_image", self.bad_image, FILE_POLICIES)
        out += _choice(f"{at}.mask_strategy", self.mask_strategy, ("none", "alpha", "folder"))
        out += _range(f"{at}.repeats", self.repeats, 1)
        out += _range(f"{at}.resolution", self.resolution, 64, 4096)
        out += _range(f"{at}.min_size_px", self.min_size_px, 0)
        out += _range(f"{at}.max_size_px", self.max_size_px, 0)
        out += _range(f"{at}.target_downsample_px", self.target_downsample_px, 0)
        out += _colour(f"{at}.background", self.background)
        out += _range(f"{at}.max_aspect_ratio", self.max_aspect_ratio, 1.0)
        out += _range(f"{at}.max_image_pixels", self.max_image_pixels, 0)
        out += _range(f"{at}.keep_tags", self.keep_tags, 0)
        out += _range(f"{at}.loss_weight", self.loss_weight, 0.0)
        if self.caption_strategy == "instance" and not self.instance_prompt:
            out.append(f"{at}.instance_prompt is empty but caption_strategy is 'instance'; write the prompt")
        if self.caption_strategy in ("jsonl", "csv") and not self.metadata_file:
            out.append(f"{at}.metadata_file is empty but caption_strategy is '{self.caption_strategy}'; "
                       "give the metadata file")
        out += _choice(f"{at}.missing_mask", self.missing_mask, FILE_POLICIES)
        if self.mask_strategy == "folder" and not self.mask_folder:
            out.append(f"{at}.mask_folder is empty but mask_strategy is 'folder'; give the mask folder")
        return out


@dataclass(frozen=True)
class DataConfig:
    datasets: tuple[DatasetConfig, ...] = ()
    seed: int = 0  # bucket crops and random choices made while scanning

    def errors(self, at: str = "data") -> list[str]:
        if not self.datasets:
            return [f"{at}.datasets is empty; add at least one dataset folder"]
        return [e for i, d in enumerate(self.datasets) for e in d.errors(f"{at}.datasets[{i}]")]


@dataclass(frozen=True)
class CacheConfig:
    dir: str = ""  # cache root; empty = '<output_dir>/cache'
    system_prompt: str = "superior"
    custom_system_prompt: str = ""
    max_caption_tokens: int = 256
    encode_batch_size: int = 4  # texts per text-encoder call
    # images per VAE call; 1 keeps cached latents bit-identical to on-the-fly (vae_cache_disable) encoding,
    # larger batches are faster but can differ in the last float bits (kernels depend on batch size)
    vae_batch_size: int = 1
    vae_cache_disable: bool = False  # encode latents on the fly during training instead of caching them

    def errors(self, at: str = "cache") -> list[str]:
        out = _choice(f"{at}.system_prompt", self.system_prompt, SYSTEM_PROMPTS)
        out += _range(f"{at}.max_caption_tokens", self.max_caption_tokens, 8, 4096)
        out += _range(f"{at}.encode_batch_size", self.encode_batch_size, 1)
        out += _range(f"{at}.vae_batch_size", self.vae_batch_size, 1)
        if self.system_prompt == "custom" and not self.custom_system_prompt.strip():
            out.append(f"{at}.custom_system_prompt is empty but system_prompt is 'custom'; write the prompt")
        return out
