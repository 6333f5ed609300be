"""Finding image files in a dataset folder: extensions, nested folders, symlink loops, special files.

Never modifies anything. Names starting with '.' (hidden files, macOS '._x.png' resource forks, tool
folders) are ignored.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .report import Skipped

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})


@dataclass(frozen=True)
class Listing:
    images: tuple[Path, ...]  # regular image files, sorted by path relative to the root
    skipped: tuple[Skipped, ...]  # symlink loops, broken links, unreadable folders, special files
    ignored: int  # other files (captions, metadata, unknown extensions)


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(root: Path, *, recursive: bool, bad_image_policy: str) -> Listing:
    """Every image file under `root` (following folder symlinks once; loops are reported, not followed)."""
    images: list[Path] = []
    skipped: list[Skipped] = []
    ignored = 0
    is_error = bad_image_policy == "error"
    visited = {_inode(root)}
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            skipped.append(Skipped(str(folder), f"folder cannot be read ({e.strerror or e}). Fix its permissions "
                                   "or move the images out of it.", "bad_image", is_error))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            if not is_utf8_name(entry.name):
                skip = _name_problem(path, is_error)
                if skip is None:
                    ignored += 1
                else:
                    skipped.append(skip)
                continue
            try:
                st = os.stat(path)  # follows symlinks
            except OSError as e:
                skip = _stat_problem(path, e, is_error)
                if skip is not None:
                    skipped.append(skip)
                elif not is_image_name(path):
                    ignored += 1
                continue
            if stat.S_ISDIR(st.st_mode):
                if recursive:
                    _enter(path, st, visited, stack, skipped)
            elif is_image_name(path):
                if stat.S_ISREG(st.st_mode):
                    images.append(path)
                else:
                    skipped.append(Skipped(str(path), "not a regular file (a pipe, socket or device). Replace it "
                                           "with an image file or move it out of the dataset.", "bad_image", is_error))
            else:
                ignored += 1
    images.sort(key=lambda p: p.relative_to(root).as_posix())
    return Listing(tuple(images), tuple(skipped), ignored)


def is_utf8_name(name: str) -> bool:
    """False for a name that the file system gave as bytes that are not UTF-8 (Python holds those as lone
    surrogates, which cannot be encoded into the report, the cache keys or a seed string)."""
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def printable_path(path: str | Path) -> str:
    """A path as text that can always be printed and stored: undecodable bytes written as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _name_problem(path: Path, is_error: bool) -> Skipped | None:
    """A Skipped entry for an image or folder whose name is not UTF-8 (other such files are only counted)."""
    try:
        is_folder = path.is_dir()
    except OSError:
        is_folder = False
    if not (is_folder or is_image_name(path)):
        return None
    what = "folder" if is_folder else "file"
    return Skipped(printable_path(path), f"{what} name is not valid UTF-8 ({os.fsencode(path.name)!r}), so it "
                   f"cannot be used{' (nothing inside it was scanned)' if is_folder else ''}. Rename it using "
                   "UTF-8 characters (for example with convmv).", "bad_image", is_error)


def _inode(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _enter(path: Path, st: os.stat_result, visited: set, stack: list, skipped: list[Skipped]) -> None:
    key = (st.st_dev, st.st_ino)
    if key in visited:
        target = os.path.realpath(path)
        skipped.append(Skipped(str(path), f"symlink loop: this folder link points to a folder that is already "
                               f"scanned ({target}). It is not followed; remove the link if it was not meant.",
                               "symlink_loop", False))
        return
    visited.add(key)
    stack.append(path)


def _stat_problem(path: Path, e: OSError, is_error: bool) -> Skipped | None:
    """A Skipped entry for an entry that cannot be stat'ed, or None for a non-image we can ignore."""
    if e.errno == errno.ELOOP:
        return Skipped(str(path), "symlink loop (the link points, through other links, back to itself). "
                       "Point it at a real file or remove it.", "symlink_loop", is_error and is_image_name(path))
    if not is_image_name(path):
        return None
    if path.is_symlink():
        return Skipped(str(path), f"broken symlink (points to '{os.readlink(path)}', which does not exist). "
                       "Fix the link or remove it.", "bad_image", is_error)
    return Skipped(str(path), f"file cannot be read ({e.strerror or e}). Fix its permissions.", "bad_image", is_error)
