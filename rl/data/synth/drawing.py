"""What the synthetic tasks draw with: the object and sample records, the palette, the font and `draw_object`.

Every task module (`glimpse`, `shapes`) draws through these, so a colour or a glyph looks the same in every task.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

# Saturated colours whose names nobody disputes; the background stays pale so none of them blends in.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (30, 150, 55),
    "blue": (35, 75, 215),
    "yellow": (235, 200, 20),
    "orange": (245, 125, 15),
    "purple": (135, 50, 175),
    "pink": (240, 110, 180),
    "brown": (120, 72, 35),
}
DRAWN_SHAPES = ("circle", "square", "triangle", "diamond", "cross", "box")
"""Every shape `draw_object` draws (a box is a framed word)."""
MIN_SIDE = 56  # below this the digits and words are no longer legible


@dataclass(frozen=True)
class SynthObject:
    """One drawn object. `box` is (x0, y0, x1, y1) in pixels, x1/y1 exclusive; `label` is a digit or word or ''."""

    shape: str  # circle | square | triangle | box (a framed word)
    colour: str
    box: tuple[int, int, int, int]
    label: str = ""


@dataclass(frozen=True)
class SynthSample:
    image: Image.Image
    question: str
    answer: str
    kind: str
    target: SynthObject
    objects: tuple[SynthObject, ...]  # the target first, then the distractors actually placed
    regions: tuple[SynthObject, ...] = ()  # the objects the answer needs, when not just the target

    @property
    def boxes(self) -> list[list[int]]:
        """The boxes of the regions the answer needs (the target's alone by default)."""
        return [list(obj.box) for obj in (self.regions or (self.target,))]


def font_path() -> Path:
    """DejaVu Sans Bold from matplotlib's own copy, so every machine renders the same glyphs (same bytes)."""
    import matplotlib

    bundled = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"
    if bundled.is_file():
        return bundled
    from matplotlib import font_manager

    found = Path(font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans", weight="bold")))
    if not found.is_file():
        raise FileNotFoundError(f"DejaVu Sans not found (looked at {bundled} and {found}); reinstall matplotlib.")
    return found


def parse_image_size(size: int | str | tuple[int, int] | list[int]) -> tuple[int, int]:
    """448 -> (448, 448); "640x480" or (640, 480) -> (width, height)."""
    if isinstance(size, str):
        parts = size.lower().split("x")
        try:
            size = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else None
        except ValueError:
            size = None
        if size is None:
            raise ValueError("image size must look like 448 or 640x480 (width x height).")
    if isinstance(size, int):
        size = (size, size)
    width, height = (int(v) for v in size)
    if min(width, height) < MIN_SIDE:
        raise ValueError(f"image size {width}x{height} is too small: use at least {MIN_SIDE} px per side.")
    return width, height


@functools.lru_cache(maxsize=256)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_path()), size)


def _fit_font(text: str, box: tuple, fill: float) -> ImageFont.FreeTypeFont:
    """The largest font whose rendering of `text` spans at most `fill` of the box's width and height."""
    max_w, max_h = (box[2] - box[0]) * fill, (box[3] - box[1]) * fill
    left, top, right, bottom = _font(100).getbbox(text)
    # Glyph extents scale almost linearly with the size; step down for the rounding that does not.
    size = max(6, int(100 * min(max_w / (right - left), max_h / (bottom - top))))
    while size > 6:
        left, top, right, bottom = _font(size).getbbox(text)
        if right - left <= max_w and bottom - top <= max_h:
            break
        size -= 1
    return _font(size)


def _text_colour(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0, 0, 0) if luminance > 150 else (255, 255, 255)


def draw_object(draw: ImageDraw.ImageDraw, obj: SynthObject, palette: dict | None = None) -> None:
    """Draw `obj` strictly inside its box (PIL's inclusive end points, hence the -1); `palette` maps colour names
    to RGB (default: COLOURS)."""
    x0, y0, x1, y1 = obj.box
    rgb = (palette or COLOURS)[obj.colour]
    inner = (x0, y0, x1 - 1, y1 - 1)
    if obj.shape == "circle":
        draw.ellipse(inner, fill=rgb)
    elif obj.shape == "square":
        draw.rectangle(inner, fill=rgb)
    elif obj.shape == "triangle":
        draw.polygon([((x0 + x1 - 1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=rgb)
    elif obj.shape == "diamond":
        cx, cy = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2
        draw.polygon([(cx, y0), (x1 - 1, cy), (cx, y1 - 1), (x0, cy)], fill=rgb)
    elif obj.shape == "cross":
        bar_w, bar_h = max(2, (x1 - x0) // 3), max(2, (y1 - y0) // 3)
        left, top = x0 + (x1 - x0 - bar_w) // 2, y0 + (y1 - y0 - bar_h) // 2
        draw.rectangle((x0, top, x1 - 1, top + bar_h - 1), fill=rgb)
        draw.rectangle((left, y0, left + bar_w - 1, y1 - 1), fill=rgb)
    elif obj.shape == "box":
        draw.rectangle(inner, fill=(255, 255, 255), outline=rgb, width=max(2, (y1 - y0) // 10))
    else:
        raise ValueError(f"unknown shape {obj.shape!r}; expected one of {DRAWN_SHAPES}")
    if obj.label:
        # A circle's inscribed square is ~70% of its box; a frame's border eats into the box too.
        fill = {"circle": 0.55, "box": 0.6}.get(obj.shape, 0.7)
        colour = (0, 0, 0) if obj.shape == "box" else _text_colour(rgb)
        font = _fit_font(obj.label, obj.box, fill)
        draw.text(((x0 + x1) / 2, (y0 + y1) / 2), obj.label, fill=colour, font=font, anchor="mm")
