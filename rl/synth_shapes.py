"""The built-in "shapes" task (`builtin:shapes`): find one object among several, then read it.

Each image is a plain canvas with several objects on the visual-token grid (one object = CELLS x CELLS tokens of
28 x 28 px, the Qwen2.5-VL token size). The target is the only object of its shape AND the only one of its colour;
the distractors share the other shapes and colours. Two question kinds, each answerable only from the target's
tokens (the question names one attribute, the answer is the other):

- colour: "What colour is the triangle?"       -> "red"
- shape:  "What shape is the red object?"      -> "triangle"

With several equally salient objects, a pruner that does not follow the question keeps the wrong one about as often
as a random one would; with ~3% of the tokens holding the answer, a good pruner can drop the rest.

Curriculum (training from scratch): with `curriculum` = N > 0, train rows 0..N-1 hold fewer objects, from one object
at row 0 rising to the full count at row N (every other split, and later rows, hold the full 3-6). A model that
first learns to read one object learns to pick one among several far sooner (read the rows in order:
`train_sampling_strategy: sequential`).
"""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from .synth import COLOURS, SynthObject, SynthSample, draw_object, parse_image_size

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


def make_shapes_sample(
    seed: int, split: str, index: int, image_size: int | tuple[int, int] = 336, curriculum: int = 0
) -> SynthSample:
    """Sample `index` of `split`, a pure function of its arguments (see the module docstring)."""
    width, height = parse_image_size(image_size)
    grid = (height // TOKEN, width // TOKEN)
    if min(grid) < CELLS + 1:
        raise ValueError(f"image size {width}x{height} is too small for the shapes task: use at least 84 px a side.")
    rng = random.Random(f"glimpserl-shapes/v1/{seed}/{split}/{index}")
    kind = KINDS[index % len(KINDS)]
    shape, colour = rng.choice(SHAPES), rng.choice(sorted(COLOURS))
    taken: set = set()
    objects = []
    for i in range(rng.randint(*object_range(split, index, curriculum))):
        cell = _free_cells(rng, grid, taken)
        if cell is None:  # a small canvas simply holds fewer distractors
            break
        r, c = cell
        box = (c * TOKEN + MARGIN, r * TOKEN + MARGIN, (c + CELLS) * TOKEN - MARGIN, (r + CELLS) * TOKEN - MARGIN)
        if i == 0:
            objects.append(SynthObject(shape, colour, box))
        else:
            other_shape = rng.choice([s for s in SHAPES if s != shape])
            other_colour = rng.choice([c for c in sorted(COLOURS) if c != colour])
            objects.append(SynthObject(other_shape, other_colour, box))
    # A flat near-grey canvas (no pixel noise: tens of thousands of training images stay a few KB each as PNG).
    grey = rng.randint(200, 235)
    image = Image.new("RGB", (width, height), tuple(grey + rng.randint(-6, 6) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for obj in objects:
        draw_object(draw, obj)
    target = objects[0]
    if kind == "colour":
        question, answer = f"What colour is the {shape}?", colour
    else:
        question, answer = f"What shape is the {colour} object?", shape
    return SynthSample(image, question, answer, kind, target, tuple(objects))
