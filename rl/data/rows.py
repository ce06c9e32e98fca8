"""Validation and normalisation of one raw VQA row into the canonical schema of `glimpserl.rl.data.loading`.

Each check raises `BadRow(reason, message)`; the loader turns it into an error naming the row, or counts it under
`reason` when bad rows are skipped. Reasons are short nouns so a skip summary reads "2 missing image, 1 empty answer".
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from PIL import Image

from .settings import DataConfig
from .sources import store_embedded_image

SKIP_HINT = "or set on_bad_row='skip' to drop such rows"


class BadRow(Exception):
    """One row's problem: `reason` groups skip counts, `message` says what is wrong and what to change."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def image_paths(value: Any, root: Path | None, cache_dir: Path, column: str) -> list[Path]:
    """Absolute paths of the row's images; embedded images (bytes, PIL) are written to `cache_dir` first."""
    values = list(value) if isinstance(value, list | tuple) else [value]
    if not values or all(v is None or v == "" for v in values):
        raise BadRow("missing image", f"column {column!r} is empty; every row needs at least one image, {SKIP_HINT}")
    paths = []
    for item in values:
        stored = store_embedded_image(item, cache_dir)
        if stored is not None:
            paths.append(stored)
            continue
        if isinstance(item, dict):
            item = item.get("path")  # datasets' Image feature without bytes
        if not isinstance(item, str | os.PathLike) or not str(item):
            raise BadRow(
                "bad image field",
                f"column {column!r} holds {type(item).__name__} {item!r}; expected a path (or a list of paths)",
            )
        path = Path(item).expanduser()
        if not path.is_absolute():
            if root is None:
                raise BadRow(
                    "missing image",
                    f"image path {str(item)!r} is relative but this source has no folder; set image_root to the "
                    "folder the paths are relative to",
                )
            path = root / path
        paths.append(Path(os.path.abspath(path)))
    return paths


def image_size(path: Path, root: Path | None, verify: bool) -> tuple[int, int]:
    """(width, height) of the image at `path` after checking that it exists and that PIL can read it."""
    if not path.is_file():
        where = f" (image_root is {root}; set image_root if the paths are relative to another folder)" if root else ""
        raise BadRow("missing image", f"image file {path} does not exist{where}, {SKIP_HINT}")
    try:
        with Image.open(path) as image:
            size = image.size
            if verify:
                image.verify()  # checks the file structure (PNG CRCs etc.) without decoding all pixels
    except Exception as err:  # PIL raises several types for broken files; all mean "unusable"
        raise BadRow(
            "unreadable image",
            f"cannot read {path} as an image ({type(err).__name__}: {err}); replace or remove the file, {SKIP_HINT}",
        ) from None
    return size


def check_aspect_ratio(path: Path, size: tuple[int, int], limit: float) -> None:
    """An image more elongated than `limit` (long side / short side) is refused by the image processor at the first
    step; it is a bad row here instead."""
    width, height = size
    if max(width, height) > limit * min(width, height):
        raise BadRow(
            "extreme aspect ratio",
            f"image {path} is {width}x{height}, {max(width, height) / max(min(width, height), 1):.0f} times longer "
            f"than wide, over max_aspect_ratio={limit:g} (the image processor refuses it); crop or pad the image, "
            f"{SKIP_HINT}",
        )


def text(value: Any, column: str, reason: str) -> str:
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return _number_text(value)
    raise BadRow(reason, f"column {column!r} is {value!r}; it must be non-empty text, {SKIP_HINT}")


def answers(value: Any, column: str) -> list[str]:
    """Accepted answers as a list of strings. Duplicates are kept: VQA soft accuracy counts annotators."""
    items = list(value) if isinstance(value, list | tuple) else [value]
    out = []
    for item in items:
        if isinstance(item, dict) and "answer" in item:
            item = item["answer"]  # VQAv2-style [{"answer": ..., "answer_confidence": ...}]
        if isinstance(item, str) and item.strip():
            out.append(item.strip())
        elif isinstance(item, int | float) and not isinstance(item, bool) and math.isfinite(item):
            out.append(_number_text(item))
    if not out:
        raise BadRow("empty answer", f"column {column!r} is {value!r}: no non-empty answer, {SKIP_HINT}")
    return out


def _number_text(value: int | float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def boxes(value: Any, sizes: list[tuple[int, int]], config: DataConfig) -> list[list[float]]:
    """Boxes as [[x0, y0, x1, y1], ...] in pixels of the (first) image; [] when the row has none."""
    if value is None or (isinstance(value, list | tuple) and len(value) == 0):
        return []
    if not isinstance(value, list | tuple):
        raise BadRow("malformed boxes", _malformed(value, config))
    if len(value) == 4 and all(_is_number(v) for v in value):
        value = [value]  # a single flat box
    if len(sizes) > 1:
        raise BadRow(
            "malformed boxes",
            f"the row has {len(sizes)} images and boxes, so it is unclear which image the boxes belong to; "
            "use single-image rows or set boxes_column='' to ignore boxes",
        )
    width, height = sizes[0]
    return [_box(box, width, height, config) for box in value]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _malformed(value: Any, config: DataConfig) -> str:
    return (
        f"column {config.boxes_column!r} holds {value!r}; expected a list of [x0, y0, x1, y1] with x0 < x1 and "
        f"y0 < y1 ({config.box_format}), {SKIP_HINT}"
    )


def _box(box: Any, width: int, height: int, config: DataConfig) -> list[float]:
    if not isinstance(box, list | tuple) or len(box) != 4 or not all(_is_number(v) for v in box):
        raise BadRow("malformed boxes", _malformed(box, config))
    x0, y0, x1, y1 = (float(v) for v in box)
    if config.box_format == "xyxy_norm":
        if not all(0.0 <= v <= 1.0 for v in (x0, y0, x1, y1)) and not config.clip_boxes:
            raise BadRow(
                "box outside image",
                f"box {list(box)} has values outside [0, 1] but box_format='xyxy_norm'; if the boxes are in "
                f"pixels set box_format='xyxy_pixel', or set clip_boxes=True, {SKIP_HINT}",
            )
        x0, x1, y0, y1 = x0 * width, x1 * width, y0 * height, y1 * height
    if not (x0 < x1 and y0 < y1):
        raise BadRow("malformed boxes", _malformed(box, config))
    inside = 0 <= x0 and 0 <= y0 and x1 <= width and y1 <= height
    if not inside and config.clip_boxes:
        x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))
        inside = x0 < x1 and y0 < y1  # a box entirely off the image stays an error
    if not inside:
        raise BadRow(
            "box outside image",
            f"box {list(box)} ({config.box_format}) is not inside the {width}x{height} image; fix the box, set "
            f"clip_boxes=True to clip it, {SKIP_HINT}",
        )
    return [x0, y0, x1, y1]
