"""Fixtures for the dataset tests: a folder of good images and a folder snapshot."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def good_folder(tmp_path: Path, write_image) -> Path:
    """Four captioned images of three aspect ratios and four formats, one in a subfolder."""
    root = tmp_path / "good"
    write_image(root / "wide.png", (96, 48), caption="a wide photo, red, blue", seed=1)
    write_image(root / "tall.jpg", (48, 96), caption="a tall photo", seed=2)
    write_image(root / "square.webp", (64, 64), caption="a square photo", seed=3, lossless=True)
    write_image(root / "nested" / "deep.bmp", (80, 48), caption="a nested photo", seed=4)
    return root


@pytest.fixture
def snapshot():
    """snapshot(folder) -> every file's bytes, mode and mtime: proves nothing was modified or deleted."""

    def take(folder: Path) -> dict[str, tuple[bytes, int, int]]:
        out = {}
        for dirpath, _, files in os.walk(folder):  # does not follow folder symlinks (loops are fine)
            for name in files:
                p = Path(dirpath) / name
                if p.is_file() and not p.is_symlink():
                    st = p.stat()
                    out[str(p)] = (p.read_bytes(), st.st_mode, st.st_mtime_ns)
        return out

    return take
