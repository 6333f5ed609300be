"""`python -m lumina2_train bench`: our training step against the reference step, same process, same card.

One shape from the flags, or `--suite issue5` for every row of the speed targets (docs/benchmarks.md) and the ablations. Needs CUDA; the
arguments are checked first, so a wrong flag fails the same way everywhere. No ComfyUI imports (the
ComfyUI variant imports it from --comfyui inside models.comfy_backbone).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from ..errors import Lumina2TrainError
from .cases import (
    ACTIVATIONS,
    BACKBONES,
    BASES,
    CKPT,
    COMPUTES,
    FAMILIES,
    MODES,
    SUITES,
    TARGETS,
    Group,
    Variant,
    draw_lengths,
    parse_budget,
)

log = logging.getLogger(__name__)


class BenchError(Lumina2TrainError):
    """The bench cannot run here, or its arguments are wrong."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--res", type=int, default=1024, help="square image side in pixels (multiple of 16)")
    p.add_argument("--batch", type=int, default=4, help="samples per step")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank (alpha = rank)")
    p.add_argument("--targets", default="attn", choices=list(TARGETS), help="adapted Linears")
    p.add_argument("--mode", default="lora", choices=MODES, help="LoRA or full fine-tune")
    p.add_argument("--ckpt", default="auto", choices=CKPT, help="activation checkpointing of our step")
    p.add_argument("--memory-budget", default="ref",
                   help="GiB for --ckpt auto; 'ref' = the reference step's measured peak, 0 = 90 %% of the card")
    p.add_argument("--base-precision", default="bf16", choices=BASES, help="storage of the frozen base")
    p.add_argument("--base-compute", default="bf16", choices=COMPUTES,
                   help="the frozen base's block GEMMs: bf16 (exact) or fp8 (model.base_compute)")
    p.add_argument("--selective", action="store_true",
                   help="ckpt auto: recompute selectively where the budget allows (train.selective_recompute)")
    p.add_argument("--saved-activations", default="bf16", choices=ACTIVATIONS,
                   help="what kept blocks store for backward (train.saved_activations)")
    p.add_argument("--backbone", default="diffusers", choices=BACKBONES,
                   help="'comfy' runs our step on ComfyUI's NextDiT class (needs --comfyui)")
    p.add_argument("--no-compile", action="store_true", help="eager instead of regional torch.compile")
    p.add_argument("--no-reference", action="store_true", help="time our step only")
    p.add_argument("--caption-tokens", type=int, default=256, help="caption length of every sample")
    p.add_argument("--caption-lengths", default="", metavar="N,N,...",
                   help="per-sample caption tokens, cycled over the batch (mixed lengths: padding or --split-lengths)")
    p.add_argument("--caption-range", default="", metavar="LO,HI",
                   help="caption tokens drawn uniformly from LO..HI (seeded), one per sample of --samples")
    p.add_argument("--samples", type=int, default=0,
                   help="training-set size (default one batch; with --caption-range 8 batches)")
    p.add_argument("--family", default="lumina2", choices=FAMILIES,
                   help="the random full-size model: Lumina-Image-2.0 or Z-Image (diffusers' defaults)")
    p.add_argument("--split-lengths", action="store_true",
                   help="our step with train.split_caption_lengths (one unmasked forward per caption length)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (after warm-up)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, planning)")
    p.add_argument("--suite", choices=sorted(SUITES), help="run a named set of groups instead of the flags")
    p.add_argument("--groups", default="", help="with --suite: run only these groups (indices from 0, e.g. 0,2)")
    p.add_argument("--no-attention", action="store_true", help="skip the attention-kernel comparison")
    p.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH", ""),
                   help="a ComfyUI folder for --backbone comfy and the suite's ComfyUI row (default $COMFYUI_PATH)")
    p.add_argument("--peers", action="store_true",
                   help="also time the peers on the first group: ComfyUI's TrainLoraNode, kohya's Lumina step")
    p.add_argument("--peer-comfyui", action="append", default=[], metavar="DIR",
                   help="a ComfyUI tree whose TrainLoraNode --peers times (repeatable; default: --comfyui)")
    p.add_argument("--kohya", default="", metavar="DIR", help="a kohya-ss/sd-scripts checkout for --peers")
    p.add_argument("--simpletuner", default="", metavar="DIR",
                   help="a bghira/SimpleTuner checkout (the folder holding simpletuner/) for --peers")
    p.add_argument("--comfy-site", default="", metavar="DIR",
                   help="a folder of extra packages for the ComfyUI peers' processes (prepended to PYTHONPATH)")
    p.add_argument("--kohya-site", default="", metavar="DIR",
                   help="a folder of packages pinned by sd-scripts for the kohya peer's process")
    p.add_argument("--peer-steps", default="1,4", metavar="W,N",
                   help="warm-up and timed optimizer steps of each peer setting")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="also profile 2 steps of each variant: kernel tables in the report, traces in DIR")
    p.add_argument("--json", type=Path, help="write the full report here")
    p.add_argument("--markdown", type=Path, help="write the printed tables here too")


