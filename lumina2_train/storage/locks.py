"""Who may write where: one run per output (a lock file beside it) and one training at a time per process.

A lock file holds its owner's pid, process start time and host. When that process is gone (or its pid now
belongs to a process started later) the lock is stale and the next run takes it over. No ComfyUI imports.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from ..errors import Lumina2TrainError

TEMP_MARK = "l2t"  # our temporary files are named .<name>.l2t-<owner>-<random>.tmp (see atomic.py)
UNREADABLE_LOCK_GRACE_S = 30.0  # an empty or garbled lock younger than this may still be being written


class BusyError(Lumina2TrainError):
    """Another run holds this output, or this process is already training."""


def process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), or '0' where the platform hides it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return "0"
    return fields[19].decode() if len(fields) > 19 and fields[0] != b"Z" else "0"


def owner_token(pid: int | None = None) -> str:
    """'<pid>_<start>': names this process in lock files and temporary names, safe against pid reuse."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}_{process_start(pid)}"


def pid_alive(pid: int) -> bool:
    """True while a process with this pid exists (and is not a zombie)."""
    if pid <= 0:
        return False
    if os.name == "nt":
        return _windows_pid_alive(pid)
    try:
        os.kill(pid, 0)  # signal 0: existence check only (never used on Windows, where 0 is CTRL_C_EVENT)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # EPERM: it exists, owned by another user
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError, IndexError):
        return stat.read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z"
    return True


def _windows_pid_alive(pid: int) -> bool:
    import ctypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return ctypes.get_last_error() == 5  # access denied: it exists
    code = ctypes.c_ulong()
    ok = kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
    kernel32.CloseHandle(handle)
    return bool(ok) and code.value == 259  # STILL_ACTIVE


def owner_alive(token: str) -> bool:
    """Whether the process named by an owner_token() is still running (the same process, not a reused pid)."""
    pid_text, _, start = token.partition("_")
    if not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if not pid_alive(pid):
        return False
    now = process_start(pid)
    return start in ("", "0") or now == "0" or now == start


def lock_path(target: str | Path) -> Path:
    """The lock file of an output file or folder: a hidden sibling, `.<name>.lock`."""
    target = Path(target)
    return target.with_name(f".{target.name}.lock")


def _describe(info: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info.get('pid')} on {info.get('host')}, since {since}"


def _read(lock: Path) -> tuple[bytes | None, dict | None]:
    """(raw bytes or None when there is no lock, parsed content or None when garbled)."""
    try:
        raw = lock.read_bytes()
    except FileNotFoundError:
        return None, None
    try:
        info = json.loads(raw)
        return raw, info if isinstance(info, dict) and "token" in info else None
    except ValueError:
        return raw, None


def _is_stale(lock: Path, info: dict | None) -> bool:
    if info is None:  # empty or garbled: a writer killed mid-write (O_EXCL fallback) or a stranger's file
        with contextlib.suppress(OSError):
            return time.time() - lock.stat().st_mtime > UNREADABLE_LOCK_GRACE_S
        return False
    return info.get("host") == socket.gethostname() and not owner_alive(str(info["token"]))


def _create(lock: Path, payload: bytes) -> bool:
    """Create `lock` holding `payload`, never half-written: write a temporary file, then hard-link it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{lock.name}.{TEMP_MARK}-{owner_token()}-", suffix=".tmp", dir=lock.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, lock)  # atomic, and fails if the lock exists
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links on this filesystem: exclusive create instead
            try:
                fd2 = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd2, "wb") as f:
                f.write(payload)
            return True
    finally:
        os.unlink(tmp)


def _break(lock: Path, seen: bytes) -> None:
    """Remove a stale lock, unless someone replaced it between our read and now (then it is put back)."""
    grave = lock.with_name(f".{lock.name}.{TEMP_MARK}-{owner_token()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        os.rename(lock, grave)
    except FileNotFoundError:
        return
    if grave.read_bytes() != seen:
        with contextlib.suppress(OSError):
            os.link(grave, lock)
    grave.unlink()


@contextlib.contextmanager
def output_lock(target: str | Path, *, what: str = "save.name", timeout_s: float = 0.0) -> Iterator[Path]:
    """Hold the lock of `target` (a run folder or a LoRA file) for the duration of the block.

    Args:
        what: the setting that named `target`, quoted in the error.
        timeout_s: how long to wait for another run to finish; 0 fails at once.
    Raises:
        BusyError: another live run holds the lock (its pid, host and start time are in the message).
    """
    lock = lock_path(target)
    lock.parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps({"pid": os.getpid(), "token": owner_token(), "host": socket.gethostname(),
                          "since": time.time(), "target": str(target), "nonce": uuid.uuid4().hex}).encode()
    deadline = time.monotonic() + max(timeout_s, 0.0)
    while not _create(lock, payload):
        raw, info = _read(lock)
        if raw is None:  # released between our attempt and the read
            continue
        if _is_stale(lock, info):
            _break(lock, raw)
            continue
        if time.monotonic() >= deadline:
            who = _describe(info) if info else "an unreadable lock file"
            raise BusyError(f"{target}: another training run is writing here ({who}; {what}). Wait for it to "
                            f"finish, choose another {what}, or delete {lock} if that run is gone")
        time.sleep(0.2)
    try:
        yield lock
    finally:
        if _read(lock)[0] == payload:
            lock.unlink(missing_ok=True)


# The one piece of process-wide state in the library: a process trains one run at a time (one GPU, one
# ComfyUI queue). ComfyUI runs its queue in one thread; this guards API callers and other threads too.
_TRAINING = threading.Lock()
_TRAINING_OWNER: list[tuple[str, float]] = []


@contextlib.contextmanager
def training_lock(owner: str, *, timeout_s: float | None = 0.0) -> Iterator[None]:
    """Hold this process's training slot while the block runs.

    Args:
        owner: who trains (a node id, an output name), quoted to a caller that finds the slot taken.
        timeout_s: wait this long for the running training to end; None waits as long as it takes, 0 fails at once.
    Raises:
        BusyError: another training is still running in this process after `timeout_s`.
    """
    got = _TRAINING.acquire(timeout=-1 if timeout_s is None else max(timeout_s, 0.0)) if timeout_s != 0 \
        else _TRAINING.acquire(blocking=False)
    if not got:
        who, since = _TRAINING_OWNER[-1] if _TRAINING_OWNER else ("another run", time.time())
        raise BusyError(f"{owner}: another training is already running in this process ({who}, for "
                        f"{time.time() - since:.0f} s). Wait for it to finish or cancel it, then queue this one "
                        "again")
    _TRAINING_OWNER.append((owner, time.time()))
    try:
        yield
    finally:
        _TRAINING_OWNER.clear()
        _TRAINING.release()
