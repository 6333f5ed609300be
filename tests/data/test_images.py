"""Image decoding (EXIF, alpha, palette, CMYK, 16-bit) and the training pixels of an item."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lumina2_train.config import DataConfig
from lumina2_train.data import load_image_rgb, prepare_pixels, scan_dataset
from lumina2_train.data.images import probe_image
from lumina2_train.errors import DatasetError


def halves(size, left, right) -> Image.Image:
    w, h = size
    img = Image.new("RGB", size, left)
    img.paste(Image.new("RGB", (w // 2, h), right), (w // 2, 0))
    return img


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: display rotated 90° clockwise
    halves((64, 32), (255, 0, 0), (0, 0, 255)).save(path, exif=exif.tobytes(), quality=95)
    assert probe_image(path.read_bytes()) == (32, 64)
    img = load_image_rgb(path)
    assert img.size == (32, 64)
    top, bottom = img.getpixel((16, 8)), img.getpixel((16, 56))
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]  # the left (red) half is now on top


def test_alpha_is_composited_on_the_background(tmp_path):
    rgba = Image.new("RGBA", (4, 1), (255, 255, 255, 0))
    rgba.putpixel((1, 0), (255, 255, 255, 255))
    rgba.putpixel((2, 0), (255, 255, 255, 128))
    rgba.save(tmp_path / "a.png")
    img = load_image_rgb(tmp_path / "a.png", background="#00ff00")
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (0, 255, 0) and img.getpixel((1, 0)) == (255, 255, 255)
    r, g, b = img.getpixel((2, 0))
    assert abs(r - 128) <= 1 and g == 255 and abs(b - 128) <= 1
    la = Image.new("LA", (2, 1), (200, 0))
    la.save(tmp_path / "la.png")
    assert load_image_rgb(tmp_path / "la.png", background="black").getpixel((0, 0)) == (0, 0, 0)


def test_palette_with_transparency(tmp_path):
    pal = Image.new("P", (2, 1), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((1, 0), 1)
    pal.save(tmp_path / "p.png", transparency=0)
    img = load_image_rgb(tmp_path / "p.png", background="white")
    assert img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((1, 0)) == (0, 0, 255)


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)
    r, g, b = load_image_rgb(tmp_path / "c.jpg").getpixel((8, 8))
    assert r > 240 and g < 15 and b < 15


def test_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 257 * 100, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "g16.png")
    img = load_image_rgb(tmp_path / "g16.png")
    assert [img.getpixel((x, 0))[0] for x in range(4)] == [0, 100, 128, 255]


def _png16_rgb(path: Path, arr: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG written by hand (Pillow cannot write one)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in arr)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def test_16_bit_rgb_png(tmp_path):
    _png16_rgb(tmp_path / "rgb16.png", np.array([[[65535, 0, 32896], [257 * 10, 65535, 0]]], dtype=np.uint16))
    img = load_image_rgb(tmp_path / "rgb16.png")
    assert img.getpixel((0, 0)) == (255, 0, 128) and img.getpixel((1, 0)) == (10, 255, 0)


def _items(folder, make_dataset, **kw):
    return scan_dataset(DataConfig(datasets=(make_dataset(folder, **kw),))).items


def test_prepare_pixels_shape_range_and_flip(good_folder, make_dataset):
    for item in _items(good_folder, make_dataset, flip=True):
        px = prepare_pixels(item)
        w, h = item.bucket
        assert px.shape == (3, h, w) and px.dtype == torch.float32
        assert px.min() >= -1.0 and px.max() <= 1.0
        assert torch.equal(prepare_pixels(item, flip=True), torch.flip(px, dims=[2]))


def test_prepare_pixels_crop_box(tmp_path, write_image, make_dataset):
    path = write_image(tmp_path / "wide.png", (128, 64))
    (item,) = _items(tmp_path, make_dataset, crop_aspect="square")  # 64x64 bucket out of the 128x64 image
    assert item.bucket == (64, 64) and item.resize_px == (128, 64) and item.crop == (32, 0, 96, 64)
    expected = np.asarray(Image.open(path).convert("RGB"))[:, 32:96].astype(np.float32) / 127.5 - 1
    assert torch.equal(prepare_pixels(item), torch.from_numpy(expected).permute(2, 0, 1))


def test_prepare_pixels_refuses_a_changed_file(tmp_path, write_image, make_dataset):
    write_image(tmp_path / "a.png")
    (item,) = _items(tmp_path, make_dataset)
    write_image(tmp_path / "a.png", seed=99)
    with pytest.raises(DatasetError, match="changed since the dataset was scanned"):
        prepare_pixels(item)
    (tmp_path / "a.png").unlink()
    with pytest.raises(DatasetError, match="cannot be read any more"):
        prepare_pixels(item)
