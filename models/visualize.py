"""Draw which visual tokens the glimpse kept: dropped token cells are dimmed over the original image."""

from __future__ import annotations

import textwrap

import torch
from PIL import Image, ImageDraw


def render_keep_mask(image: Image.Image, keep: torch.Tensor, caption: str = "", dim: float = 0.25) -> Image.Image:
    """The image with dropped token cells darkened to `dim` brightness and a caption strip underneath."""
    image = image.convert("RGB")
    width, height = image.size
    rows, cols = keep.shape
    shade = Image.new("L", (cols, rows), 0)
    shade.putdata([255 if k else int(255 * dim) for k in keep.flatten().tolist()])
    shade = shade.resize((width, height), Image.NEAREST)
    dark = Image.new("RGB", image.size, (0, 0, 0))
    shown = Image.composite(image, Image.blend(dark, image, dim), shade)
    draw = ImageDraw.Draw(shown)
    for r in range(rows):
        for c in range(cols):
            if keep[r, c]:
                box = (c * width / cols, r * height / rows, (c + 1) * width / cols - 1, (r + 1) * height / rows - 1)
                draw.rectangle(box, outline=(255, 200, 0))
    lines = [line for part in caption.splitlines() for line in textwrap.wrap(part, width=max(20, width // 7))]
    strip = Image.new("RGB", (width, 14 * len(lines) + 8), (255, 255, 255))
    text = ImageDraw.Draw(strip)
    for i, line in enumerate(lines):
        text.text((4, 4 + 14 * i), line, fill=(0, 0, 0))
    canvas = Image.new("RGB", (width, height + strip.height), (255, 255, 255))
    canvas.paste(shown, (0, 0))
    canvas.paste(strip, (0, height))
    return canvas
