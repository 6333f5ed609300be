"""`bench --profile DIR`: where a step's device time goes. After a variant is timed, a few more steps run under
torch.profiler; the trace is written for chrome://tracing / Perfetto and the kernels that took the most device
time are kept in the report (ms per step and share), grouped into classes (matmul, attention, elementwise, ...)
so a table says at a glance what an optimisation has to beat. No ComfyUI imports.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

TOP = 15
# kernel name pattern -> class, first match wins (CUDA kernel names from cuBLAS, cuDNN, Triton/inductor, ATen)
CLASSES = (("attention", r"fmha|flash|attention|cudnn_generated|sdpa"),
           ("matmul", r"gemm|sm90_xmma|cutlass|nvjet|matmul|\bmm\b|addmm|bmm"),
           ("optimizer", r"adam|foreach|multi_tensor"),
           ("copy", r"copy|memcpy|memset|cat_|fill"),
           ("fused elementwise (compiled)", r"triton"),
           ("elementwise / reduction", r"elementwise|reduce|vectorized|unrolled|norm|softmax"))


def kernel_class(name: str) -> str:
    low = name.lower()
    return next((cls for cls, pat in CLASSES if re.search(pat, low)), "other")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:80]


def profile_steps(step: Callable[[], float], device: torch.device, steps: int, trace: Path | None) -> dict:
    """Run `step` `steps` times under the profiler; returns {'kernels': top rows, 'classes': shares,
    'device_ms_per_step', 'trace'}. Device time is CUDA kernel time on a GPU, CPU op self time elsewhere."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize(device)
    if trace is not None:
        trace.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace))
    rows = []
    for e in prof.key_averages():
        us = e.self_device_time_total if cuda else e.self_cpu_time_total
        if us > 0 and (not cuda or e.device_type == torch.autograd.DeviceType.CUDA):
            rows.append((e.key, us, e.count))
    total = sum(us for _, us, _ in rows) or 1.0
    rows.sort(key=lambda r: -r[1])
    classes: dict[str, float] = {}
    for name, us, _ in rows:
        classes[kernel_class(name)] = classes.get(kernel_class(name), 0.0) + us
    return {"device_ms_per_step": total / 1e3 / steps,
            "kernels": [{"name": name[:110], "class": kernel_class(name), "ms_per_step": us / 1e3 / steps,
                         "share": us / total, "calls_per_step": n / steps} for name, us, n in rows[:TOP]],
            "classes": {k: v / total for k, v in sorted(classes.items(), key=lambda kv: -kv[1])},
            "trace": str(trace) if trace is not None else ""}


def trace_path(folder: Path | None, group: str, label: str) -> Path | None:
    return None if folder is None else folder / f"{_slug(group)}--{_slug(label)}.json"


def profile_lines(group: str, label: str, prof: dict, step_s: float) -> list[str]:
    """A markdown table of one profiled variant: device time by class, then the top kernels."""
    busy = prof["device_ms_per_step"]
    lines = [f"#### Profile: {group} / {label}", "",
             f"Device busy {busy:.1f} ms of a {1e3 * step_s:.1f} ms step ({100 * busy / max(1e3 * step_s, 1e-9):.0f} %)."
             + (f" Trace: `{prof['trace']}`." if prof.get("trace") else ""), "",
             "| class | share |", "|---|---|"]
    lines += [f"| {k} | {100 * v:.1f} % |" for k, v in prof["classes"].items()]
    lines += ["", "| kernel | class | ms/step | calls/step | share |", "|---|---|---|---|---|"]
    lines += [f"| `{k['name'].replace('|', '/')}` | {k['class']} | {k['ms_per_step']:.2f} | "
              f"{k['calls_per_step']:.0f} | {100 * k['share']:.1f} % |" for k in prof["kernels"]]
    return lines
