"""Crash safety under real signals (issue 9, items 1 and 2).

A child process trains the tiny model with a checkpoint and a LoRA file every step and is killed with
SIGKILL: at random moments, and deterministically just before each rename, replace, fsync and unlink of
its writes. After every kill each checkpoint folder with a final name must load, each LoRA file must
read, and the newest complete checkpoint must never go back; the run then resumes and ends with the same
losses as an uninterrupted run. Children are forked from one "zygote" process that imported torch and
diffusers once (tests/reliability/_child.py), so each episode costs a fork, not an interpreter start.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lumina2_train.files import formats
from lumina2_train.storage.locks import pid_alive
from lumina2_train.train.checkpoint import list_checkpoints, load_checkpoint

CHILD = Path(__file__).with_name("_child.py")
pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="forks training children (POSIX only)")


class Zygote:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, str(CHILD), "zygote"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def start(self, run_dir: Path, steps: int, kill_at: int = 0) -> int:
        self.proc.stdin.write(json.dumps({"run_dir": str(run_dir), "steps": steps, "kill_at": kill_at}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["pid"]

    def wait(self) -> dict:
        line = self.proc.stdout.readline()
        assert line, "the zygote process died"
        return json.loads(line)

    def run(self, run_dir: Path, steps: int, kill_at: int = 0) -> dict:
        self.start(run_dir, steps, kill_at)
        return self.wait()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def zygote():
    z = Zygote()
    yield z
    z.close()


def check_run_folder(run: Path, at_least: int) -> int:
    """Every folder and file under a final name is complete; returns the newest checkpoint's step."""
    root = run / "checkpoints"
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        if p.name.startswith("."):
            assert p.name.endswith(".tmp"), p  # only our temporaries are hidden
            continue
        assert re.fullmatch(r"step_\d{8}(\.old)?", p.name), p
        assert load_checkpoint(p).step == int(p.name[5:13]), p
    done = list_checkpoints(root)
    newest = load_checkpoint(done[-1]).step if done else 0
    assert newest >= at_least, f"the newest complete checkpoint went back from {at_least} to {newest}"
    loras = [*(run / "loras").glob("*.safetensors"), *run.glob("*.safetensors")]
    for f in loras:
        assert formats.read_lora(f), f
    for name in ("config.json", "losses.json"):
        if (run / name).exists():
            json.loads((run / name).read_text())
    return newest


def losses(run: Path) -> list[float]:
    return json.loads((run / "losses.json").read_text())["loss"]


def wait_for_checkpoint(run: Path, after: int, pid: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and pid_alive(pid):
        done = list_checkpoints(run / "checkpoints")
        if done and int(done[-1].name[5:13]) > after:
            return
        time.sleep(0.02)


LONG = 60  # steps of the runs killed at random (about 2 s of training on CPU)


class Reference:
    """Losses of uninterrupted runs by number of steps, and the seconds one step took."""

    def __init__(self, zygote, tmp_path_factory):
        self.zygote, self.factory, self.runs, self.step_s = zygote, tmp_path_factory, {}, 0.0

    def __call__(self, steps: int) -> list[float]:
        if steps not in self.runs:
            run = self.factory.mktemp(f"reference_{steps}")
            t0 = time.monotonic()
            assert self.zygote.run(run, steps)["code"] == 0
            self.step_s = self.step_s or (time.monotonic() - t0) / steps
            self.runs[steps] = losses(run)
        return self.runs[steps]


@pytest.fixture(scope="module")
def reference(zygote, tmp_path_factory):
    return Reference(zygote, tmp_path_factory)


@pytest.mark.slow
def test_sigkill_at_random_moments_never_loses_a_checkpoint(zygote, reference, tmp_path):
    expected, step_s = reference(LONG), reference.step_s
    rng, run, newest, kills = random.Random(9), tmp_path / "run", 0, 0
    for _ in range(8):  # each episode: at least one new checkpoint, then up to ~4 steps' time (any moment)
        pid = zygote.start(run, LONG)
        wait_for_checkpoint(run, newest, pid)
        time.sleep(rng.uniform(0.0, 4 * step_s))
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        kills += zygote.wait()["signal"] == signal.SIGKILL
        newest = check_run_folder(run, newest)
    assert kills >= 5 and 0 < newest
    assert zygote.run(run, LONG)["code"] == 0
    assert check_run_folder(run, newest) == LONG
    assert losses(run) == pytest.approx(expected, rel=1e-5, abs=1e-8)
    assert not [p for p in run.rglob("*") if p.name.endswith((".tmp", ".lock", ".old"))]


@pytest.mark.slow
def test_sigkill_before_each_rename_fsync_and_unlink(zygote, reference, tmp_path):
    """Kill points n = 1, 2, ... of a run: its setup, then whole checkpoint + LoRA + prune cycles. Then the
    same for a finished run, whose last checkpoint is saved again (the step_N.old swap)."""
    steps, run = 30, tmp_path / "run"
    assert zygote.run(run, 1)["code"] == 0
    newest = 1
    for n in range(1, 27):  # setup, then a whole step cycle (the pattern repeats from there)
        status = zygote.run(run, steps, kill_at=n)
        assert status["signal"] == signal.SIGKILL, (n, status)
        newest = check_run_folder(run, newest)
    assert zygote.run(run, steps)["code"] == 0
    assert losses(run) == pytest.approx(reference(steps), rel=1e-5, abs=1e-8)

    done, outcomes = tmp_path / "done", []
    assert zygote.run(done, 2)["code"] == 0
    for n in range(1, 100):  # until the re-save path has no n-th call left
        status = zygote.run(done, 2, kill_at=n)
        outcomes.append(status["signal"] == signal.SIGKILL)
        assert check_run_folder(done, 2) == 2
        if not outcomes[-1]:
            break
    assert outcomes.count(True) >= 20 and outcomes[-1] is False
    assert losses(done) == pytest.approx(reference(2), rel=1e-5, abs=1e-8)
    for folder in (run, done):
        assert not [p for p in folder.rglob("*") if p.name.endswith((".tmp", ".lock", ".old"))]


@pytest.mark.slow
def test_sigint_cancels_with_a_resumable_checkpoint(zygote, reference, tmp_path):
    """Ctrl-C (a real SIGINT: KeyboardInterrupt inside a step) writes a checkpoint; the resume is exact."""
    run = tmp_path / "run"
    pid = zygote.start(run, LONG)
    wait_for_checkpoint(run, 2, pid)
    os.kill(pid, signal.SIGINT)
    status = zygote.wait()
    assert status["code"] == 3, status  # the child saw KeyboardInterrupt re-raised (not swallowed)
    newest = check_run_folder(run, 3)
    assert newest < LONG
    assert zygote.run(run, LONG)["code"] == 0
    assert losses(run) == pytest.approx(reference(LONG), rel=1e-5, abs=1e-8)
