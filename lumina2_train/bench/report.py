"""The bench's printed tables (markdown, pasted into docs/benchmarks.md as they are) and environment record.
No ComfyUI imports.
"""

from __future__ import annotations

import datetime
import platform
from importlib import metadata

import torch

from .cases import REF_BUDGET
from .peers.table import peer_lines, peer_target_rows
from .profile import profile_lines


def environment(device: torch.device, comfy_version: str = "") -> dict:
    """Date, card and versions, for the record."""
    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "-"

    env = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda or "-",
           "diffusers": version("diffusers"), "peft": version("peft"), "device": str(device)}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cudnn"] = str(torch.backends.cudnn.version())
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    if comfy_version:
        env["comfyui"] = comfy_version
    return env


def _f(x, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _model(head: dict) -> str:
    return "Z-Image, " if head.get("family") == "zimage" else ""


def _shape(head: dict) -> str:
    aspects = head.get("aspects") or ()
    return f"{head['res']}²" if not aspects else "buckets " + " / ".join(f"{w}×{h}" for w, h in aspects)


def _captions(head: dict) -> str:
    lengths = head.get("caption_lengths") or ()
    if not lengths:
        return f"{head['caption_tokens']} tokens"
    return f"{min(lengths)}–{max(lengths)} tokens (mean {sum(lengths) / len(lengths):.0f} over {len(lengths)} samples; TFLOP of the first)"


def _kept(kept: dict, selective: dict | None = None) -> str:
    """Blocks kept per shape (+ selectively recomputed ones); many shapes (mixed caption lengths) as a range."""
    selective = selective or {}
    if len(kept) <= 3:
        return ", ".join(f"{k}: {n}" + (f" + {selective[k]} sel." if selective.get(k) else "")
                         for k, n in kept.items()) or "-"
    out = f"{len(kept)} shapes: {min(kept.values())}–{max(kept.values())}"
    if any(selective.values()):
        out += f" + {min(selective.values())}–{max(selective.values())} sel."
    return out


def group_table(g: dict) -> list[str]:
    """One markdown table: the reference and each variant of ours."""
    head = g["group"]
    full = head["mode"] == "full"
    what = "full fine-tune of every Linear" if full else f"LoRA r{head['rank']} on {head['targets']}"
    lines = [f"### {head['name']}: {_model(head)}{_shape(head)} batch {head['batch']}, {what}, captions "
             f"{_captions(head)}, {g.get('flops_per_sample', 0) / 1e12:.1f} TFLOP/sample",
             "", "| step | samples/s | × ref | peak GiB | MFU | compile warm-up s | graphs | blocks kept |",
             "|---|---|---|---|---|---|---|---|"]
    ref = g.get("reference")
    if ref:
        name = "reference (diffusers, bf16 AdamW on every weight, eager, ckpt)" if full else \
            "reference (diffusers + PEFT, eager, ckpt)"
        lines.append(f"| {name} | {_f(ref['samples_per_s'])} | 1.00 | "
                     f"{_f(ref['peak_gib'], 1)} | {_f(100 * ref.get('mfu', 0), 0)} % | - | - | - |")
    for v in g["variants"]:
        if "error" in v:
            lines.append(f"| {v['label']} | failed: {v['error'][:90]} | | | | | | |")
            continue
        kept = _kept(v.get("blocks_kept", {}), v.get("blocks_selective"))
        lines.append(f"| {v['label']} | {_f(v['samples_per_s'])} | {_f(v.get('ratio'))} | {_f(v['peak_gib'], 1)} | "
                     f"{_f(100 * v['mfu'], 0)} % | {_f(v['compile_warmup_s'], 0)} | {v.get('graphs', '-')} | {kept} |")
    if g.get("attention_ops"):
        lines += ["", f"Attention operator in our step (eager forward): {', '.join(g['attention_ops'])}."]
    parity = g.get("parity")
    if parity:
        lines += ["", f"Loss on identical inputs: reference {parity['reference_loss']:.5f}, ours "
                      f"{parity['ours_loss']:.5f} (relative difference {parity['loss_rel_diff']:.1e}; prediction "
                      f"relative L2 {parity['pred_rel_l2']:.1e})."]
    return lines


def target_rows(groups: list[dict]) -> list[str]:
    """The speed targets: what was asked, what was measured, met or missed (and by how much)."""
    lines = ["| target | asked | measured | met |", "|---|---|---|---|"]
    for g in groups:
        for v in g["variants"]:
            spec = v["variant"]
            if not (spec["target_ratio"] or spec["target_peak_gib"]):
                continue
            name = f"{g['group']['name']}: {v['label']}"
            if "error" in v:
                lines.append(f"| {name} | ratio ≥ {spec['target_ratio']} | failed | no |")
                continue
            peak_goal = v.get("ref_peak_gib", 0.0) if spec["target_peak_gib"] == REF_BUDGET else spec["target_peak_gib"]
            asked, got, ok = [], [], True
            if spec["target_ratio"]:
                r = v.get("ratio", 0.0)
                asked.append(f"≥ {spec['target_ratio']:.1f}× ref")
                got.append(f"{r:.2f}×")
                ok &= r >= spec["target_ratio"]
                if r < spec["target_ratio"]:
                    got[-1] += f" ({100 * (1 - r / spec['target_ratio']):.0f} % short)"
            if peak_goal:
                asked.append(f"peak ≤ {peak_goal:.1f} GiB")
                got.append(f"{v['peak_gib']:.1f} GiB")
                ok &= v["peak_gib"] <= peak_goal
            lines.append(f"| {name} | {', '.join(asked)} | {', '.join(got)} | {'yes' if ok else 'no'} |")
    return lines


def comfy_rows(groups: list[dict]) -> list[str]:
    """ComfyUI's NextDiT against ours on the diffusers backbone, same group and settings (target: within 10 %)."""
    out = []
    for g in groups:
        by_label = {v["label"]: v for v in g["variants"] if "error" not in v}
        for v in by_label.values():
            if v["variant"]["backbone"] != "comfy":
                continue
            twin = next((w for w in by_label.values() if w["variant"]["backbone"] == "diffusers"
                         and {**w["variant"], "label": "", "backbone": "", "target_ratio": 0}
                         == {**v["variant"], "label": "", "backbone": "", "target_ratio": 0}), None)
            if twin:
                rel = v["samples_per_s"] / twin["samples_per_s"]
                out.append(f"ComfyUI backbone / diffusers backbone ({g['group']['name']}): {rel:.3f} "
                           f"({'within' if abs(1 - rel) <= 0.10 else 'outside'} 10 %).")
    return out


def render(report: dict) -> str:
    env = report["environment"]
    lines = [f"Card: {env.get('gpu', env['device'])}; torch {env['torch']} (CUDA {env['cuda']}, cuDNN "
             f"{env.get('cudnn', '-')}), diffusers {env['diffusers']}, PEFT {env['peft']}, Python {env['python']}"
             + (f", ComfyUI {env['comfyui']}" if env.get("comfyui") else "") + f"; {env['date']}.",
             f"Measured bf16 matmul rate (8192³): {report.get('matmul_tflops', 0):.0f} TFLOP/s.", ""]
    for g in report["groups"]:
        lines += group_table(g) + [""]
        if g.get("peers"):
            lines += peer_lines(g) + [""]
        for v in g["variants"]:
            if v.get("profile"):
                lines += profile_lines(g["group"]["name"], v["label"], v["profile"], v["step_s"]) + [""]
    if report.get("attention"):
        lines += ["### Attention kernel, forward + backward at the training shape", "", "| kernel | ms |",
                  "|---|---|"]
        lines += [f"| {k} | {_f(v)} |" for k, v in report["attention"].items() if not k.endswith("error")]
        lines.append("")
    lines += ["### Targets", ""] + target_rows(report["groups"]) + peer_target_rows(report["groups"]) + [""]
    lines += comfy_rows(report["groups"])
    return "\n".join(lines)