def groups_from_args(args: argparse.Namespace) -> list[Group]:
    """The groups to run; BenchError lists every wrong argument at once."""
    if args.suite:
        groups = _select(SUITES[args.suite](steps=args.steps, warmup=args.warmup), args.groups)
    else:
        try:
            budget = parse_budget(args.memory_budget)
        except ValueError as e:
            raise BenchError(str(e)) from None
        v = Variant(label=_label(args), compile=not args.no_compile, ckpt=args.ckpt, memory_budget_gib=budget,
                    base_precision=args.base_precision, backbone=args.backbone, split_lengths=args.split_lengths,
                    base_compute=args.base_compute, saved_activations=args.saved_activations,
                    selective=args.selective)
        lengths, samples, tokens = _lengths(args.caption_lengths), args.samples, args.caption_tokens
        if args.caption_range:
            lo, hi = _range(args.caption_range)
            samples = samples or 8 * args.batch
            lengths, tokens = draw_lengths(lo, hi, samples), max(tokens, hi)
        prefix = "Z-Image " if args.family == "zimage" else ""
        groups = [Group(f"{prefix}{args.res}² batch {args.batch}, {args.mode}", res=args.res, batch=args.batch,
                        rank=args.rank, targets=args.targets, mode=args.mode, caption_tokens=tokens,
                        caption_lengths=lengths, samples=samples, family=args.family,
                        steps=args.steps, warmup=args.warmup, reference=not args.no_reference, variants=(v,))]
    errors = [e for g in groups for e in g.errors()]
    if any(v.backbone == "comfy" for g in groups for v in g.variants) and not args.suite and not args.comfyui:
        errors.append("--backbone comfy needs a ComfyUI folder: pass --comfyui PATH or set COMFYUI_PATH")
    if any(g.family != "lumina2" and (v.backbone == "comfy" or g.mode == "full") for g in groups for v in g.variants):
        errors.append("--family zimage runs LoRA on the diffusers backbone only (drop --backbone comfy / --mode full)")
    if getattr(args, "peers", False) and groups[0].family != "lumina2":
        errors.append("--peers time Lumina2 peers; drop --family zimage")
    if errors:
        raise BenchError("bench: " + "; ".join(errors))
    return groups


