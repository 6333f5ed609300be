"""Child processes for the fault tests: killed by real signals, or run on a real small disk.

Run as a script: `python _child.py zygote` (imports torch and diffusers once, then forks one training
episode per JSON line on stdin: the test SIGKILLs the forked child), `python _child.py diskfull-train DIR`
and `python _child.py diskfull-cache DIR` (print one JSON report line). Not a test module itself.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # the library, and the tests' builders (as pytest's pythonpath)

from lumina2_train.config import RunConfig  # noqa: E402
from lumina2_train.train import TensorCache, train_lora  # noqa: E402
from lumina2_train.train.checkpoint import list_checkpoints  # noqa: E402

import builders  # noqa: E402

NAME = "crash"
BALLAST = "ballast.bin"


def tensor_cache() -> TensorCache:
    """The same four samples as tests/conftest.py's tensor_cache, with the empty prompt only."""
    return builders.tensor_cache(prompts={"": 1})


def run_config(out: Path, steps: int, resume: bool, every: int = 1, keep_last: int = 2) -> RunConfig:
    return builders.run_config(out, str(out) if resume and list_checkpoints(out / "checkpoints") else "",
                               save=dict(name=NAME, every_n_steps=every, keep_last=keep_last), steps=steps)


def train(run_dir: Path, steps: int, **kw):
    from lumina2_train.backbones.diffusers import DiffusersBackbone
    from lumina2_train.tiny import make_tiny_transformer

    backbone = DiffusersBackbone.from_model(make_tiny_transformer(seed=0))
    return train_lora(run_config(run_dir, steps, resume=kw.pop("resume", True), **kw), backbone, tensor_cache(),
                      run_dir=run_dir)


# ---------------------------------------------------------------- SIGKILL episodes (forked from the zygote)

def _kill_at(n: int) -> None:
    """SIGKILL this process just before its n-th rename, replace, fsync or unlink (a deterministic crash)."""
    count = [0]

    def wrap(fn):
        def hooked(*a, **k):
            count[0] += 1
            if count[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*a, **k)
        return hooked

    for name in ("rename", "replace", "fsync", "unlink"):
        setattr(os, name, wrap(getattr(os, name)))


def episode(args: dict) -> int:
    torch.set_num_threads(1)
    if args.get("kill_at"):
        _kill_at(args["kill_at"])
    try:
        train(Path(args["run_dir"]), args["steps"])
    except KeyboardInterrupt:
        return 3
    return 0


