"""Atomic file writes: write beside the target, fsync, then rename. A crash at any moment leaves either the
old file or the new one under the final name, never a half-written one.

Temporary names are `.<final name>.l2t-<pid>_<start>-<random>.tmp`; `remove_stale_temps` deletes those of
dead processes and nothing else. A full disk (ENOSPC, EDQUOT, or EFBIG from a file-size limit) becomes a
DiskFullError whose message names the file and what was kept. No ComfyUI imports.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import Lumina2TrainError
from .locks import TEMP_MARK, owner_alive, owner_token

log = logging.getLogger(__name__)
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_TEMP_NAME = re.compile(rf"^\..+\.{TEMP_MARK}-(\d+_\d+)-[A-Za-z0-9_]+\.tmp$")
_OS_ERROR = re.compile(r"os error (\d+)")  # how Rust libraries (safetensors) report an errno


class DiskFullError(Lumina2TrainError, OSError):
    pass


class WriteError(Lumina2TrainError, OSError):
    """An output file whose folder cannot be made or written (a file in the way, no permission, read-only)."""


def write_error(target: Path, exc: OSError) -> WriteError:
    err = WriteError(f"{target}: cannot be written ({exc.strerror or exc}). Make sure {target.parent} is a folder "
                     "you can write to (no file in its place), or choose another output folder")
    err.errno = exc.errno
    return err


def temp_prefix(name: str) -> str:
    """The start of a temporary name for final name `name` (used with mkstemp/mkdtemp and suffix '.tmp')."""
    return f".{name}.{TEMP_MARK}-{owner_token()}-"


def error_errno(exc: BaseException) -> int | None:
    """The errno behind an exception: OSError's own, or the one quoted by safetensors' Rust errors."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno
    found = _OS_ERROR.search(str(exc))
    return int(found.group(1)) if found else None


def is_disk_full(exc: BaseException) -> bool:
    return error_errno(exc) in DISK_FULL_ERRNOS


def disk_full_error(target: str | Path, exc: BaseException, kept: str) -> DiskFullError:
    """The user's message for a write of `target` that ran out of space; `kept` says what is still there."""
    code = error_errno(exc)
    reason = os.strerror(code) if code is not None else str(exc)
    target = Path(target)
    return DiskFullError(f"{target}: no space left to write it ({reason}); {kept}. Free space on the drive of "
                         f"{target.parent} (or raise the file-size limit), or choose another output folder")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it is fsynced and renamed over `path`.

    Raises:
        DiskFullError: the disk (or a file-size limit) ran out; the old file, if any, is untouched.
    """
    target = Path(path)
    tmp: Path | None = None
    try:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(target.name), suffix=".tmp", dir=target.parent)
        except OSError as e:
            if is_disk_full(e):
                raise
            raise write_error(target, e) from e
        os.close(fd)
        tmp = Path(tmp_name)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException as e:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(e, Exception) and not isinstance(e, DiskFullError) and is_disk_full(e):
            raise disk_full_error(target, e, "nothing was replaced") from e
        raise


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` and move the result to `path` atomically."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_save_safetensors(tensors: dict, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda p: save_file(tensors, str(p), metadata=metadata))


class _Sink:
    """A file for torch.save that remembers the OSError of a failed write (torch replaces it with its own)."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def save_torch(obj, path: str | Path) -> None:
    """torch.save to `path`, raising the OSError (errno kept) when the disk fills up."""
    import torch

    with open(path, "wb") as f:
        sink = _Sink(f)
        try:
            torch.save(obj, sink)
        except RuntimeError:
            if sink.error is not None:
                raise sink.error from None
            raise


def remove_stale_temps(folder: str | Path) -> int:
    """Delete our temporary files and folders in `folder` (not below) left by processes that are gone.

    Only names of the form `.<name>.l2t-<pid>_<start>-<random>.tmp` whose process is dead are touched;
    symlinks are unlinked, never followed. Returns how many were removed.
    """
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    removed = 0
    for entry in entries:
        found = _TEMP_NAME.match(entry.name)
        if not found or found.group(1) == owner_token() or owner_alive(found.group(1)):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed += 1
        except OSError as e:
            log.warning("%s: could not remove this leftover temporary file (%s)", entry.path, e)
    if removed:
        log.info("%s: removed %d temporary file(s) left by an interrupted run", folder, removed)
    return removed
