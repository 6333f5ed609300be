"""The bundled demo dataset, drawn deterministically with Pillow: simple coloured shapes with captions.

Small enough for the tiny models on a laptop CPU; two aspect ratios so bucketing shows. `colour_errors`
measures how far a sample's mean colour is from the mean colour of its caption's training images.
"""

from __future__ import annotations

from pathlib import Path

SHAPES = [  # (file stem, shape, colour, background, caption)
    ("red_circle", "circle", (220, 40, 40), (245, 240, 230), "a red circle on a cream background"),
    ("blue_square", "square", (40, 70, 210), (245, 240, 230), "a blue square on a cream background"),
    ("green_triangle", "triangle", (40, 160, 70), (245, 240, 230), "a green triangle on a cream background"),
    ("yellow_circle", "circle", (235, 200, 30), (40, 40, 60), "a yellow circle on a dark background"),
    ("purple_square", "square", (140, 60, 170), (40, 40, 60), "a purple square on a dark background"),
    ("orange_triangle", "triangle", (240, 130, 30), (40, 40, 60), "an orange triangle on a dark background"),
    ("red_square_wide", "square", (220, 40, 40), (200, 225, 245), "a red square on a pale blue background, wide"),
    ("blue_circle_wide", "circle", (40, 70, 210), (200, 225, 245), "a blue circle on a pale blue background, wide"),
]
# Captions of the training set, so that each sample has training images to be compared with (colour_errors).
VALIDATION_PROMPTS = tuple(s[4] for s in SHAPES)


def _draw(shape: str, colour, background, size: tuple[int, int]):
    from PIL import Image, ImageDraw

    w, h = size
    img = Image.new("RGB", size, background)
    d = ImageDraw.Draw(img)
    s = min(w, h) * 0.6
    cx, cy = w / 2, h / 2
    box = [cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2]
    if shape == "circle":
        d.ellipse(box, fill=colour)
    elif shape == "square":
        d.rectangle(box, fill=colour)
    else:
        d.polygon([(cx, box[1]), (box[2], box[3]), (box[0], box[3])], fill=colour)
    return img


def write_demo_dataset(folder: str | Path, size_px: int = 64) -> Path:
    """Write the demo images (PNG) with same-stem .txt captions into `folder`; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stem, shape, colour, background, caption in SHAPES:
        size = (size_px * 3 // 2, size_px) if stem.endswith("_wide") else (size_px, size_px)
        _draw(shape, colour, background, size).save(folder / f"{stem}.png")
        (folder / f"{stem}.txt").write_text(caption + "\n", encoding="utf-8")
    return folder


def colour_errors(images, prompts, folder: str | Path) -> list[float]:
    """Per prompt: the distance, in 0-255 RGB units, between the mean colour of its sample (`images`, (N, 3, H, W)
    in [0, 1]) and the mean colour of the training images in `folder` whose caption is that prompt.

    Raises:
        KeyError: a prompt that is not a caption of the demo set.
    """
    import numpy as np
    from PIL import Image

    stems = {caption: stem for stem, *_, caption in SHAPES}
    out = []
    for image, prompt in zip(images, prompts):
        pixels = np.asarray(Image.open(Path(folder) / f"{stems[prompt]}.png").convert("RGB"), dtype=np.float64)
        target = pixels.reshape(-1, 3).mean(0)
        got = image.double().mean((1, 2)).numpy() * 255.0
        out.append(float(np.linalg.norm(got - target)))
    return out
