"""A deterministic synthetic "glimpse" VQA dataset: the answer lives in one small region of a larger image.

Each image holds a noisy background, a few distractor shapes and ONE target object covering about 5-12% of the
image. Three question kinds, all with a single-word answer:

- colour: "What colour is the triangle?" (the only object of that shape)
- digit:  "What digit is written inside the red square?" (other squares/circles carry other digits)
- word:   "What word is written in the blue box?" (other boxes carry other words)

The box of the target is stored in pixels (xyxy, x1/y1 exclusive), so the set serves both stage 1 (box loss)
and stage 2 (exact-match reward), and lets tests check that a pruner keeps the right tokens.

    glimpserl data synth --out data/synth --n-train 200 --n-test 50 --image-size 448 --seed 0

Same seed -> byte-identical files. Every sample draws from its own random stream keyed by (seed, split, index),
so train and test never share a stream and adding samples does not change the earlier ones.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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
SHAPES = ("circle", "square", "triangle")
WORDS = (
    "cat", "dog", "sun", "map", "key", "cup", "hat", "fox", "owl", "bee", "car", "bus", "pen", "egg", "ant",
    "moon", "star", "fish", "bird", "tree", "lamp", "boat", "door", "kite", "milk", "rain", "ship", "frog",
    "bell", "coin", "leaf", "rock", "wolf", "bear", "seed", "ring",
)  # fmt: skip
KINDS = ("colour", "digit", "word")
SPLITS = {"train": 0, "test": 1, "val": 2}
TASKS = ("glimpse", "shapes")
"""glimpse: this module's set (one target among distractors, colour / digit / word questions); shapes: the built-in
mini model's task (`synth_shapes`: find the one coloured object among grey ones, then read it)."""
TASK_VERSIONS = {"glimpse": 1, "shapes": 2}
"""Bumped whenever a task draws different images or asks different questions for the same seed (cache keys)."""
TARGET_AREA = (0.05, 0.12)  # fraction of the image covered by the target's box
DISTRACTOR_AREA = (0.012, 0.04)
MIN_SIDE = 56  # below this the digits and words are no longer legible
FORMAT_VERSION = 1


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
        raise ValueError(f"unknown shape {obj.shape!r}; expected one of {SHAPES + ('diamond', 'cross', 'box')}")
    if obj.label:
        # A circle's inscribed square is ~70% of its box; a frame's border eats into the box too.
        fill = {"circle": 0.55, "box": 0.6}.get(obj.shape, 0.7)
        colour = (0, 0, 0) if obj.shape == "box" else _text_colour(rgb)
        font = _fit_font(obj.label, obj.box, fill)
        draw.text(((x0 + x1) / 2, (y0 + y1) / 2), obj.label, fill=colour, font=font, anchor="mm")


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
    rng = random.Random(f"glimpserl-synth/v{FORMAT_VERSION}/{seed}/{split}/{index}")
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


def task_sampler(task: str):
    """The `make_*_sample(seed, split, index, image_size)` function of a synthetic task."""
    if task == "glimpse":
        return make_sample
    if task == "shapes":
        from .synth_shapes import make_shapes_sample

        return make_shapes_sample
    raise ValueError(f"unknown synthetic task {task!r}; valid tasks: {', '.join(TASKS)}")


def task_kinds(task: str) -> tuple[str, ...]:
    if task == "shapes":
        from .synth_shapes import KINDS as SHAPE_KINDS

        return SHAPE_KINDS
    task_sampler(task)  # validates the name
    return KINDS


