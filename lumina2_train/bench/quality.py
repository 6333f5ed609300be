"""`python -m lumina2_train.bench.quality`: does fp8 compute train like the exact bf16 step? (CUDA GPU.)

The full-size Lumina2 with seeded random bf16 weights (the bench's), a LoRA trained for `--steps` optimizer
steps by the library's Trainer on a fixed set of cached-style samples, once per setting below, every run
from the same seed (so every step draws the same sample, σ and noise in every run). Batch 1, so each step's
loss belongs to one σ. Reported against the bf16 run: the mean over steps of |loss − loss_bf16| / loss_bf16,
the same per σ bin, and the mean loss of the last quarter of the run (whether training went the same way).
The fp8 storage of the base (an accepted trade-off since it landed) is run too, for scale.
No ComfyUI imports.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..config import AdapterConfig, ModelConfig, RunConfig, SaveConfig, TrainConfig
from ..train import TensorCache, TensorSample
from ..train.batches import DataPosition
from ..train.loop import Trainer
from . import models

log = logging.getLogger(__name__)
# label -> (model.base_precision, model.base_compute, train.saved_activations)
SETTINGS = {"bf16 (exact)": ("no_change", "bf16", "bf16"), "fp8 base storage": ("fp8", "bf16", "bf16"),
            "fp8 compute": ("no_change", "fp8", "bf16"), "fp8 compute, fp8 activations": ("no_change", "fp8", "fp8")}
BINS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def _cache(n: int, res: int, seed: int = 3) -> TensorCache:
    gen = torch.Generator().manual_seed(seed)
    cfg = models.FULL_DIT
    return TensorCache([TensorSample(latent=torch.randn(cfg["in_channels"], res // 8, res // 8, generator=gen),
                                     cap_feats=torch.randn(256, cfg["cap_feat_dim"], generator=gen))
                        for _ in range(n)])


def train_losses(setting: tuple[str, str, str], native: dict, args, device) -> tuple[list[float], list[float], float]:
    """(loss per step, σ per step, seconds) of one run."""
    storage, compute, activations = setting
    backbone = models.diffusers_backbone(models.FULL_DIT, native, device)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = RunConfig(model=ModelConfig(base_precision=storage, base_compute=compute),
                        adapter=AdapterConfig(rank=16, alpha=16.0),
                        train=TrainConfig(steps=args.steps, batch_size=1, lr=args.lr, precision="bf16",
                                          checkpointing=args.ckpt, compile=args.compile, seed=0,
                                          saved_activations=activations),
                        save=SaveConfig(output_dir=tmp)).validate(need_data=False)
        trainer = Trainer(cfg, backbone, _cache(args.samples, args.res), run_dir=tmp)
        t0 = time.perf_counter()
        with trainer.micro_batches(DataPosition()) as feed:
            for _ in range(args.steps):
                trainer._optimizer_step(feed)
        seconds = time.perf_counter() - t0
        losses, sigmas = list(trainer.state.losses), list(trainer.state.sigmas)
        del trainer
    del backbone
    torch.cuda.empty_cache()
    return losses, sigmas, seconds


def compare(ref: list[float], other: list[float], sigmas: list[float]) -> dict:
    rel = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(other, ref)]
    bins = {}
    for lo, hi in zip(BINS, BINS[1:]):
        picked = [r for r, s in zip(rel, sigmas) if lo <= s < hi or (hi == 1.0 and s == 1.0)]
        bins[f"{lo:.1f}-{hi:.1f}"] = {"steps": len(picked), "mean_rel_diff": statistics.fmean(picked) if picked else None}
    q = max(1, len(ref) // 4)
    return {"mean_rel_diff": statistics.fmean(rel), "max_rel_diff": max(rel), "per_sigma_bin": bins,
            "last_quarter_mean_loss": statistics.fmean(other[-q:]), "bf16_last_quarter_mean_loss":
            statistics.fmean(ref[-q:])}


def render(report: dict) -> str:
    a = report["args"]
    lines = [f"Quality guard: {a['steps']} steps, {a['res']}² batch 1, LoRA r16 attention, lr {a['lr']}, "
             f"{'compiled' if a['compile'] else 'eager'}, checkpointing {a['ckpt']}; {report['gpu']}, "
             f"torch {report['torch']}", "",
             "| setting | mean rel. loss diff | max | " + " | ".join(f"σ {b}" for b in report["bins"]) +
             " | last-quarter mean loss | s/step |", "|---|---|---|" + "---|" * len(report["bins"]) + "---|---|"]
    for name, r in report["runs"].items():
        c = r.get("vs_bf16")
        cells = ["-", "-"] + ["-"] * len(report["bins"]) if c is None else \
            [f"{c['mean_rel_diff']:.2e}", f"{c['max_rel_diff']:.2e}"] + [
                "-" if b["mean_rel_diff"] is None else f"{b['mean_rel_diff']:.2e} ({b['steps']})"
                for b in c["per_sigma_bin"].values()]
        last = statistics.fmean(r["losses"][-max(1, len(r["losses"]) // 4):])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {last:.5f} | {r['seconds'] / len(r['losses']):.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--res", type=int, default=512)
    p.add_argument("--samples", type=int, default=16, help="cached-style samples the run cycles through")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--ckpt", default="off", choices=("off", "auto"))
    p.add_argument("--compile", action="store_true")
    p.add_argument("--settings", default=";".join(SETTINGS), help="labels of SETTINGS, separated by ';'")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device("cuda")
    native = models.native_state(models.random_weights(models.FULL_DIT, device))
    report = {"gpu": torch.cuda.get_device_name(device), "torch": torch.__version__, "args": vars(args) | {
        "json": str(args.json)}, "bins": [f"{lo:.1f}-{hi:.1f}" for lo, hi in zip(BINS, BINS[1:])], "runs": {}}
    for name in args.settings.split(";"):
        losses, sigmas, seconds = train_losses(SETTINGS[name], native, args, device)
        run = {"losses": losses, "sigmas": sigmas, "seconds": seconds}
        if report["runs"]:
            ref = next(iter(report["runs"].values()))
            run["vs_bf16"] = compare(ref["losses"], losses, ref["sigmas"])
        report["runs"][name] = run
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
        log.info("quality: %s done in %.0f s", name, seconds)
    sys.stdout.write(render(report) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
