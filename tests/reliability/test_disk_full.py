"""A real full disk while caching, checkpointing and saving a LoRA (issue 9, item 4).

The disk is a 4 MiB tmpfs mounted in a private mount namespace (`unshare -m` as root, `unshare -r -m` as a
user where user namespaces are allowed), filled with a ballast file until a few KiB are left: writes fail
with ENOSPC. Where no namespace can be made, the child lowers RLIMIT_FSIZE instead: writes past the limit
fail with EFBIG, which we treat as a full disk. LUMINA2T_DISKFULL=fsize forces the fallback.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = Path(__file__).with_name("_child.py")
MOUNT = 'mount -t tmpfs -o size=4m lumina2t-test "$0" && exec "$@"'


@functools.cache
def mechanism() -> tuple[str, tuple[str, ...]]:
    """('tmpfs', unshare command) when a private tmpfs can be mounted here, else ('fsize', ())."""
    if os.environ.get("LUMINA2T_DISKFULL") == "fsize" or not shutil.which("unshare") or sys.platform != "linux":
        return "fsize", ()
    cmd = ("unshare", "-m") if os.geteuid() == 0 else ("unshare", "-r", "-m")
    probe = subprocess.run([*cmd, "sh", "-c", MOUNT, "/tmp", "true"], capture_output=True)
    return ("tmpfs", cmd) if probe.returncode == 0 else ("fsize", ())


def run_child(scenario: str, disk: Path, other: Path) -> dict:
    mode, cmd = mechanism()
    disk.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, str(CHILD), scenario, str(disk), mode, str(other)]
    full = [*cmd, "sh", "-c", MOUNT, str(disk), *args] if mode == "tmpfs" else args
    out = subprocess.run(full, capture_output=True, text=True, timeout=300)
    lines = [x for x in out.stdout.splitlines() if x.startswith("REPORT ")]
    assert out.returncode == 0 and lines, f"child failed ({mode}):\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return json.loads(lines[-1][len("REPORT "):])


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "win32", reason="needs POSIX resource limits")
def test_full_disk_while_caching_keeps_complete_entries_and_resumes(tmp_path, write_image):
    images = tmp_path / "images"
    for i, size in enumerate([(64, 64), (64, 64), (96, 64), (64, 96)]):
        write_image(images / f"img{i}.png", size, caption=f"picture {i}", seed=i)
    r = run_child("diskfull-cache", tmp_path / "disk", images)
    how = f"(mechanism: {r['mode']})"
    assert r["error"] and "no space left for a cache entry" in r["error"], how
    assert "Free disk space" in r["error"] and "cache.dir" in r["error"], how
    assert r["leftovers"] == [], how  # no temporary file, no partial entry
    assert r["all_complete"], how  # every entry with a final name reads back with its own key
    assert r["latents_when_full"] < r["images_total"], how
    # the second pass encodes only what the first could not write
    assert r["images_second"] == r["images_total"] - r["latents_when_full"], how
    assert r["samples_ok"], how


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "win32", reason="needs POSIX resource limits")
def test_full_disk_while_checkpointing_keeps_the_last_checkpoint_and_resumes(tmp_path):
    r = run_child("diskfull-train", tmp_path / "disk", tmp_path / "reference")
    how = f"(mechanism: {r['mode']})"
    assert r["error"] and "step_00000003: no space left to write it" in r["error"], how
    assert "the last complete checkpoint, step_00000002, is kept" in r["error"], how
    assert r["checkpoints_when_full"] == [1, 2], how
    assert not [f for f in r["files_when_full"] if f.endswith(".tmp") or "step_00000003" in f], how
    assert r["loras_load"], how
    assert r["lora_write_error"] and "nothing was replaced" in r["lora_write_error"], how
    assert r["lora_unchanged"], how
    assert r["resumed_step"] == 4, how
    assert r["losses"] == pytest.approx(r["reference_losses"], rel=1e-5, abs=1e-8), how
    assert not [f for f in r["files_after"] if f.endswith((".tmp", ".lock"))], how
