"""VQA data for both training stages: load any table, validate every row up front, build conversational prompts.

    dataset, report = load_vqa(DataConfig(dataset="data/synth/train.jsonl"))
    sample = to_conversation(dataset[0], config)  # .conversation: {"prompt": [...], "images": [PIL], ...}

Canonical columns after `load_vqa`:
    image       list[str]          absolute image paths (always a list, even for one image)
    question    str                the raw question (the template is applied by `to_conversation`)
    answer      list[str]          accepted answers (duplicates kept: VQA soft accuracy counts them)
    boxes       list[list[float]]  [x0, y0, x1, y1] in pixels of the original image; [] when none
    source_row  int                the row's index in the source, so later errors can name it
plus any `extra_columns`, unchanged.
"""

from __future__ import annotations

import difflib
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from . import rows as data_rows
from .rows import BadRow
from .settings import CANONICAL_COLUMNS, DataConfig
from .sources import RawTable, default_image_cache, read_table

logger = logging.getLogger(__name__)

_TEXT, _NUMBER = datasets.Value("string"), datasets.Value("float64")
_TYPES = (
    datasets.List(_TEXT),
    _TEXT,
    datasets.List(_TEXT),
    datasets.List(datasets.List(_NUMBER)),
    datasets.Value("int64"),
)
CANONICAL_FEATURES = datasets.Features(dict(zip(CANONICAL_COLUMNS, _TYPES, strict=True)))
"""The types of the canonical columns (see the module docstring)."""


@dataclass
class DataReport:
    """What `load_vqa` kept and dropped. `skipped` counts bad rows per reason; `examples` holds a few row indices."""

    source: str
    rows_read: int
    rows_kept: int
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[int]] = field(default_factory=dict)

    @property
    def rows_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        if not self.skipped:
            return f"{self.source}: kept all {self.rows_kept} rows"
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items(), key=lambda kv: -kv[1]))
        first = ", ".join(f"{reason}: rows {rows}" for reason, rows in self.examples.items())
        return f"{self.source}: skipped {self.rows_skipped} of {self.rows_read} rows: {reasons} (first: {first})"


def load_vqa(config: DataConfig) -> tuple[datasets.Dataset, DataReport]:
    """Load `config.dataset`, validate every row, and return it in the canonical schema with a report.

    With on_bad_row='error' the first bad row raises a ValueError naming the source, the row and what to change.
    """
    table = read_table(config.dataset, config.split)
    root = Path(config.image_root).expanduser().resolve() if config.image_root else table.image_root
    if not len(table.rows):
        raise ValueError(
            f"{table.source} holds no rows (an empty file, or a header without data); point dataset at the file "
            "that holds the samples."
        )
    if table.problems and (config.on_bad_row == "error" or len(table.problems) == len(table.rows)):
        index = min(table.problems)  # unreadable rows first: they also hide the columns the check below needs
        message = _problem(table, index).message if config.on_bad_row == "error" else table.problems[index][1]
        raise ValueError(f"{table.where(index)}: {message}.")
    _check_columns(table, config)
    has_boxes = config.boxes_column is not None and config.boxes_column in table.columns
    cache_dir = Path(config.image_cache_dir).expanduser() if config.image_cache_dir else default_image_cache()

    rows: list[dict[str, Any]] = []
    skipped: Counter = Counter()
    examples: dict[str, list[int]] = {}
    read = 0
    for index, raw in enumerate(table.rows):
        if config.max_samples is not None and len(rows) >= config.max_samples:
            break
        read += 1
        try:
            if index in table.problems:
                raise _problem(table, index)
            rows.append(_canonical_row(raw, index, root, cache_dir, has_boxes, config))
        except BadRow as bad:
            if config.on_bad_row == "error":
                raise ValueError(f"{table.where(index)}: {bad.message}.") from None
            skipped[bad.reason] += 1
            examples.setdefault(bad.reason, [])
            if len(examples[bad.reason]) < 5:
                examples[bad.reason].append(index)

    report = DataReport(table.source, read, len(rows), dict(skipped), examples)
    if report.skipped:
        logger.warning("%s", report.summary())
    if not rows:
        raise ValueError(f"{table.source}: no usable rows ({report.summary() if read else 'the source is empty'}).")
    if has_boxes:
        _check_box_scale(rows, table.source, config)
    return _to_dataset(rows, config), report


def _problem(table: RawTable, index: int) -> BadRow:
    reason, message = table.problems[index]
    return BadRow(reason, f"{message}, {data_rows.SKIP_HINT}")


def _check_columns(table: RawTable, config: DataConfig) -> None:
    required = {
        "image_column": config.image_column,
        "question_column": config.question_column,
        "answer_column": config.answer_column,
    }
    if config.boxes_column and config.boxes_column != "boxes":
        required["boxes_column"] = config.boxes_column  # asked for by name, so its absence is a mistake
    required.update({f"extra_columns[{i}]": c for i, c in enumerate(config.extra_columns)})
    for setting, column in required.items():
        if column not in table.columns:
            close = difflib.get_close_matches(column, table.columns, n=1)
            guess = f" Did you mean {setting}={close[0]!r}?" if close else ""
            raise ValueError(
                f"{table.source}: no column {column!r} ({setting}); columns found: {table.columns}. "
                f"Set {setting} to the column that holds it.{guess}"
            )


def _canonical_row(raw: dict, index: int, root: Path | None, cache: Path, has_boxes: bool, config: DataConfig) -> dict:
    paths = data_rows.image_paths(raw.get(config.image_column), root, cache, config.image_column)
    sizes = [data_rows.image_size(path, root, config.verify_images) for path in paths]
    for path, size in zip(paths, sizes):
        data_rows.check_aspect_ratio(path, size, config.max_aspect_ratio)
    row = {
        "image": [str(path) for path in paths],
        "question": data_rows.text(raw.get(config.question_column), config.question_column, "empty question"),
        "answer": data_rows.answers(raw.get(config.answer_column), config.answer_column),
        "boxes": data_rows.boxes(raw.get(config.boxes_column), sizes, config) if has_boxes else [],
        "source_row": index,
    }
    row.update({column: raw.get(column) for column in config.extra_columns})
    return row


def _check_box_scale(rows: list[dict], source: str, config: DataConfig) -> None:
    """Normalised boxes read as pixels are valid but tiny; catch the mix-up here instead of in a flat loss curve."""
    coords = [v for row in rows for box in row["boxes"] for v in box]
    if config.box_format == "xyxy_pixel" and coords and max(coords) <= 1.0:
        raise ValueError(
            f"{source}: every box coordinate is <= 1.0 but box_format='xyxy_pixel'; the boxes look normalised, "
            "so set box_format='xyxy_norm'."
        )


def _to_dataset(rows: list[dict], config: DataConfig) -> datasets.Dataset:
    canonical = [{key: row[key] for key in CANONICAL_FEATURES} for row in rows]
    dataset = datasets.Dataset.from_list(canonical, features=CANONICAL_FEATURES)
    for column in config.extra_columns:
        dataset = dataset.add_column(column, [row[column] for row in rows])
    return dataset