def _lengths(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise BenchError(f"bench: --caption-lengths '{text}' is not a list of token counts like 256,128,64") from None


def _range(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in text.split(","))
    except ValueError:
        raise BenchError(f"bench: --caption-range '{text}' is not two token counts like 40,300") from None
    if not 1 <= lo <= hi:
        raise BenchError(f"bench: --caption-range {lo},{hi} must satisfy 1 <= LO <= HI")
    return lo, hi


def _select(groups: list[Group], spec: str) -> list[Group]:
    if not spec.strip():
        return groups
    try:
        picked = [int(i) for i in spec.split(",") if i.strip()]
    except ValueError:
        raise BenchError(f"bench: --groups '{spec}' is not a list of indices like 0,2") from None
    bad = [i for i in picked if not 0 <= i < len(groups)]
    if bad:
        raise BenchError(f"bench: --groups {bad} is outside 0-{len(groups) - 1} (the suite has {len(groups)} groups)")
    return [groups[i] for i in picked]


def _label(args: argparse.Namespace) -> str:
    parts = ["eager" if args.no_compile else "compiled", f"ckpt {args.ckpt}"]
    if args.ckpt == "auto":
        parts.append(f"≤ {args.memory_budget} GiB" if args.memory_budget != "ref" else "≤ ref peak")
    if args.base_precision != "bf16":
        parts.append(f"{args.base_precision} base")
    if args.base_compute != "bf16":
        parts.append(f"{args.base_compute} compute")
    if args.saved_activations != "bf16":
        parts.append(f"{args.saved_activations} activations")
    if args.ckpt == "auto" and args.selective:
        parts.append("selective recompute")
    if args.backbone == "comfy":
        parts.insert(0, "ComfyUI NextDiT")
    if args.caption_lengths or args.caption_range:
        parts.append("split by caption length" if args.split_lengths else "padded captions (mask)")
    return ", ".join(parts)


def peers_from_args(args: argparse.Namespace, first: Group) -> tuple[list, tuple[int, int]]:
    """The peer settings --peers asks for (BenchError names a missing tree or a bad --peer-steps)."""
    if not getattr(args, "peers", False):
        return [], (1, 4)
    from .peers.run import peer_specs

    roots = args.peer_comfyui or ([args.comfyui] if args.comfyui else [])
    errors = [f"--peer-comfyui {r}: no ComfyUI there (no comfy_extras/nodes_train.py)" for r in roots
              if not (Path(r) / "comfy_extras" / "nodes_train.py").is_file()]
    if args.kohya and not (Path(args.kohya) / "lumina_train_network.py").is_file():
        errors.append(f"--kohya {args.kohya}: no lumina_train_network.py there; pass a kohya-ss/sd-scripts checkout")
    st = getattr(args, "simpletuner", "")
    if st and not (Path(st) / "simpletuner" / "helpers" / "models" / "lumina2" / "model.py").is_file():
        errors.append(f"--simpletuner {st}: no simpletuner/helpers/models/lumina2/model.py there; pass a "
                      "bghira/SimpleTuner checkout")
    if not roots and not args.kohya and not st:
        errors.append("--peers needs --peer-comfyui DIR (or --comfyui), --kohya DIR and/or --simpletuner DIR")
    try:
        w, n = (int(x) for x in args.peer_steps.split(","))
        if w < 1 or n < 1:
            raise ValueError
    except ValueError:
        errors.append(f"--peer-steps '{args.peer_steps}' must be two counts >= 1, like 1,4")
        w, n = 1, 4
    if errors:
        raise BenchError("bench: " + "; ".join(errors))
    return peer_specs(roots, args.kohya, first.batch, first.rank, args.comfy_site, args.kohya_site, st), (w, n)


def require_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise BenchError(
            f"bench: no CUDA GPU here (torch {torch.__version__}, torch.cuda.is_available() is False). Speed and "
            "memory are measured on an NVIDIA GPU (H100/H200 for the published figures): run the bench there")


def run(args: argparse.Namespace) -> int:
    groups = groups_from_args(args)
    from ..storage.paths import writable_file, writable_folder

    if args.json:
        writable_file(args.json, what="bench --json")  # found now, not after an hour of measuring
    if args.profile:
        writable_folder(args.profile, what="bench --profile")
    require_cuda()
    from .runner import run_bench

    def save(report: dict) -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2, default=str))

    peers, peer_steps = peers_from_args(args, groups[0])
    report, text = run_bench(groups, comfy_path=args.comfyui, attention=not args.no_attention, on_group=save,
                             profile_dir=args.profile, peers=peers, peer_steps=peer_steps)
    save(report)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    log.info("%s", text)
    return 1 if any("error" in v for g in report["groups"] for v in g["variants"]) else 0
