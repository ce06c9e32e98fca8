"""The built-in "places" task (`builtin:places`): the question, not the image, says where to look.

Each image is a pale canvas split into a GRID x GRID board of places, numbered 1..GRID**2 left to right, top to
bottom (on the 3 x 3 board: 1 2 3 / 4 5 6 / 7 8 9); every place holds one object of CELLS x CELLS visual tokens
(32 x 32 px each, the Qwen3-VL token size) at a random offset inside its place. All objects are drawn from the same
colours and shapes (repeats allowed), so no object stands out: which one matters is written only in the question, by
its place on the board, a cue that is not in the object's pixels. Two question kinds, alternating by row:

- colour:   "What colour is the object in place 6?"   -> "6 blue"    (one region)
- majority: "What colour are most of the objects?"    -> "red"       (every region)

A colour answer restates the place before the colour, as an answer that names what it reads: the token that reads
the image is then the place number itself, a one-step look-up. Without it the colour is read from the end of the
prompt, which first has to fetch the number from the question, and a tiny model trained from scratch stayed at the
random-object prior (docs/method.md, "The places task"). Shapes vary as distractors but are not asked about: the
tiny model did not learn to tell them apart on this board (same page).

A majority image has more than half of its objects in one colour; a colour question's image draws every colour
independently. The boxes of a row are the regions its answer needs: the one object asked about, or every object for a
majority question, so a good glimpse keeps one object's tokens for the first kind and all of them for the second.

Curriculum (training from scratch): with `curriculum` = N > 0, train rows 0..N-1 fill fewer places (2 objects at
row 0, rising linearly to every place at row N; the other places stay empty and are never asked about); read them in
order (`train_sampling_strategy: sequential`). Every other split fills every place.
"""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from .drawing import COLOURS, SynthObject, SynthSample, draw_object, parse_image_size

PALETTE = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle", "cross")
KINDS = ("colour", "majority")
TOKEN = 32  # pixels per visual token side (Qwen3-VL: 16 px patches, 2 x 2 merged)
CELLS = 2  # an object covers CELLS x CELLS visual tokens
GRID = 3  # places per side of the board at full size
PLACE = 3  # visual tokens per side of one place (the object moves by up to PLACE - CELLS tokens inside it)
MARGIN = 4  # px between an object's ink and its token cells' border
DEFAULT_SIZE = GRID * PLACE * TOKEN  # 288 px: 9 x 9 = 81 visual tokens, 4 of them (4.9%) per object


def filled_places(split: str, index: int, curriculum: int = 0) -> int:
    """Objects on the board of row `index`: 2 at row 0 of a curriculum, rising to GRID**2; GRID**2 everywhere else."""
    if split != "train" or curriculum <= 0 or index >= curriculum:
        return GRID * GRID
    return 2 + ((GRID * GRID - 2) * index) // curriculum


def place_number(row: int, col: int) -> int:
    """The place's number in the questions: 1..GRID**2, left to right, top to bottom."""
    return row * GRID + col + 1


def _colours(rng: random.Random, n: int, kind: str) -> list[str]:
    if kind != "majority":
        return [rng.choice(PALETTE) for _ in range(n)]
    top = rng.choice(PALETTE)
    count = rng.randint(n // 2 + 1, min(n, n // 2 + 2))  # a strict majority, by a margin that leaves others room
    rest = [rng.choice([c for c in PALETTE if c != top]) for _ in range(n - count)]
    colours = [top] * count + rest
    rng.shuffle(colours)
    return colours


def make_places_sample(
    seed: int, split: str, index: int, image_size: int | tuple[int, int] = DEFAULT_SIZE, curriculum: int = 0
) -> SynthSample:
    """Sample `index` of `split`, a pure function of its arguments (see the module docstring). The board fills the
    canvas: each place is a third of the requested side."""
    width, height = parse_image_size(image_size)
    if width != height or width % (GRID * TOKEN):
        raise ValueError(
            f"the places task needs a square image whose side is a multiple of {GRID * TOKEN} px "
            f"(e.g. {DEFAULT_SIZE}), got {width}x{height}."
        )
    place_tokens = width // (GRID * TOKEN)
    if place_tokens < CELLS:
        raise ValueError(
            f"image side {width} px is too small for the places task: use at least {DEFAULT_SIZE // 3 * 2}."
        )
    rng = random.Random(f"glimpserl-places/v1/{seed}/{split}/{index}")
    kind = KINDS[index % len(KINDS)]
    places = sorted(
        rng.sample([(r, c) for r in range(GRID) for c in range(GRID)], filled_places(split, index, curriculum))
    )
    colours = _colours(rng, len(places), kind)
    objects = []
    for (r, c), colour in zip(places, colours):
        dr, dc = rng.randint(0, place_tokens - CELLS), rng.randint(0, place_tokens - CELLS)
        top, left = (r * place_tokens + dr) * TOKEN, (c * place_tokens + dc) * TOKEN
        box = (left + MARGIN, top + MARGIN, left + CELLS * TOKEN - MARGIN, top + CELLS * TOKEN - MARGIN)
        objects.append(SynthObject(rng.choice(SHAPES), colour, box))
    pale = rng.randint(200, 235)
    image = Image.new("RGB", (width, height), tuple(pale + rng.randint(-6, 6) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for obj in objects:
        draw_object(draw, obj, palette=COLOURS)
    if kind == "majority":
        answer = max(PALETTE, key=colours.count)
        return SynthSample(
            image,
            "What colour are most of the objects?",
            answer,
            kind,
            objects[0],
            tuple(objects),
            regions=tuple(objects),
        )
    asked = rng.randrange(len(places))
    target = objects[asked]
    number = place_number(*places[asked])
    question = f"What colour is the object in place {number}?"
    answer = f"{number} {target.colour}"
    others = tuple(o for i, o in enumerate(objects) if i != asked)
    return SynthSample(image, question, answer, kind, target, (target, *others))


def asked_colour(answer: str) -> str:
    """The colour an answer names: a colour answer restates the place first ("3 red"), a majority answer is the colour
    alone."""
    return answer.split()[-1]


def random_object_prior(samples) -> dict:
    """Exact match of answering each question from one object of its board picked at random (the expected score of
    a model that reads some object, not the one asked about; the place it restates is in the question): overall and
    per kind. A majority question read from a
    random object scores when that object has the majority colour."""
    by_kind: dict[str, list[float]] = {}
    for sample in samples:
        colour = asked_colour(sample.answer)
        share = sum(o.colour == colour for o in sample.objects) / len(sample.objects)
        by_kind.setdefault(sample.kind, []).append(share)
    every = [share for shares in by_kind.values() for share in shares]
    return {
        "exact_match": sum(every) / max(len(every), 1),
        "by_kind": {kind: sum(shares) / len(shares) for kind, shares in sorted(by_kind.items())},
    }
