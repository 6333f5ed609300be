"""`torchrun --nproc_per_node N -m lumina2_train.bench.distributed`: samples/s and memory of the library's own
training step on N GPUs (DDP for LoRA, FSDP2 for a full fine-tune), full-size Lumina2 with seeded random
weights (every rank builds the same ones). Run it with N = 1 and N = 2 on the same machine for the scaling.
Rank 0 writes the JSON. No ComfyUI imports.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from ..config import AdapterConfig, RunConfig, SaveConfig, TrainConfig
from ..train import TensorCache, TensorSample
from ..train.batches import DataPosition
from ..train.distributed import close_process_group, device_of, init_from_env, mean_over_ranks
from ..train.loop import Trainer
from . import measure, models
from .cases import FULL_TARGETS, TARGETS

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="torchrun ... -m lumina2_train.bench.distributed", description=__doc__)
    p.add_argument("--mode", choices=("lora", "full"), default="lora")
    p.add_argument("--res", type=int, default=1024)
    p.add_argument("--batch", type=int, default=4, help="samples per GPU per step")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--targets", choices=list(TARGETS), default="attn")
    p.add_argument("--ckpt", choices=("on", "off"), default="on")
    p.add_argument("--compile", action="store_true", help="regional torch.compile of the blocks")
    p.add_argument("--caption-tokens", type=int, default=256)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--tiny", action="store_true", help="the tiny test model (a CPU smoke run with gloo)")
    p.add_argument("--json", type=Path, required=True)
    return p.parse_args(argv)


def bench_config(args: argparse.Namespace, out_dir: str) -> RunConfig:
    """What a user would set: LoRA r16 (DDP), or a full fine-tune with torch AdamW (FSDP2 on several GPUs)."""
    full = args.mode == "full"
    adapter = AdapterConfig(kind="full", targets=FULL_TARGETS) if full else \
        AdapterConfig(rank=args.rank, alpha=float(args.rank), targets=TARGETS[args.targets])
    train = TrainConfig(steps=1_000_000, batch_size=args.batch, lr=1e-5 if full else 1e-4, precision="bf16",
                        checkpointing=args.ckpt, compile=args.compile, max_grad_norm=0.0 if full else 1.0, seed=0)
    return RunConfig(adapter=adapter, train=train, save=SaveConfig(output_dir=out_dir)).validate(need_data=False)


def _cache(args: argparse.Namespace, n: int, config: dict) -> TensorCache:
    gen = torch.Generator().manual_seed(1)
    side = args.res // 8
    return TensorCache([TensorSample(torch.randn(config["in_channels"], side, side, generator=gen),
                                     torch.randn(args.caption_tokens, config["cap_feat_dim"], generator=gen))
                        for _ in range(n)])


def run(args: argparse.Namespace) -> dict:
    world = init_from_env()
    device = device_of(world)
    if args.tiny:
        from ..tiny import TINY_DIT as config
    else:
        config = models.FULL_DIT
    t0 = time.perf_counter()
    backbone = models.diffusers_backbone(config, models.native_state(models.random_weights(config, device)), device)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(bench_config(args, tmp), backbone, _cache(args, args.batch * world.size, config),
                          run_dir=tmp)
        # the trainer's own set-up (built by the constructor) and optimizer step, minus saving (as bench/runner.py)
        built_s = time.perf_counter() - t0
        with trainer.micro_batches(DataPosition()) as feed:
            timing = measure.time_steps(lambda: trainer._optimizer_step(feed)[0], device, args.warmup, args.steps)
    step_s, peak = mean_over_ranks([timing.step_s, timing.peak_gib], world)
    from .report import environment

    return {"args": {k: str(v) for k, v in vars(args).items()}, "world_size": world.size,
            "parallel": trainer.setup.strategy.name, "environment": environment(device), "setup_s": built_s,
            "step_s": step_s, "samples_per_s": args.batch * world.size / step_s, "peak_gib_mean": peak,
            "peak_gib_rank0": timing.peak_gib, "warmup_peak_gib_rank0": timing.warmup_peak_gib,
            "steps_s_rank0": timing.steps_s, "warmup_s_rank0": timing.warmup_s, "loss": timing.last_loss}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        result = run(args)
        if _is_main():
            args.json.write_text(json.dumps(result, indent=2))
            log.info("%s", json.dumps({k: result[k] for k in ("world_size", "parallel", "samples_per_s",
                                                                 "peak_gib_mean", "step_s")}))
    finally:
        close_process_group()
    return 0


def _is_main() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


if __name__ == "__main__":
    raise SystemExit(main())
