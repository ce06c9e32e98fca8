"""The built-in "shapes" task (`builtin:shapes`): find the one coloured object among grey ones, then read it.

Each image is a plain pale canvas with several objects on the visual-token grid (one object = CELLS x CELLS tokens of
28 x 28 px, the Qwen2.5-VL token size). Exactly one object, the target, is coloured; the others are drawn in shades
of grey and take any shape, the target's included. Two question kinds, each answerable only from the target's tokens:

- colour: "What colour is the coloured object?"   -> "red"
- shape:  "What shape is the coloured object?"    -> "triangle"

The distractors are as salient as the target to a pruner that ranks tokens by attention or by how much they stand out
from the canvas (dark ink on a pale canvas), while ~3% of the tokens hold every answer; the coloured target is,
however, the odd one out in feature space, which diversity-based pruners can exploit. The image, not the question, says where to look: a referring version ("What
colour is the triangle?" among several coloured shapes) was not learned by the ~1.2M-parameter built-in model within
a CPU budget of hours, while this one is learned in well under an hour (docs/method.md, "The mini model").

Curriculum (training from scratch): with `curriculum` = N > 0, train rows 0..N-1 start small and sparse: the canvas
grows from half the requested side to the full side (in whole tokens) and the most objects per image from one to 6,
both linearly in the row index (every other split, and later rows, use the full size and 3-6 objects). A model trained from scratch on the
full canvas stalls; one that first reads small canvases does not (read the rows in order:
`train_sampling_strategy: sequential`).
"""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from .drawing import COLOURS, SynthObject, SynthSample, draw_object, parse_image_size

GREYS: dict[str, tuple[int, int, int]] = {"black": (20, 20, 20), "charcoal": (70, 70, 70), "grey": (120, 120, 120)}

SHAPES = ("circle", "square", "triangle", "cross", "diamond")
KINDS = ("colour", "shape")
TOKEN = 28  # pixels per visual token side (Qwen-VL: 14 px patches, 2 x 2 merged)
CELLS = 2  # an object covers CELLS x CELLS visual tokens
OBJECTS = (3, 6)  # objects per image (target included), inclusive
MARGIN = 4  # px between an object's ink and its token cells' border


def _free_cells(rng: random.Random, grid: tuple[int, int], taken: set) -> tuple[int, int] | None:
    """Top-left (row, col) of a free CELLS x CELLS block with one empty token ring around it, or None."""
    rows, cols = grid
    for _ in range(100):
        r, c = rng.randint(0, rows - CELLS), rng.randint(0, cols - CELLS)
        ring = {(r + i, c + j) for i in range(-1, CELLS + 1) for j in range(-1, CELLS + 1)}
        if not ring & taken:
            taken.update((r + i, c + j) for i in range(CELLS) for j in range(CELLS))
            return r, c
    return None


def object_range(split: str, index: int, curriculum: int = 0) -> tuple[int, int]:
    """(fewest, most) objects of row `index` of `split` (inclusive), following the curriculum on the train split."""
    if split != "train" or curriculum <= 0 or index >= curriculum:
        return OBJECTS
    return 1, min(OBJECTS[1], 1 + (OBJECTS[1] * index) // curriculum)


def canvas_size(split: str, index: int, size: tuple[int, int], curriculum: int = 0) -> tuple[int, int]:
    """(width, height) of row `index`: half the requested side at row 0 of a curriculum, growing to the full side."""
    if split != "train" or curriculum <= 0 or index >= curriculum:
        return size
    grow = lambda side: TOKEN * max(CELLS + 1, (side // 2 + (side - side // 2) * index // curriculum) // TOKEN)  # noqa: E731
    return grow(size[0]), grow(size[1])


def make_shapes_sample(
    seed: int, split: str, index: int, image_size: int | tuple[int, int] = 336, curriculum: int = 0
) -> SynthSample:
    """Sample `index` of `split`, a pure function of its arguments (see the module docstring)."""
    width, height = canvas_size(split, index, parse_image_size(image_size), curriculum)
    grid = (height // TOKEN, width // TOKEN)
    if min(grid) < CELLS + 1:
        raise ValueError(f"image size {width}x{height} is too small for the shapes task: use at least 84 px a side.")
    rng = random.Random(f"glimpserl-shapes/v2/{seed}/{split}/{index}")
    kind = KINDS[index % len(KINDS)]
    taken: set = set()
    objects = []
    for i in range(rng.randint(*object_range(split, index, curriculum))):
        cell = _free_cells(rng, grid, taken)
        if cell is None:  # a small canvas simply holds fewer distractors
            break
        r, c = cell
        box = (c * TOKEN + MARGIN, r * TOKEN + MARGIN, (c + CELLS) * TOKEN - MARGIN, (r + CELLS) * TOKEN - MARGIN)
        palette = sorted(COLOURS) if i == 0 else sorted(GREYS)
        objects.append(SynthObject(rng.choice(SHAPES), rng.choice(palette), box))
    # A flat pale canvas (no pixel noise: tens of thousands of training images stay a few KB each as PNG).
    pale = rng.randint(200, 235)
    image = Image.new("RGB", (width, height), tuple(pale + rng.randint(-6, 6) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for obj in objects:
        draw_object(draw, obj, palette={**COLOURS, **GREYS})
    target = objects[0]
    answer = target.colour if kind == "colour" else target.shape
    return SynthSample(image, f"What {kind} is the coloured object?", answer, kind, target, tuple(objects))
