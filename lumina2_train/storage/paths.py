"""Names and folders that come from users and shared workflows, confined to the folders we may write.

A ComfyUI workflow is a file anyone can share, so every name or path in it (output names, subfolders,
cache and resume folders) is hostile until checked here: `confine(root, value, what=...)` returns a path
inside `root` or raises PathError naming the input field. Datasets are read where the user points; writes
go only under roots passed to these functions. Pure library: no ComfyUI imports; only `new_run_folder`
creates anything.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
import unicodedata
from pathlib import Path

from ..errors import ConfigError

MAX_NAME_CHARS = 240  # a whole relative name
MAX_PART_BYTES = 255  # one path component, in UTF-8 (the common file-system limit)
_WINDOWS_FORBIDDEN = set('<>:"|?*')
_WINDOWS_DEVICES = re.compile(r"^(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³]|conin\$|conout\$)$", re.IGNORECASE)
_DRIVE = re.compile(r"^[A-Za-z]:")
_SEPARATORS = re.compile(r"[/\\]")
_SPECIAL = set("./\\:")
# slashes that Unicode normalisation keeps but Windows' "best fit" code-page conversion turns into / or \
_SLASH_LOOKALIKES = set("\u2215\u2044\u29f5\u29f8\u29f9\ufe68")
LORA_SUFFIX = ".safetensors"


class PathError(ConfigError):
    """A name or folder from a user or workflow that would read or write outside its place."""


def _fail(what: str, value: str, problem: str, fix: str) -> PathError:
    return PathError(f"{what}: {problem} (got {value!r}). {fix}")


def _check_text(value, what: str) -> str:
    if not isinstance(value, str):
        raise _fail(what, repr(value), "must be text", "Give a folder or file name")
    for c in value:
        if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            raise _fail(what, value, f"contains the invisible or control character U+{ord(c):04X}",
                        "Type the name again with plain characters")
    return value


def name_problem(value: str, what: str) -> str | None:
    """Why `value` is not a safe relative name (folder/sub/name), or None. Pure: touches no file."""
    try:
        relative_parts(value, what)
    except PathError as e:
        return e.problems[0]
    return None


def relative_parts(value: str, what: str) -> tuple[str, ...]:
    """The components of a relative name, every one checked ('a/b', 'a\\b'; '.' and empty parts dropped).

    Raises:
        PathError: empty; absolute (/x, C:, \\\\server); '..'; NUL, control or invisible characters;
            characters Windows forbids; reserved device names (CON, NUL, COM1, ...); names starting with '.'
            or ending with '.' or a space; look-alikes that Unicode NFKC turns into '.', '/' or '\\'; too long.
    """
    value = _check_text(value, what)
    fix = "Use letters, digits, '-', '_', ' ' and '/' between subfolders"
    if not value.strip():
        raise _fail(what, value, "is empty", "Give a name")
    if len(value) > MAX_NAME_CHARS:
        raise _fail(what, value[:40] + "...", f"is longer than {MAX_NAME_CHARS} characters", "Use a shorter name")
    if value.startswith(("/", "\\", "~")) or _DRIVE.match(value):
        raise _fail(what, value, "is an absolute path; only a name inside the output folder is allowed",
                    "Give a name relative to that folder")
    for c in value:
        if c in _SLASH_LOOKALIKES or (c not in _SPECIAL and set(unicodedata.normalize("NFKC", c)) & _SPECIAL):
            raise _fail(what, value, f"contains U+{ord(c):04X}, a look-alike that some systems read as "
                        "'.', '/', '\\' or ':'", fix)
    parts = [p for p in _SEPARATORS.split(value) if p not in ("", ".")]
    for part in parts:
        _check_part(part, value, what, fix)
    if not parts:
        raise _fail(what, value, "names no file or folder", "Give a name")
    return tuple(parts)


def _check_part(part: str, value: str, what: str, fix: str) -> None:
    if part == "..":
        raise _fail(what, value, "uses '..' to leave its folder", fix)
    bad = sorted(set(part) & _WINDOWS_FORBIDDEN)
    if bad:
        raise _fail(what, value, f"contains {''.join(bad)!r}, which file names may not hold", fix)
    if part.startswith("."):
        raise _fail(what, value, f"part {part!r} starts with '.' (hidden and reserved names)", fix)
    if part != part.rstrip(". ") or part != part.lstrip(" "):
        raise _fail(what, value, f"part {part!r} starts or ends with a space or ends with '.'", fix)
    if _WINDOWS_DEVICES.match(part.split(".")[0].rstrip(" ")):
        raise _fail(what, value, f"part {part!r} is a reserved device name on Windows", "Choose another name")
    if len(part.encode("utf-8")) > MAX_PART_BYTES:
        raise _fail(what, value, f"part {part[:20]!r}... is longer than {MAX_PART_BYTES} bytes", "Shorten it")


def _inside(root: Path, path: Path) -> bool:
    return path == root or root in path.parents


def confine(root: str | Path, value: str, *, what: str, allow_absolute: bool = False) -> Path:
    """`value` as a path inside `root`, with every symbolic link resolved.

    Args:
        root: the folder writes may go to (ComfyUI's models/loras or output folder, our cache root). Trusted.
        value: a relative name from a user or workflow; with `allow_absolute`, also an absolute path that
            already lies inside `root` (a pasted resume folder).
        what: the input field, quoted in errors ('save.name', 'subfolder', 'resume_from').
    Raises:
        PathError: `value` is unsafe (see relative_parts) or resolves outside `root` (through '..' or a
            symbolic link, existing or dangling).
    """
    root_path = Path(os.path.realpath(Path(root).expanduser()))
    _check_text(value, what)
    if allow_absolute and (os.path.isabs(value) or _DRIVE.match(value)):
        candidate = Path(value)
    else:
        candidate = root_path.joinpath(*relative_parts(value, what))
    resolved = Path(os.path.realpath(candidate))
    if not _inside(root_path, resolved):
        raise _fail(what, value, f"leads outside {root_path} (to {resolved})",
                    "Give a name inside that folder; symbolic links out of it are not followed")
    return resolved


def lora_file(loras_root: str | Path, name: str, *, subfolder: str = "", what: str = "save.name") -> Path:
    """The LoRA file for output name `name` (optionally in `subfolder`) under ComfyUI's models/loras.

    '.safetensors' is appended unless the name ends with it. Raises PathError like `confine`.
    """
    stem = name[: -len(LORA_SUFFIX)] if name.lower().endswith(LORA_SUFFIX) else name
    relative_parts(stem, what)
    folder = confine(loras_root, subfolder, what="subfolder") if subfolder.strip() else \
        Path(os.path.realpath(loras_root))
    return confine(folder, stem + LORA_SUFFIX, what=what)


def run_folder(output_root: str | Path, name: str, *, what: str = "save.name") -> Path:
    """The run folder for output name `name` under the output root (not created)."""
    return confine(output_root, name, what=what)


def new_run_folder(output_root: str | Path, name: str, *, what: str = "save.name") -> Path:
    """Create and return a fresh run folder: `name`, else `name_2`, `name_3`, ... (never one that exists).

    Creation is exclusive, so two runs started at once with the same name get two folders.
    """
    base = run_folder(output_root, name, what=what)
    writable_folder(base.parent, what="save.output_dir")
    candidate, n = base, 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1
            candidate = base.with_name(f"{base.name}_{n}")
        except OSError as e:
            raise unusable_folder(candidate, what, e) from None


def resume_folder(output_root: str | Path, value: str, *, what: str = "resume_from") -> Path:
    """A run or checkpoint folder to resume, which must lie inside the output root (a resumed run writes
    there). Relative names are taken from the output root; absolute paths must already be inside it."""
    path = confine(output_root, value, what=what, allow_absolute=True)
    if not path.is_dir():
        raise _fail(what, value, f"is not a folder ({path})", "Give a run folder or one of its checkpoints/step_*")
    return path


def cache_folder(cache_root: str | Path, value: str, *, what: str = "cache.dir") -> Path:
    """The cache folder for a workflow's cache name: inside the cache root ('' means the root itself)."""
    if not value.strip():
        return Path(os.path.realpath(cache_root))
    return confine(cache_root, value, what=what, allow_absolute=True)


def readable_folder(value: str, *, what: str) -> Path:
    """A folder to read from (a dataset): anywhere the user points, but it must be a folder and the text
    must be a plain path. Nothing is ever written there."""
    _check_text(value, what)
    path = Path(os.path.realpath(Path(value).expanduser()))
    if not path.is_dir():
        raise _fail(what, value, "is not an existing folder", "Check the path")
    return path


def _in_the_way(path: Path) -> Path | None:
    """The first part of `path` that exists but is not a folder (a file where a folder must go), or None."""
    for part in (*reversed(path.parents), path):
        if part.exists() and not part.is_dir():
            return part
    return None


def _nearest_existing(path: Path) -> Path:
    for part in (path, *path.parents):
        if part.exists():
            return part
    return path


def unusable_folder(path: Path, what: str, e: OSError) -> PathError:
    """The message for an output folder that cannot be created or written, naming the setting `what`."""
    blocker = _in_the_way(path)
    near = _nearest_existing(path)
    if blocker is not None:
        problem = f"{blocker} is a file, not a folder" + ("" if blocker == path else f", so {path} cannot be made")
        fix = "Move that file away, or choose another folder"
    elif e.errno in (errno.EACCES, errno.EPERM):
        problem = f"no permission to create or write in {near} ({e.strerror})"
        fix = "Fix its permissions, or choose a folder you can write to"
    elif e.errno == errno.EROFS:
        problem, fix = f"{near} is on a read-only file system", "Choose a folder on a writable drive"
    else:
        problem = f"{path} cannot be created or written ({e.strerror or e}, in {near})"
        fix = "Choose a folder on a normal, writable drive"
    return PathError(f"{what}: {problem} (got {str(path)!r}). {fix}")


def writable_folder(path: str | Path, *, what: str, create: bool = True) -> Path:
    """`path` as a folder we can write in, checked before anything heavy runs: created (with its parents) and
    probed with a temporary file that is removed again. With `create=False` nothing is left behind: the
    nearest existing parent is probed instead.

    Raises:
        PathError: a file is in the way, no permission, a read-only file system, or any other OSError,
            naming the setting `what` (save.output_dir, cache.dir, ...) and the folder.
    """
    folder = Path(os.path.abspath(Path(path).expanduser()))
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        probe = folder
        while not create and not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(probe))
        from .atomic import temp_prefix  # a leftover (a kill right here) is cleaned like any temporary

        fd, name = tempfile.mkstemp(prefix=temp_prefix("write-check"), suffix=".tmp", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise unusable_folder(folder, what, e) from None
    return folder


def writable_file(path: str | Path, *, what: str, create: bool = True) -> Path:
    """`path` as a file we can write: no folder in its place, and its folder writable (`writable_folder`).

    Raises:
        PathError: naming the setting `what`, the path, the problem and the fix.
    """
    file = Path(os.path.abspath(Path(path).expanduser()))
    if file.is_dir():
        raise PathError(f"{what}: {file} is a folder where the file goes (got {str(path)!r}). Choose another file "
                        "name, or move that folder away")
    writable_folder(file.parent, what=what, create=create)
    return file
