"""Image decoding and pixel preparation: EXIF orientation, alpha/palette/CMYK/16-bit to RGB, resize + crop.

The one place that turns a file into training pixels; the scan, the cache and on-the-fly encoding all
call `prepare_pixels`, so they agree bit for bit. Reads files, never writes them.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageColor, ImageOps, UnidentifiedImageError

from ..errors import DatasetError

if TYPE_CHECKING:
    import torch

    from . import DataItem

_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_WIDE_GRAY = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA = ("RGBA", "LA", "La", "RGBa", "PA")


class ImageProblem(Exception):
    """A file that cannot be used as an image; the message is a report reason."""


def bytes_fingerprint(data: bytes) -> str:
    """sha256 of the file bytes, 16 hex digits (DataItem.image_fingerprint)."""
    return hashlib.sha256(data).hexdigest()[:16]


def probe_image(data: bytes, max_pixels: int = 0, what: str = "max_image_pixels") -> tuple[int, int]:
    """Decode fully (to catch truncation) and return the (width, height) after EXIF orientation.

    An image of more than `max_pixels` pixels (0 = no limit of ours) is refused from its header, before
    anything is decoded; `what` names the setting in the message.

    Raises:
        ImageProblem: empty, not an image, truncated or corrupt, or too large to decode safely.
    """
    if not data:
        raise ImageProblem("empty file (0 bytes). Replace it with the real image or remove it.")
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if max_pixels and width * height > max_pixels:
                raise ImageProblem(f"image too large ({width}x{height} px = {width * height / 1e6:.1f} MP, more "
                                   f"than {what} {max_pixels:,}). Downscale it, or raise {what}.")
            orientation = _orientation(img)
            if img.format == "JPEG":  # decode at 1/8 scale: still reads every byte, 30x faster
                img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            img.load()
    except UnidentifiedImageError:
        raise ImageProblem(f"not an image (Pillow cannot read the content; it starts with {data[:8]!r}). "
                           "Replace it with a real PNG, JPEG, WebP or BMP, or remove it.") from None
    except ImageProblem:
        raise
    except Image.DecompressionBombError as e:
        raise ImageProblem(f"image too large to decode safely ({e}). Downscale it.") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageProblem(f"truncated or corrupt image ({e}). Re-export or re-download it.") from None
    except Exception as e:  # malformed headers can raise anything inside a decoder; a scan must not crash
        raise ImageProblem(f"corrupt image ({type(e).__name__}: {e}). Re-export or re-download it.") from None
    return (height, width) if orientation in _ROTATED else (width, height)


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block must not hide a good image; treat as unrotated
        return 1


def decode_rgb(data: bytes, background: str = "white") -> Image.Image:
    """File bytes -> RGB image, EXIF orientation applied, transparency composited on `background`."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        try:
            oriented = ImageOps.exif_transpose(img)
        except Exception:  # same policy as _orientation: unreadable EXIF = unrotated
            oriented = img.copy()
    return to_rgb(oriented, background)


def load_image_rgb(path: str | Path, background: str = "white") -> Image.Image:
    """An image file as a PIL RGB image (EXIF orientation, alpha on `background`, palette, CMYK, 16-bit)."""
    return decode_rgb(Path(path).read_bytes(), background)


def to_rgb(img: Image.Image, background: str = "white") -> Image.Image:
    """Any Pillow mode -> 8-bit RGB. Alpha (and palette/tRNS transparency) is composited on `background`."""
    if img.mode in _WIDE_GRAY:
        img = _wide_gray_to_l(img)
    if img.mode == "CMYK":
        img = _cmyk_to_rgb(img)
    if img.mode in ("P", "L", "RGB", "1") and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in _ALPHA:
        bg = Image.new("RGBA", img.size, ImageColor.getrgb(background)[:3] + (255,))
        img = Image.alpha_composite(bg, img.convert("RGBA"))
    return img if img.mode == "RGB" else img.convert("RGB")


def _wide_gray_to_l(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer or float grayscale -> 8-bit 'L' (Pillow's own convert clips instead of scaling)."""
    arr = np.asarray(img).astype(np.float64)
    if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) > 255):
        arr = arr / 257.0  # 65535 -> 255
    elif img.mode == "F" and arr.max(initial=0) <= 1.0:
        arr = arr * 255.0
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    icc = img.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms

            srgb = ImageCms.createProfile("sRGB")
            return ImageCms.profileToProfile(img, io.BytesIO(icc), srgb, outputMode="RGB")
        except Exception:  # a broken profile falls back to Pillow's plain conversion
            pass
    return img.convert("RGB")


def resize_and_crop(img: Image.Image, item: DataItem) -> Image.Image:
    """Apply the item's plan: optional downsample, resize to `resize_px`, crop to the bucket."""
    if img.size != tuple(item.size_px):
        raise DatasetError(f"{item.path}: the image is {img.size[0]}x{img.size[1]} px but was "
                           f"{item.size_px[0]}x{item.size_px[1]} when scanned. Re-run the dataset scan.")
    if tuple(item.downsample_px) != img.size:
        img = img.resize(item.downsample_px, Image.Resampling.LANCZOS)
    if tuple(item.resize_px) != img.size:
        img = img.resize(item.resize_px, Image.Resampling.LANCZOS)
    return img.crop(item.crop)


def prepare_pixels(item: DataItem, *, flip: bool = False) -> torch.Tensor:
    """The training pixels of one item: (3, H, W) float32 in [-1, 1] at the bucket size.

    Raises:
        DatasetError: the file is gone, unreadable, or changed since the scan (fingerprint mismatch).
    """
    import torch

    try:
        data = Path(item.path).read_bytes()
    except OSError as e:
        raise DatasetError(f"{item.path}: cannot be read any more ({e.strerror or e}). "
                           "Restore the file or re-run the dataset scan.") from None
    got = bytes_fingerprint(data)
    if got != item.image_fingerprint:
        raise DatasetError(f"{item.path}: the file changed since the dataset was scanned (fingerprint "
                           f"{item.image_fingerprint}, now {got}). Re-run the dataset scan.")
    img = resize_and_crop(decode_rgb(data, item.background), item)
    if flip:
        img = ImageOps.mirror(img)
    pixels = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)  # (3, H, W)
    return pixels.float() / 127.5 - 1.0


def prepare_mask(item: DataItem, latent_hw: tuple[int, int], *, flip: bool = False) -> torch.Tensor:
    """The loss mask of one item at latent resolution: (1, h, w) float32 in [0, 1], 1 = train.

    The mask (the image's alpha channel, or a grayscale mask file) goes through the same downsample,
    resize and crop as the pixels, then a box filter down to the latent grid.
    """
    import torch

    source = item.mask_path if item.mask_source == "file" else item.path
    try:
        with Image.open(io.BytesIO(Path(source).read_bytes())) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
    except (OSError, UnidentifiedImageError) as e:
        raise DatasetError(f"{source}: the mask cannot be read any more ({e}). Restore it or re-run the scan.") \
            from None
    if item.mask_source == "alpha":
        mask = img.convert("RGBA").getchannel("A") if (img.mode in _ALPHA or "transparency" in img.info) \
            else Image.new("L", img.size, 255)
    else:
        mask = to_rgb(img).convert("L")
    mask = resize_and_crop(mask, item)
    if flip:
        mask = ImageOps.mirror(mask)
    h, w = latent_hw
    mask = mask.resize((w, h), Image.Resampling.BOX)
    return torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None]
