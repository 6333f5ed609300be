"""The dataset and cache stages as the ComfyUI nodes run them: folders under ComfyUI's directories, IMAGE batches
written to a content-addressed folder, the cache built with ComfyUI's CLIP and VAE and a progress bar.

ComfyUI is imported inside functions only (folder_paths, comfy.utils); the rest is the plain library.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..config import CacheConfig, DataConfig, DatasetConfig, ValidationConfig
from ..errors import ConfigError, DatasetError

log = logging.getLogger(__name__)
OUTPUT_SUBFOLDER = "lumina2_train"  # under ComfyUI's output folder: run folders (checkpoints, samples), cache
IMAGE_SETS = "lumina2t_image_sets"  # under ComfyUI's temp folder: IMAGE batches written as files
DONE_MARK = ".complete"


# ---------------------------------------------------------------- ComfyUI's folders

def output_root() -> Path:
    """ComfyUI's output folder / lumina2_train (run folders, checkpoints, previews, the cache)."""
    import folder_paths

    return Path(folder_paths.get_output_directory()) / OUTPUT_SUBFOLDER


def input_folder(folder: str) -> Path:
    """A dataset folder as typed in a node: absolute, or relative to ComfyUI's input folder."""
    p = Path(folder.strip()).expanduser()
    if p.is_absolute():
        return p
    import folder_paths

    return Path(folder_paths.get_input_directory()) / p


# ---------------------------------------------------------------- datasets

