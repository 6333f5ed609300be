"""`python -m lumina2_train.bench.scale [--files N]`: time and peak memory of `scan` over N tiny images.

Writes N small PNGs with captions into one flat folder (a temporary one unless --dir), then scans it in a
fresh Python process and reports wall time and peak RSS (docs/benchmarks.md, "Scale"). CPU only; no model.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("lumina2_train")

_CHILD = """
import json, resource, sys, time
from lumina2_train.config import DataConfig, DatasetConfig
from lumina2_train.data import scan_dataset
r0 = resource.getrusage(resource.RUSAGE_SELF)
rss0, cpu0 = r0.ru_maxrss, r0.ru_utime + r0.ru_stime
t0 = time.perf_counter()
handle = scan_dataset(DataConfig(datasets=(DatasetConfig(path=sys.argv[1], resolution=64, min_size_px=16),)))
seconds = time.perf_counter() - t0
r1 = resource.getrusage(resource.RUSAGE_SELF)
json.dump({"seconds": seconds, "cpu_seconds": r1.ru_utime + r1.ru_stime - cpu0, "used": len(handle.items),
           "rss_before_kib": rss0, "peak_rss_kib": r1.ru_maxrss,
           "skipped": len(handle.report.datasets[0].skipped)}, sys.stdout)
"""


def tiny_png(seed: int = 0) -> bytes:
    """A 32x32 RGB PNG (about 100 bytes)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (seed % 256, 128, 64)).save(buf, format="PNG")
    return buf.getvalue()


def write_dataset(folder: Path, n_files: int) -> float:
    """n_files images img_000000.png ... with .txt captions; returns the seconds it took."""
    t0 = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    pngs = [tiny_png(s) for s in range(16)]
    for i in range(n_files):
        stem = folder / f"img_{i:06d}"
        stem.with_suffix(".png").write_bytes(pngs[i % 16])
        stem.with_suffix(".txt").write_text(f"tiny picture number {i}, tag{i % 7}", encoding="utf-8")
    return time.perf_counter() - t0


def measure(folder: Path) -> dict:
    """Scan `folder` in a fresh interpreter: {"seconds", "used", "peak_rss_kib", "rss_before_kib", ...}."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                         os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", _CHILD, str(folder)], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(out.stdout)


def run_scale(n_files: int, folder: Path | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="lumina2t_scale_") as tmp:
        root = folder or Path(tmp) / "dataset"
        write_s = write_dataset(root, n_files) if not any(root.glob("*.png")) else 0.0
        result = measure(root)
    result.update(files=n_files, write_seconds=write_s, cpus=os.cpu_count(),
                  per_file_us=result["seconds"] / max(n_files, 1) * 1e6,
                  rss_growth_mib=(result["peak_rss_kib"] - result["rss_before_kib"]) / 1024)
    return result


def markdown_row(r: dict) -> str:
    return (f"| {r['files']:,} | {r['seconds']:.1f} s | {r['cpu_seconds']:.1f} s | {r['per_file_us']:.0f} µs "
            f"| {r['peak_rss_kib'] / 1024:.0f} MiB | {r['rss_growth_mib']:.0f} MiB | {r['cpus']} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lumina2_train.bench.scale", description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=100_000, help="number of images (default 100000)")
    p.add_argument("--dir", type=Path, help="use (or fill) this folder instead of a temporary one")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    r = run_scale(args.files, args.dir)
    log.info("%s", json.dumps(r, indent=2))
    log.info("| images | scan time | CPU time | per image | peak RSS | RSS growth | CPUs |\n"
             "|---|---|---|---|---|---|---|\n%s",
             markdown_row(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