def zygote() -> None:
    from diffusers import Lumina2Transformer2DModel  # noqa: F401  (imported once, before any fork)

    for line in sys.stdin:
        args = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = episode(args)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        sys.stdout.write(json.dumps({"pid": pid}) + "\n")
        sys.stdout.flush()
        _, status = os.waitpid(pid, 0)
        sys.stdout.write(json.dumps({"status": status, "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status)
                                     else 0, "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None})
                         + "\n")
        sys.stdout.flush()


# ---------------------------------------------------------------- a real full disk

def fill(folder: Path, leave_bytes: int, mode: str) -> None:
    """Leave about `leave_bytes` writable: a ballast file on the small tmpfs, or a file-size limit."""
    if mode == "fsize":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (leave_bytes, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        return
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    with open(folder / BALLAST, "wb") as f:
        f.write(b"\0" * max(free - leave_bytes, 0))


def unfill(folder: Path, mode: str) -> None:
    if mode == "fsize":
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    else:
        (folder / BALLAST).unlink()


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != BALLAST)


def diskfull_train(disk: Path, mode: str, reference: Path) -> dict:
    """2 steps, then the disk fills: step 3's checkpoint fails; then space comes back and the run resumes."""
    from lumina2_train.files import formats
    from lumina2_train.storage.atomic import DiskFullError
    from lumina2_train.train.checkpoint import load_checkpoint

    report: dict = {"mode": mode}
    ref = train(reference, 4)
    run = disk / "run"
    train(run, 2, every=1)
    lora = run / "loras" / f"{NAME}_step000001.safetensors"
    before = lora.read_bytes()
    fill(disk, 16 * 1024, mode)
    try:
        train(run, 4, every=1)
        report["error"] = None
    except DiskFullError as e:
        report["error"] = str(e)
    report["lora_write_error"] = None
    try:  # an existing LoRA file replaced on a full disk
        formats.save_state_dict({"diffusion_model.x.lora_A.weight": torch.randn(64, 256)}, lora, "fp32", None)
    except DiskFullError as e:
        report["lora_write_error"] = str(e)
    report["lora_unchanged"] = lora.read_bytes() == before
    report["files_when_full"] = _files(run)
    report["checkpoints_when_full"] = [load_checkpoint(p).step for p in list_checkpoints(run / "checkpoints")]
    report["loras_load"] = all(formats.load_state_dict(p)[0] for p in (run / "loras").glob("*.safetensors"))
    unfill(disk, mode)
    res = train(run, 4, every=1)
    report.update(resumed_step=res.step, losses=res.losses, reference_losses=ref.losses,
                  files_after=_files(run))
    return report


class StubEncoders:
    """Deterministic random 'encoders' (the write path is under test, not the models)."""

    text_identity, vae_identity = "stub-text", "stub-vae"

    def __init__(self):
        self.images = 0

    def latent_encoder(self):
        outer = self

        class Latent:
            def encode(self, pixels):
                outer.images += pixels.shape[0]
                gen = torch.Generator().manual_seed(int(pixels.sum().item() * 1000) % 2**31)
                return torch.randn(pixels.shape[0], 16, pixels.shape[2] // 8, pixels.shape[3] // 8, generator=gen)

        return Latent()

    def text_encoder(self):
        class Text:
            def encode(self, texts, max_tokens):
                return [torch.randn(min(len(t) // 4 + 1, max_tokens), 32, generator=torch.Generator().manual_seed(
                    len(t))) for t in texts]

        return Text()

    def release(self):
        pass


def diskfull_cache(disk: Path, mode: str, images: Path) -> dict:
    """Build a cache on a disk that fills up: clear error, only complete entries; then it resumes."""
    from lumina2_train.cache import build_cache
    from lumina2_train.cache.store import read_entry
    from lumina2_train.config import CacheConfig, DataConfig, DatasetConfig
    from lumina2_train.data import scan_dataset
    from lumina2_train.errors import CacheError

    data = scan_dataset(DataConfig(datasets=(DatasetConfig(path=str(images), resolution=64, min_size_px=16,
                                                           flip=True),)))
    cfg, root = CacheConfig(), disk / "cache"
    report: dict = {"mode": mode}
    fill(disk, 2048 if mode == "fsize" else 12 * 1024, mode)
    first = StubEncoders()
    try:
        build_cache(data, first, cfg, root=root, progress=lambda *_: None)
        report["error"] = None
    except CacheError as e:
        report["error"] = str(e)
    entries = sorted(root.rglob("*.safetensors"))
    report["entries_when_full"] = len(entries)
    report["latents_when_full"] = len(list((root / "latents").rglob("*.safetensors")))
    report["all_complete"] = all(bool(read_entry(p, p.stem)[0]) for p in entries)
    report["leftovers"] = [str(p) for p in root.rglob("*") if p.is_file() and not p.name.endswith(".safetensors")]
    unfill(disk, mode)
    second = StubEncoders()
    handle = build_cache(data, second, cfg, root=root, progress=lambda *_: None)
    report.update(images_total=2 * len(data.items), images_first=first.images, images_second=second.images,
                  samples_ok=all(handle.sample(i).latent.shape[0] == 16 for i in range(len(handle))))
    return report


def main() -> None:
    mode = sys.argv[1]
    if mode == "zygote":
        zygote()
        return
    disk, fill_mode, other = Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
    report = diskfull_train(disk, fill_mode, other) if mode == "diskfull-train" else \
        diskfull_cache(disk, fill_mode, other)
    sys.stdout.write("REPORT " + json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