def folder_fingerprint(*paths: str | Path) -> str:
    """A cheap fingerprint of files under `paths` (names, sizes, mtimes; no file is read): it changes when an
    image or caption is added, removed or edited, so ComfyUI re-runs the dataset node then and only then."""
    h = hashlib.sha256()
    for root in paths:
        root = Path(root)
        h.update(f"|{root}|".encode())
        if root.is_file():
            st = root.stat()
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames.sort()
            for name in sorted(filenames):
                p = Path(dirpath) / name
                try:
                    st = p.stat()
                except OSError:
                    continue
                h.update(f"{p.relative_to(root)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:32]


def scan_folder_dataset(ds: DatasetConfig, seed: int = 0):
    """scan_dataset over one folder whose path is absolute or relative to ComfyUI's input folder."""
    from ..data import scan_dataset

    folder = input_folder(ds.path) if ds.path.strip() else Path("")
    if not ds.path.strip() or not folder.is_dir():
        raise DatasetError(f"folder '{ds.path}': no such folder ({folder}). Give a folder of images, absolute or "
                           "relative to ComfyUI's input folder")
    mask = str(input_folder(ds.mask_folder)) if ds.mask_folder.strip() else ""
    # metadata_file stays as typed: the scanner looks for it in the dataset folder first
    return scan_dataset(DataConfig(datasets=(_replace(ds, path=str(folder), mask_folder=mask),), seed=seed))


def _replace(ds: DatasetConfig, **changes) -> DatasetConfig:
    import dataclasses

    return dataclasses.replace(ds, **changes)


def match_captions(n_images: int, captions: Sequence[str]) -> list[str]:
    """One caption per image from what a node received: one per image, one text with a line per image, or one
    caption for all of them.

    Raises:
        DatasetError: the counts do not match.
    """
    captions = [str(c) for c in captions]
    if len(captions) == n_images:
        return [c.strip() for c in captions]
    if len(captions) == 1:
        lines = [line.strip() for line in captions[0].splitlines() if line.strip()]
        if len(lines) == n_images:
            return lines
        if len(lines) <= 1:
            return [captions[0].strip()] * n_images
        raise DatasetError(f"captions: {len(lines)} lines for {n_images} images. Write one line per image, or a "
                           "single caption for all of them")
    raise DatasetError(f"captions: {len(captions)} captions for {n_images} images. Give one caption per image, one "
                       "text with a line per image, or a single caption for all")


def _to_uint8(images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    out = []
    for batch in images:
        if not isinstance(batch, torch.Tensor) or batch.dim() not in (3, 4) or batch.shape[-1] not in (3, 4):
            shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
            raise DatasetError(f"images: expected ComfyUI IMAGE batches (B, H, W, 3) (got {shape}). Connect an "
                               "IMAGE output")
        batch = batch[None] if batch.dim() == 3 else batch
        out += [(img[..., :3].float().clamp(0, 1) * 255).round().to(torch.uint8).cpu() for img in batch]
    return out


def write_image_set(images: Sequence[torch.Tensor], captions: Sequence[str], root: Path) -> Path:
    """Write IMAGE batches as PNG + .txt caption files into root/<content hash>/ (once: same content, same
    folder), so they go through the same scan, buckets and fingerprinted cache as a folder dataset."""
    from PIL import Image

    pixels = _to_uint8(images)
    texts = match_captions(len(pixels), captions)
    if not pixels:
        raise DatasetError("images: the IMAGE input holds no image. Connect a batch with at least one image")
    h = hashlib.sha256()
    for img, text in zip(pixels, texts):
        h.update(f"{tuple(img.shape)}|{text}|".encode())
        h.update(img.contiguous().numpy().tobytes())
    folder = Path(root) / h.hexdigest()[:24]
    if (folder / DONE_MARK).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        for i, (img, text) in enumerate(zip(pixels, texts)):
            Image.fromarray(img.numpy()).save(tmp / f"{i:05d}.png")
            (tmp / f"{i:05d}.txt").write_text(text + "\n", encoding="utf-8")
        (tmp / DONE_MARK).write_text("")
        shutil.rmtree(folder, ignore_errors=True)  # an incomplete folder of a killed process
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def image_set_dataset(images: Sequence[torch.Tensor], captions: Sequence[str], ds: DatasetConfig, seed: int = 0):
    """A DatasetHandle for IMAGE batches + captions, via a content-addressed folder under ComfyUI's temp folder."""
    import folder_paths

    from ..data import scan_dataset

    folder = write_image_set(images, captions, Path(folder_paths.get_temp_directory()) / IMAGE_SETS)
    # images that other nodes chose are all used: no size filter; an empty caption trains as unconditional
    ds = _replace(ds, path=str(folder), caption_strategy="textfile", caption_extension=".txt", metadata_file="",
                  missing_caption="empty", empty_caption="empty", min_size_px=0)
    return scan_dataset(DataConfig(datasets=(ds,), seed=seed))


# ---------------------------------------------------------------- cache

def validation_prompts(v: ValidationConfig | None) -> list[str]:
    """Raw prompts the cache must hold for validation: every prompt and, when there are any, a non-empty negative
    (an empty negative uses the dropped caption, which every cache holds)."""
    if v is None:
        return []
    from ..train.validation import cached_negative, named_prompts

    named = [p for _, p in named_prompts(v)]
    return [*named, *cached_negative(v.negative_prompt)] if named else []


def progress_bar(node_id: str | None) -> Callable[[int, int], None]:
    """A (done, total) callback driving ComfyUI's progress bar of node `node_id` (made on first call). ComfyUI's
    progress hook also checks the stop button, so a cancel takes effect after the batch being encoded."""
    import comfy.utils

    bar = []

    def update(done: int, total: int) -> None:
        if not bar:
            bar.append(comfy.utils.ProgressBar(max(total, 1), node_id=node_id))
        bar[0].update_absolute(done, max(total, 1))

    return update


def build_comfy_cache(dataset, clip, vae, cfg: CacheConfig, *, validation: ValidationConfig | None = None,
                      node_id: str | None = None):
    """The fingerprinted latent + text cache of `dataset`, encoded with ComfyUI's CLIP (Gemma2 for Lumina2, Qwen3-4B
    for Z-Image: the CLIP picks the prompt format) and VAE only where entries are missing; ComfyUI may then unload
    both. Cached under output/lumina2_train/cache unless cfg.dir.

    Raises:
        ConfigError, DatasetError, ModelError (not Gemma2 or Qwen3-4B / not the Flux VAE), CacheError.
    """
    from ..cache import build_cache
    from ..encoders.comfy import ComfyEncoders

    errors = cfg.errors("cache")
    if errors:
        raise ConfigError(errors)
    dataset.require_usable()
    root = Path(cfg.dir) if cfg.dir else output_root() / "cache"
    encoders = ComfyEncoders(clip, vae)
    return build_cache(dataset, encoders, cfg, root=root, extra_prompts=validation_prompts(validation),
                       progress=progress_bar(node_id), family=encoders.text_family)


def cache_summary(cache) -> str:
    """A few lines for the node: items, buckets, system prompt, where the cache lives."""
    buckets = ", ".join(f"{w}x{h}: {len(ix)}" for (w, h), ix in sorted(cache.buckets().items()))
    system = cache.system_prompt or "(none)"
    return (f"{len(cache)} images cached in {cache.root}\nbuckets: {buckets}\n"
            f"system prompt: {system[:80]}{'...' if len(system) > 80 else ''}\nfingerprint: {cache.fingerprint[:16]}")


__all__ = ["OUTPUT_SUBFOLDER", "build_comfy_cache", "cache_summary", "folder_fingerprint", "image_set_dataset",
           "input_folder", "match_captions", "output_root", "progress_bar", "scan_folder_dataset",
           "validation_prompts", "write_image_set"]