def _write_split(
    out_dir: Path, split: str, n: int, size: tuple[int, int], seed: int, task: str, curriculum: int = 0
) -> Counter:
    kinds: Counter = Counter()
    make = task_sampler(task)
    extra = {"curriculum": curriculum} if curriculum else {}
    with open(out_dir / f"{split}.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for index in range(n):
            sample = make(seed, split, index, size, **extra)
            rel = f"images/{split}_{index:06d}.png"
            sample.image.save(out_dir / rel, format="PNG")
            row = {
                "image": rel,
                "question": sample.question,
                "answer": sample.answer,
                "boxes": [list(sample.target.box)],
                "kind": sample.kind,
            }
            f.write(json.dumps(row) + "\n")
            kinds[sample.kind] += 1
    return kinds


def write_synth(
    out_dir: str | Path,
    n_train: int = 200,
    n_test: int = 50,
    image_size: int | tuple[int, int] = 448,
    seed: int = 0,
    overwrite: bool = False,
    task: str = "glimpse",
    n_val: int = 0,
    curriculum: int = 0,
) -> Path:
    """Write images/*.png, train.jsonl, test.jsonl (+ val.jsonl when n_val > 0) and dataset.json under `out_dir`."""
    if n_train < 0 or n_test < 0 or n_val < 0:
        raise ValueError(f"n_train, n_val and n_test must be >= 0, got {n_train}, {n_val} and {n_test}")
    kind_names = task_kinds(task)
    if curriculum and task != "shapes":
        raise ValueError(f"curriculum is a feature of the shapes task, not of {task!r}.")
    size = parse_image_size(image_size)
    out_dir = Path(out_dir)
    ours = [out_dir / name for name in ("images", "train.jsonl", "val.jsonl", "test.jsonl", "dataset.json")]
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out_dir} is not empty; pick a new --out or pass --overwrite to replace it.")
        # Remove only what we write: a stale image from a bigger earlier run must not linger.
        for path in ours:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    counts = {"train": n_train, **({"val": n_val} if n_val else {}), "test": n_test}
    kinds = {split: _write_split(out_dir, split, n, size, seed, task, curriculum) for split, n in counts.items()}
    card = {
        "name": "glimpserl-synth" if task == "glimpse" else f"glimpserl-{task}",
        "task": task,
        "format_version": FORMAT_VERSION,
        "task_version": TASK_VERSIONS[task],
        "seed": seed,
        **({"curriculum_rows": curriculum} if curriculum else {}),
        "image_size": {"width": size[0], "height": size[1]},
        "counts": counts,
        "kinds": {split: dict(sorted(c.items())) for split, c in kinds.items()},
        "files": {**{split: f"{split}.jsonl" for split in counts}, "images": "images/"},
        "columns": {
            "image": "path relative to this folder",
            "question": "str",
            "answer": "str, one word",
            "boxes": "list of [x0, y0, x1, y1] around the target",
            "kind": f"question kind, one of {list(kind_names)}",
        },
        "box_format": "xyxy_pixel",
        "box_note": "pixels of the stored image; x1 and y1 are exclusive (0 <= x0 < x1 <= width)",
        "font": font_path().name,
    }
    (out_dir / "dataset.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return out_dir


def cached_synth(
    n_train: int, n_test: int, image_size: int, seed: int, task: str = "glimpse", n_val: int = 0, curriculum: int = 0
) -> Path:
    """A built-in synthetic set (`builtin:synth`, `builtin:shapes`) with these settings, written once into
    glimpserl's cache."""
    from ..models.loading import cache_dir

    val = f"-{n_val}" if n_val else ""
    name = "synth" if task == "glimpse" else f"{task}-v{TASK_VERSIONS[task]}"  # a new version is a new folder
    ramp = f"-c{curriculum}" if curriculum else ""
    folder = cache_dir() / f"{name}-seed{seed}-n{n_train}{val}-{n_test}-{image_size}{ramp}"
    if not (folder / "dataset.json").is_file():  # dataset.json is written last: its presence means complete
        write_synth(folder, n_train, n_test, image_size, seed, True, task, n_val, curriculum)
    return folder


SYNTH_HELP = "Write the synthetic glimpse VQA dataset (images + train/test JSONL with answers and boxes)."
SYNTH_DESCRIPTION = (
    "Images whose answer lives in a small region, with the question, the exact answer and the region's box "
    "(train.jsonl, [val.jsonl,] test.jsonl, images/, dataset.json). Task glimpse: a coloured shape, a digit or a word "
    "among distractors; task shapes: the one coloured object among grey ones, its colour or shape asked. "
    "Deterministic by seed."
)


def add_synth_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give `parser` (new, or the `glimpserl data synth` sub-command's) the synth description and options."""
    parser.description = SYNTH_DESCRIPTION
    parser.add_argument("--out", required=True, type=Path, help="Output folder (created; must be empty).")
    parser.add_argument("--n-train", type=int, default=200, help="Number of training samples (default: 200).")
    parser.add_argument("--n-val", type=int, default=0, help="Number of validation samples (default: 0, none).")
    parser.add_argument("--n-test", type=int, default=50, help="Number of test samples (default: 50).")
    parser.add_argument(
        "--task",
        default="glimpse",
        choices=TASKS,
        help="glimpse: one target among distractors (colour / digit / word questions); shapes: find one object "
        "among several equally salient ones (the built-in mini model's task). Default: glimpse.",
    )
    parser.add_argument(
        "--image-size", default="448", help="Image size: 448 for square or WIDTHxHEIGHT like 640x480 (default: 448)."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed; the same seed writes byte-identical files.")
    parser.add_argument(
        "--curriculum",
        type=int,
        default=0,
        help="shapes task: the first N train rows hold fewer objects, rising from one (default: 0, off).",
    )
    parser.add_argument("--overwrite", action="store_true", help="Replace an earlier synth set in --out.")
    return parser


def run_synth(args: argparse.Namespace) -> int:
    """Write the set `args` (from `add_synth_arguments`) describe and print where it went."""
    size = parse_image_size(args.image_size)
    out = write_synth(
        args.out, args.n_train, args.n_test, size, args.seed, args.overwrite, args.task, args.n_val, args.curriculum
    )
    counts = f"{args.n_train} train + {args.n_val} val + {args.n_test} test" if args.n_val else None
    counts = counts or f"{args.n_train} train + {args.n_test} test"
    print(f"wrote {counts} {args.task} samples ({size[0]}x{size[1]}) to {out}")
    return 0


def synth_main(argv: list[str] | None = None) -> int:
    """`python -m glimpserl.rl.synth ...`: the same command as `glimpserl data synth ...`."""
    parser = add_synth_arguments(argparse.ArgumentParser(prog="glimpserl data synth"))
    args = parser.parse_args(argv)
    try:
        return run_synth(args)
    except (ValueError, FileExistsError) as err:
        parser.error(str(err))


if __name__ == "__main__":
    raise SystemExit(synth_main())
