"""A deterministic synthetic "glimpse" VQA dataset: the answer lives in one small region of a larger image.

Each image holds a noisy background, a few distractor shapes and ONE target object covering about 5-12% of the
image. Three question kinds, all with a single-word answer:

- colour: "What colour is the triangle?" (the only object of that shape)
- digit:  "What digit is written inside the red square?" (other squares/circles carry other digits)
- word:   "What word is written in the blue box?" (other boxes carry other words)

The box of the target is stored in pixels (xyxy, x1/y1 exclusive), so the set serves both stage 1 (box loss)
and stage 2 (exact-match reward), and lets tests check that a pruner keeps the right tokens.

    glimpserl data synth --task glimpse --out data/synth --n-train 200 --n-test 50 --image-size 448 --seed 0

Same seed -> byte-identical files. Every sample draws from its own random stream keyed by (seed, split, index),
so train and test never share a stream and adding samples does not change the earlier ones.
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageDraw

from .builtin import SPLITS
from .drawing import COLOURS, SynthObject, SynthSample, draw_object, parse_image_size

SHAPES = ("circle", "square", "triangle")
WORDS = (
    "cat", "dog", "sun", "map", "key", "cup", "hat", "fox", "owl", "bee", "car", "bus", "pen", "egg", "ant",
    "moon", "star", "fish", "bird", "tree", "lamp", "boat", "door", "kite", "milk", "rain", "ship", "frog",
    "bell", "coin", "leaf", "rock", "wolf", "bear", "seed", "ring",
)  # fmt: skip
KINDS = ("colour", "digit", "word")
TARGET_AREA = (0.05, 0.12)  # fraction of the image covered by the target's box
DISTRACTOR_AREA = (0.012, 0.04)
STREAM = "glimpserl-synth/v1"
"""Prefix of every sample's random stream: a new prefix is a new data set for the same seed."""


def _place(rng: random.Random, size: tuple[int, int], area: float, aspect: float, taken: list) -> tuple | None:
    """A box of `area` px^2 and width/height `aspect` that keeps a gap to every box in `taken`, or None."""
    width, height = size
    w = max(12, min(width - 4, round((area * aspect) ** 0.5)))
    h = max(12, min(height - 4, round(w / aspect)))
    gap = max(2, min(width, height) // 64)
    for _ in range(60):
        x0, y0 = rng.randint(2, width - w - 2), rng.randint(2, height - h - 2)
        box = (x0, y0, x0 + w, y0 + h)
        if all(
            box[2] + gap <= o[0] or o[2] + gap <= box[0] or box[3] + gap <= o[1] or o[3] + gap <= box[1] for o in taken
        ):
            return box
    return None


def _target(rng: random.Random, kind: str, box_for) -> tuple[SynthObject, str, str]:
    """The target object, its question and its answer."""
    colour = rng.choice(sorted(COLOURS))
    if kind == "colour":
        shape = rng.choice(SHAPES)
        return SynthObject(shape, colour, box_for(1.0)), f"What colour is the {shape}?", colour
    if kind == "digit":
        shape, digit = rng.choice(("square", "circle")), str(rng.randint(0, 9))
        obj = SynthObject(shape, colour, box_for(1.0), digit)
        return obj, f"What digit is written inside the {colour} {shape}?", digit
    if kind == "word":
        word = rng.choice(WORDS)
        obj = SynthObject("box", colour, box_for(2.0), word)
        return obj, f"What word is written in the {colour} box?", word
    raise ValueError(f"unknown question kind {kind!r}; expected one of {KINDS}")


def _distractor(rng: random.Random, target: SynthObject, kind: str) -> tuple[str, str, str]:
    """(shape, colour, label) of a random object that cannot be mistaken for the one the question names."""
    while True:
        shape = rng.choice(SHAPES + ("box",) if kind == "word" else SHAPES)
        colour = rng.choice(sorted(COLOURS))
        if kind == "colour" and shape == target.shape:
            continue  # the question names the shape: it must stay unique
        if kind != "colour" and (shape, colour) == (target.shape, target.colour):
            continue  # the question names shape and colour: that pair must stay unique
        break
    label = ""
    if shape == "box":
        label = rng.choice([w for w in WORDS if w != target.label])
    elif shape in ("square", "circle") and (kind == "digit" or rng.random() < 0.5):
        label = rng.choice([str(d) for d in range(10) if str(d) != target.label])
    return shape, colour, label


def make_sample(seed: int, split: str, index: int, image_size: int | tuple[int, int] = 448) -> SynthSample:
    """Sample `index` of `split`, a pure function of its arguments."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    size = parse_image_size(image_size)
    area = size[0] * size[1]
    # str seeds go through sha512 in `random`, so the stream is stable across runs, platforms and PYTHONHASHSEED.
    rng = random.Random(f"{STREAM}/{seed}/{split}/{index}")
    kind = KINDS[index % len(KINDS)]  # round-robin keeps small sets balanced

    def target_box(aspect: float) -> tuple:
        return _place(rng, size, rng.uniform(*TARGET_AREA) * area, aspect, [])

    target, question, answer = _target(rng, kind, target_box)
    objects = [target]
    for _ in range(rng.randint(3, 6)):
        shape, colour, label = _distractor(rng, target, kind)
        aspect = 2.0 if shape == "box" else 1.0
        box = _place(rng, size, rng.uniform(*DISTRACTOR_AREA) * area, aspect, [o.box for o in objects])
        if box is not None:  # a crowded image simply gets fewer distractors
            objects.append(SynthObject(shape, colour, box, label))

    np_rng = np.random.default_rng(rng.getrandbits(64))
    grey = rng.randint(200, 240)  # near-grey, so no background passes for one of the named colours
    canvas = Image.new("RGB", size, tuple(grey + rng.randint(-8, 8) for _ in range(3)))
    draw = ImageDraw.Draw(canvas)
    for obj in objects:
        draw_object(draw, obj)
    noisy = np.asarray(canvas, dtype=np.float32) + np_rng.normal(0.0, 6.0, size=(size[1], size[0], 3))
    image = Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8), "RGB")
    return SynthSample(image, question, answer, kind, target, tuple(objects))
