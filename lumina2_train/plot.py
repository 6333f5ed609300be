"""Loss curves drawn with Pillow (no plotting library needed): raw loss and a smoothed line, with axes.

Used by the demo, the CLI and the Plot Loss node. No ComfyUI imports.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def smooth(values: Sequence[float], beta: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (TensorBoard's smoothing)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta**i))
    return out


def plot_losses(losses: Sequence[float], *, width: int = 720, height: int = 400, title: str = "training loss",
                log_scale: bool = False):
    """A PIL RGB image of the loss per step: raw (light) and smoothed (dark)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 64, width - 16, 32, height - 40
    draw.text((left, 8), title, fill=(20, 20, 20))
    finite = [v for v in losses if math.isfinite(v) and (v > 0 or not log_scale)]
    if len(finite) < 1:
        draw.text((left, height // 2), "no loss values yet", fill=(120, 120, 120))
        return img
    tf = (lambda v: math.log10(v)) if log_scale else (lambda v: v)
    lo, hi = min(map(tf, finite)), max(map(tf, finite))
    hi = hi if hi > lo else lo + 1e-6
    n = max(len(losses) - 1, 1)

    def xy(i: int, v: float) -> tuple[float, float]:
        return left + (right - left) * i / n, bottom - (bottom - top) * (tf(v) - lo) / (hi - lo)

    draw.rectangle([left, top, right, bottom], outline=(180, 180, 180))
    for frac in (0.0, 0.5, 1.0):
        y = bottom - (bottom - top) * frac
        value = lo + (hi - lo) * frac
        draw.text((4, y - 6), f"{10**value:.3g}" if log_scale else f"{value:.3g}", fill=(90, 90, 90))
    draw.text((left, bottom + 8), "step 1", fill=(90, 90, 90))
    draw.text((right - 70, bottom + 8), f"step {len(losses)}", fill=(90, 90, 90))
    for series, colour, w in ((losses, (170, 200, 235), 1), (smooth(losses), (20, 80, 170), 2)):
        pts = [xy(i, v) for i, v in enumerate(series) if math.isfinite(v) and (v > 0 or not log_scale)]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=w)
        elif pts:
            draw.ellipse([pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2], fill=colour)
    return img
