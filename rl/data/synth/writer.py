"""Write a synthetic task's splits to disk (`write_synth`), or once into glimpserl's cache (`cached_synth`).

A task is a pure sample function `make(seed, split, index, image_size, **options)` and its question kinds; `TASKS`
names them. Same seed -> byte-identical files; `dataset.json`, written last, describes the set.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import glimpse, places, shapes
from .builtin import BUILTIN_SETS, SynthArguments, check_split
from .drawing import font_path, parse_image_size

FORMAT_VERSION = 1
"""Version of the files' layout (columns, dataset.json)."""


@dataclass(frozen=True)
class Task:
    """A synthetic task: its sample function, question kinds, and version (bumped whenever it draws different images
    or asks different questions for the same seed: the cache key)."""

    make: Callable
    kinds: tuple[str, ...]
    version: int
    curriculum: bool = False


TASKS = {
    "glimpse": Task(glimpse.make_sample, glimpse.KINDS, 1),
    "shapes": Task(shapes.make_shapes_sample, shapes.KINDS, 2, curriculum=True),
    "places": Task(places.make_places_sample, places.KINDS, 2, curriculum=True),  # v2: colour + majority
}
"""glimpse: one target among distractors (colour / digit / word questions); shapes: the built-in mini model's task
(find the one coloured object among grey ones, then read it); places: the question names the object by its place
on a board of equally salient objects, or asks about all of them."""


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown synthetic task {name!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[name]


def _write_split(
    out_dir: Path, split: str, n: int, size: tuple[int, int], seed: int, task: str, curriculum: int = 0
) -> Counter:
    kinds: Counter = Counter()
    make = get_task(task).make
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
                "boxes": sample.boxes,
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
    kind_names = get_task(task).kinds
    if curriculum and not get_task(task).curriculum:
        with_curriculum = [name for name, t in TASKS.items() if t.curriculum]
        raise ValueError(f"curriculum is a feature of the {' and '.join(with_curriculum)} tasks, not of {task!r}.")
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
        "task_version": get_task(task).version,
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
            "boxes": "list of [x0, y0, x1, y1] around the regions the answer needs",
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
    from ....models.loading import cache_dir

    val = f"-{n_val}" if n_val else ""
    name = "synth" if task == "glimpse" else f"{task}-v{get_task(task).version}"  # a new version is a new folder
    ramp = f"-c{curriculum}" if curriculum else ""
    folder = cache_dir() / f"{name}-seed{seed}-n{n_train}{val}-{n_test}-{image_size}{ramp}"
    if not (folder / "dataset.json").is_file():  # dataset.json is written last: its presence means complete
        # Written beside the folder and renamed into place, so two jobs sharing the cache never write into one folder
        # (rows name their images relative to the set's folder, so the rename moves nothing they point to).
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
        try:
            write_synth(tmp, n_train, n_test, image_size, seed, True, task, n_val, curriculum)
            if folder.exists() and not (folder / "dataset.json").is_file():
                shutil.rmtree(folder)  # an interrupted write of an earlier version of this function
            tmp.rename(folder)
        except OSError:
            if not (folder / "dataset.json").is_file():  # not a job that finished first with the same set
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def builtin_split(name: str, split: str, settings: SynthArguments | None = None) -> Path:
    """The JSONL file of `split` of the built-in set `name` under `settings` (default: SynthArguments' defaults),
    written once into glimpserl's cache."""
    check_split(name, split)
    s = settings or SynthArguments()
    folder = cached_synth(
        s.synth_train,
        s.synth_test,
        s.synth_image_size,
        s.synth_seed,
        task=BUILTIN_SETS[name],
        n_val=s.synth_val,
        curriculum=s.synth_curriculum,
    )
    return folder / f"{split}.jsonl"
