"""The parent side of `bench --peers`: which peer settings run, one child process each, and their rows.

Each child (worker.py) gets the same weights and inputs through two safetensors files written once, and the
extra import path its peer needs (`site`: e.g. the wheels ComfyUI 0.33.0 or kohya's pinned transformers were
unpacked into), prepended to this repository's. A child that dies is recorded with its error output.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ...comfyui.peer_trainlora import NodeSetting
from .kohya import KohyaSetting
from .simpletuner import SimpleTunerSetting

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[3]
TIMEOUT_S = 900


@dataclass(frozen=True)
class PeerSpec:
    peer: str  # 'comfy' | 'kohya' | 'simpletuner'
    root: str  # the ComfyUI tree, the sd-scripts checkout or the SimpleTuner checkout
    setting: NodeSetting | KohyaSetting | SimpleTunerSetting
    site: str = ""  # a folder prepended to the child's import path ('' = none)
    target_ratio: float = 0.0  # ours ÷ this peer asked for (0 = none)
    target_at_memory: bool = False  # the ratio is asked of our fastest variant within this peer's peak


def comfy_settings(batch: int) -> list[NodeSetting]:
    """TrainLoraNode as shipped (rank 16 instead of its default 8), then its fastest settings we found."""
    accum = {"batch_size": 1, "grad_accumulation_steps": batch, "gradient_checkpointing": False}
    return [
        NodeSetting(f"defaults (every layer, bf16, checkpointing), rank 16, batch {batch}", {"batch_size": batch}),
        NodeSetting(f"batch 1 × {batch} accumulated, no checkpointing", accum),
        NodeSetting(f"fp8 weights (ComfyUI quantized checkpoint), bypass adapters, fp8 backward, batch 1 × {batch} "
                    "accumulated, no checkpointing",
                    {**accum, "training_dtype": "none", "bypass_mode": True, "quantized_backward": True},
                    quantized=True),
    ]


def kohya_settings(rank: int) -> list[KohyaSetting]:
    return [KohyaSetting(f"LoRA r{rank} on attention (network_dim 0, attn_dim={rank}), checkpointing, SDPA",
                         network_dim=0, network_alpha=float(rank), network_args=(f"attn_dim={rank}",)),
            KohyaSetting(f"defaults: LoRA r{rank} on every block Linear, checkpointing, SDPA", network_dim=rank,
                         network_alpha=float(rank))]


def simpletuner_settings() -> list[SimpleTunerSetting]:
    return [SimpleTunerSetting("its Lumina2 LoRA step (PEFT on to_q/k/v/out, checkpointing, SDPA, clip 2.0), "
                               "torch AdamW")]


def peer_specs(comfy_roots: list[str], kohya_root: str, batch: int, rank: int, comfy_site: str = "",
               kohya_site: str = "", simpletuner_root: str = "") -> list[PeerSpec]:
    out = [PeerSpec("comfy", root, s, comfy_site, target_ratio=8.0, target_at_memory=True) for root in comfy_roots
           for s in comfy_settings(batch)]
    if kohya_root:
        out += [PeerSpec("kohya", kohya_root, s, kohya_site, target_ratio=1.5, target_at_memory=True)
                for s in kohya_settings(rank)]
    if simpletuner_root:
        out += [PeerSpec("simpletuner", simpletuner_root, s) for s in simpletuner_settings()]
    return out


def run_child(spec: dict, site: str, work: Path, timeout_s: int = TIMEOUT_S) -> dict:
    """Run one worker process; its row, or an error row with the end of its output."""
    spec_file, out_file = work / "spec.json", work / "row.json"
    spec_file.write_text(json.dumps(spec))
    out_file.unlink(missing_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (site, str(REPO), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [sys.executable, "-m", "lumina2_train.bench.peers.worker", str(spec_file), str(out_file)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"the peer's process ran past {timeout_s} s and was stopped"}
    if out_file.is_file():
        return json.loads(out_file.read_text())
    return {"error": f"the peer's process exited with {proc.returncode} and wrote no row",
            "traceback": (proc.stdout + proc.stderr)[-4000:]}


@dataclass
class PeerRun:
    """What every child of one group shares."""

    config: dict
    res: int
    batch: int
    rank: int
    caption_tokens: int
    steps: int = 4
    warmup: int = 1
    rows: list[dict] = field(default_factory=list)


def run_peers(run: PeerRun, specs: list[PeerSpec], native: dict, inputs) -> list[dict]:
    """Every peer setting in `specs`, one after another, each in its own process."""
    from .worker import write_shared

    with tempfile.TemporaryDirectory(prefix="lumina2t-peers-") as tmp:
        work = Path(tmp)
        paths = write_shared(work, native, inputs)
        for p in specs:
            spec = {"peer": p.peer, "root": p.root, "setting": asdict(p.setting), "config": run.config,
                    "res": run.res, "batch": run.batch, "rank": run.rank, "caption_tokens": run.caption_tokens,
                    "steps": run.steps, "warmup": run.warmup, **paths}
            log.info("bench: peer %s (%s): %s", p.peer, p.root, p.setting.label)
            row = run_child(spec, p.site, work)
            row.update(peer=p.peer, root=p.root, label=p.setting.label, target_ratio=p.target_ratio,
                       target_at_memory=p.target_at_memory)
            log.info("bench: peer %s", {k: row.get(k) for k in ("samples_per_s", "peak_gib", "error", "skipped")})
            run.rows.append(row)
    return run.rows
