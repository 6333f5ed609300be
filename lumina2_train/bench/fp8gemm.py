"""`python -m lumina2_train.bench.fp8gemm`: the frozen base's Linears at the training shape in bf16 and in
fp8, on a CUDA GPU with fp8 tensor cores (what docs/benchmarks.md's choice of fp8 GEMM rests on).

Per Linear of a Lumina2 block (M tokens × K → N): the bare GEMMs (bf16 `mm`; `torch._scaled_mm` with
row-wise and with per-tensor scales, operands already in e4m3), then one compiled forward + input-gradient
step of the whole layer as the training step runs it (bf16 `F.linear`; ours with a bf16 weight quantised per
call; ours on a weight stored in fp8; torchao's Float8Linear with its row-wise and per-tensor recipes when
torchao is importable). Also checks the GPU path against its CPU-side emulation and against bf16.
Median milliseconds from triton.testing.do_bench. No ComfyUI imports.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from ..backbones import fp8
from ..backbones.quant import quantize_weight

# (name, K, N) of a Lumina2 2B block's token Linears
SHAPES = (("qkv", 2304, 3840), ("out", 2304, 2304), ("w1/w3", 2304, 9216), ("w2", 9216, 2304))
LAYER_SHAPES = ("qkv", "w1/w3")


def _ms(fn) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def _gemms(m: int, k: int, n: int, dev) -> dict[str, float]:
    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
    w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02
    xq, xs = fp8.quantize_rows(x)
    wq, ws = fp8.quantize_rows(w)
    one = torch.ones((), device=dev)
    return {
        "bf16 mm": _ms(lambda: x @ w.t()),
        "fp8 _scaled_mm, row-wise": _ms(lambda: torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws.t(),
                                                                 out_dtype=torch.bfloat16)),
        "fp8 _scaled_mm, per-tensor": _ms(lambda: torch._scaled_mm(xq, wq.t(), scale_a=one, scale_b=one,
                                                                   out_dtype=torch.bfloat16)),
    }


def _layer_steps(m: int, k: int, n: int, dev) -> dict[str, float]:
    """Compiled forward + input-gradient of one frozen Linear (what a block does per Linear)."""
    x0 = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
    w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02
    wq, wscale = quantize_weight(w, "fp8")
    g = torch.randn(m, n, device=dev, dtype=torch.bfloat16)
    fns = {"bf16 F.linear": lambda x: F.linear(x, w),
           "ours fp8, bf16 weight quantised per call": lambda x: fp8.fp8_linear(x, w, None, None, False),
           "ours fp8, weight stored in fp8": lambda x: fp8.fp8_linear(x, wq, None, wscale, False)}
    fns.update(_torchao_layers(w))
    out = {}
    for name, fn in fns.items():
        step_fn = torch.compile(fn, dynamic=False)
        x = x0.clone().requires_grad_(True)

        def step(f=step_fn, x=x):
            y = f(x)
            y.backward(g)

        try:
            out[name] = _ms(step)
        except Exception as e:  # noqa: BLE001 - a recipe this build cannot run is recorded, not fatal
            out[name] = float("nan")
            out[name + " error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    return out


def _torchao_layers(w: torch.Tensor) -> dict:
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except Exception:  # noqa: BLE001 - torchao is optional: no rows without it
        return {}
    out = {}
    for recipe in ("rowwise", "tensorwise"):
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, device=w.device, dtype=w.dtype)
        lin.weight.data.copy_(w)
        lin.weight.requires_grad_(False)
        seq = convert_to_float8_training(torch.nn.Sequential(lin), config=Float8LinearConfig.from_recipe_name(recipe))
        out[f"torchao Float8Linear, {recipe}"] = seq
    return out


def _correctness(dev) -> dict[str, float]:
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(4096, 2304, device=dev, dtype=torch.bfloat16, generator=gen).requires_grad_(True)
    w = torch.randn(9216, 2304, device=dev, dtype=torch.bfloat16, generator=gen) * 0.02
    g = torch.randn(4096, 9216, device=dev, dtype=torch.bfloat16, generator=gen)
    res = {}
    for emulate in (False, True):
        x.grad = None
        y = fp8.fp8_linear(x, w, None, None, emulate)
        y.backward(g)
        res[emulate] = (y.detach().float(), x.grad.float())
    exact_y, exact_gx = (x.detach() @ w.t()).float(), (g @ w).float()

    def rel(a, b):
        return float((a - b).norm() / b.norm())

    return {"forward: GPU vs emulation": rel(res[False][0], res[True][0]),
            "input grad: GPU vs emulation": rel(res[False][1], res[True][1]),
            "forward: fp8 vs bf16": rel(res[False][0], exact_y),
            "input grad: fp8 vs bf16": rel(res[False][1], exact_gx)}


def run(tokens: int) -> dict:
    dev = torch.device("cuda")
    report = {"gpu": torch.cuda.get_device_name(dev), "torch": torch.__version__, "tokens": tokens,
              "correctness": _correctness(dev), "shapes": {}}
    for name, k, n in SHAPES:
        report["shapes"][name] = {"K": k, "N": n, "gemm_ms": _gemms(tokens, k, n, dev)}
        if name in LAYER_SHAPES:  # each variant compiles: two shapes keep the run short
            report["shapes"][name]["layer_fwd_bwd_ms"] = _layer_steps(tokens, k, n, dev)
    return report


def render(report: dict) -> str:
    lines = [f"fp8 GEMMs on {report['gpu']}, torch {report['torch']}, M = {report['tokens']} tokens", "",
             "| Linear (K → N) | " + " | ".join(next(iter(report["shapes"].values()))["gemm_ms"]) + " |",
             "|---|" + "---|" * len(next(iter(report["shapes"].values()))["gemm_ms"])]
    for name, s in report["shapes"].items():
        lines.append(f"| {name} ({s['K']} → {s['N']}) | " + " | ".join(f"{v:.3f}" for v in s["gemm_ms"].values())
                     + " |")
    lines += ["", "Compiled forward + input gradient of one frozen Linear, ms:", ""]
    for name, s in report["shapes"].items():
        for k, v in s.get("layer_fwd_bwd_ms", {}).items():
            lines.append(f"- {name}: {k}: {v if isinstance(v, str) else f'{v:.3f}'}")
    lines += ["", "Relative L2 differences: " + ", ".join(f"{k} {v:.1e}" for k, v in report["correctness"].items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=4 * 4352, help="M: batch × joint tokens (1024² batch 4)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    report = run(args.tokens)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    sys.stdout.write(render(report) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
