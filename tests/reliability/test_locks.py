"""Concurrency (issue 9, item 7): one run per output, stale locks of killed runs, one training per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from lumina2_train.storage.locks import BusyError, lock_path, output_lock, training_lock
from lumina2_train.train import train_lora

HOLD = """
import os, signal, sys, time
from lumina2_train.storage.locks import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    if sys.argv[2] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(float(sys.argv[2]))
"""


def _holder(target, how: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(target), how], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_live_run_blocks_the_output_and_a_killed_one_does_not(tmp_path):
    target = tmp_path / "run"
    proc = _holder(target, "30")
    try:
        with pytest.raises(BusyError, match=rf"run: another training run is writing here \(pid {proc.pid} on .*"
                                            r"choose another save.name, or delete .*\.run\.lock"):
            with output_lock(target):
                pass
    finally:
        proc.kill()
        proc.wait()
    with output_lock(target) as lock:  # its holder was killed: the lock is stale and taken over
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock_path(target).exists()

    killed = _holder(target, "kill")  # SIGKILLs itself while holding the lock
    killed.wait()
    assert lock_path(target).exists()
    with output_lock(target):
        pass


def test_waiting_for_a_lock_and_odd_lock_files(tmp_path):
    target = tmp_path / "style.safetensors"
    proc = _holder(target, "1.0")
    t0 = time.monotonic()
    with output_lock(target, timeout_s=60):  # waits for the other run to finish
        assert time.monotonic() - t0 > 0.3
    proc.wait()
    lock = lock_path(target)
    lock.write_text("garbage")  # garbled: maybe being written right now
    with pytest.raises(BusyError, match="an unreadable lock file"):
        with output_lock(target):
            pass
    os.utime(lock, (time.time() - 3600, time.time() - 3600))  # garbled and old: stale
    with output_lock(target):
        pass
    lock.write_text(json.dumps({"pid": 1, "token": "1_1", "host": "other-machine", "since": 0}))
    with pytest.raises(BusyError, match="pid 1 on other-machine"):  # another host's run: never guessed dead
        with output_lock(target):
            pass


def test_threads_never_hold_one_output_together(tmp_path):
    target, inside, most, busy = tmp_path / "run", [0], [0], []
    barrier = threading.Barrier(8)

    def worker():
        barrier.wait()
        for _ in range(5):
            try:
                with output_lock(target):
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                    time.sleep(0.01)
                    inside[0] -= 1
            except BusyError:
                busy.append(1)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1 and busy


@pytest.mark.slow
def test_trainer_refuses_an_output_that_another_run_holds(run_config, tiny_backbone, tensor_cache, tmp_path):
    lora = tmp_path / "loras" / "shared.safetensors"
    with output_lock(tmp_path / "run"):
        with pytest.raises(BusyError, match="run: another training run is writing here"):
            train_lora(run_config(tmp_path, steps=1), tiny_backbone, tensor_cache, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
    with output_lock(lora):
        with pytest.raises(BusyError, match="shared.safetensors: another training run is writing here"):
            train_lora(run_config(tmp_path, steps=1), tiny_backbone, tensor_cache, run_dir=tmp_path / "other",
                       lora_path=lora)
    assert not lora.exists()
    res = train_lora(run_config(tmp_path, steps=1), tiny_backbone, tensor_cache, run_dir=tmp_path / "other",
                     lora_path=lora)
    assert res.lora_path == lora and lora.is_file() and not lock_path(lora).exists()


def test_training_lock_second_queue_entry_fails_clearly_or_waits():
    started, release, log = threading.Event(), threading.Event(), []

    def first():
        with training_lock("Train LoRA (node 7)"):
            log.append("first in")
            started.set()
            release.wait(10)
        log.append("first out")

    def waiting():
        with training_lock("Train LoRA (node 9)", timeout_s=None):
            log.append("waiting in")

    a = threading.Thread(target=first)
    a.start()
    started.wait(10)
    with pytest.raises(BusyError, match=r"node 8\): another training is already running in this process "
                                        r"\(Train LoRA \(node 7\), for \d+ s\)\. Wait for it to finish"):
        with training_lock("Train LoRA (node 8)"):
            pass
    b = threading.Thread(target=waiting)
    b.start()
    time.sleep(0.2)
    assert log == ["first in"]  # the waiting entry has not started
    release.set()
    a.join()
    b.join()
    assert log == ["first in", "first out", "waiting in"]
    with training_lock("again", timeout_s=0):  # free again
        pass
