"""One process of a CPU (gloo) training run for tests/train/test_distributed.py.

Started with the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) by
`launch()`, or imported by the test for the one-process reference runs. Runs the scenarios named on the
command line one after another in the same process group; rank 0 writes each scenario's results.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch


class Stop(Exception):
    pass


def tiny_cache(nan_item: int = -1):
    """8 samples in two buckets with caption lengths 5, 5, 3, 3, 5, 4 (32×32) and 4, 6 (48×32)."""
    from lumina2_train.train import TensorCache, TensorSample

    gen = torch.Generator().manual_seed(11)
    shapes = [(4, 4)] * 6 + [(4, 6)] * 2
    lengths = [5, 5, 3, 3, 5, 4, 4, 6]
    samples = []
    for i, ((h, w), n) in enumerate(zip(shapes, lengths)):
        lat = torch.randn(16, h, w, generator=gen)
        if i == nan_item:
            lat = torch.full_like(lat, float("nan"))
        samples.append(TensorSample(latent=lat, cap_feats=torch.randn(n, 32, generator=gen), caption=f"c{i}"))
    return TensorCache(samples, empty=torch.randn(1, 32, generator=gen))


def run_config(out: Path, *, kind: str = "lora", batch_size: int = 1, steps: int = 4, resume_from: str = "",
               eval_every: int = 0, **train):
    from lumina2_train.config import AdapterConfig, RunConfig, SaveConfig, TrainConfig, ValidationConfig

    adapter = AdapterConfig(kind="full", targets=()) if kind == "full" else \
        AdapterConfig(rank=4, alpha=4.0, targets=("attention", "ffn"))
    t = dict(steps=steps, batch_size=batch_size, lr=1e-3 if kind == "lora" else 1e-4, precision="fp32",
             checkpointing="on", caption_dropout=0.2, seed=5, max_grad_norm=1.0)
    t.update(train)
    validation = ValidationConfig(eval_every_n_steps=eval_every, eval_holdout=1 if eval_every else 0)
    return RunConfig(adapter=adapter, train=TrainConfig(**t), save=SaveConfig(output_dir=str(out), every_n_steps=2,
                                                                             keep_last=3),
                     validation=validation, resume_from=resume_from)


def backbone():
    from lumina2_train.backbones.diffusers import DiffusersBackbone
    from lumina2_train.tiny import make_tiny_transformer

    return DiffusersBackbone.from_model(make_tiny_transformer(seed=0))


def weights(adapters) -> dict[str, torch.Tensor]:
    """The trained tensors; sharded ones (DTensors) gathered whole on every rank (a collective)."""
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
            for k, v in adapters.state_dict().items()}


def _train(cfg, run_dir: Path, hooks=None, cache=None):
    from lumina2_train.train import train_lora

    return train_lora(cfg, backbone(), cache or tiny_cache(), hooks, run_dir=run_dir)


def scenario(name: str, out: Path, rank: int) -> dict:
    """Run one scenario on this rank; returns what rank 0 reports."""
    from lumina2_train.train import TrainHooks

    kind = "full" if name == "fsdp" else "lora"
    if name in ("ddp", "fsdp"):
        res = _train(run_config(out, kind=kind), out / name)
        return {"losses": res.losses, "weights": weights(res.adapters)}
    calls = []

    def check():
        calls.append(1)
        if rank == 1 and len(calls) == 3:  # before step 3 on rank 1 only
            raise Stop("cancelled on rank 1")

    hooks = TrainHooks(check_interrupt=check) if name == "stop" else None
    cache = tiny_cache(nan_item=2) if name == "nan" else None
    try:
        # the cancel run also evaluates a held-out loss every step (rank 0 while the others wait)
        _train(run_config(out, steps=6, eval_every=1 if name == "stop" else 0), out / name, hooks, cache)
    except BaseException as e:
        return {"raised": type(e).__name__, "message": str(e)}
    return {"raised": ""}


def main() -> None:
    import lumina2_train.train.distributed as d

    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    world = d.init_from_env()
    try:
        for name in sys.argv[2:]:
            result = scenario(name, out, world.rank)
            torch.save(result, out / f"{name}.rank{world.rank}.pt")
    finally:
        d.close_process_group()


def launch(out: Path, scenarios: list[str], nproc: int = 2, timeout_s: float = 240) -> None:
    """Start `nproc` workers the way torchrun does (env:// rendezvous on a free localhost port) and wait."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(nproc):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
        procs.append(subprocess.Popen([sys.executable, __file__, str(out), *scenarios], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout_s)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    if any(p.returncode for p in procs):
        raise RuntimeError("worker failed:\n" + "\n----\n".join(log[-4000:] for log in logs))


if __name__ == "__main__":
    main()
