"""VQA data for both training stages: load any table, validate every row up front, build conversational prompts.

    dataset, report = load_vqa(DataConfig(dataset="data/synth/train.jsonl"))
    sample = to_conversation(dataset[0], config)  # {"prompt": [...], "images": [PIL], "answer": [...], ...}

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
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
from PIL import Image

from glimpserl.rl import data_rows
from glimpserl.rl.data_rows import BadRow
from glimpserl.rl.data_sources import RawTable, default_image_cache, read_table

logger = logging.getLogger(__name__)

CANONICAL_FEATURES = datasets.Features(
    {
        "image": datasets.List(datasets.Value("string")),
        "question": datasets.Value("string"),
        "answer": datasets.List(datasets.Value("string")),
        "boxes": datasets.List(datasets.List(datasets.Value("float64"))),
        "source_row": datasets.Value("int64"),
    }
)


@dataclass
class DataConfig:
    """Where the VQA data lives, how its columns are named, and how its prompts are worded."""

    dataset: str = field(
        metadata={
            "help": "A .jsonl/.json/.csv/.parquet file, a folder written by datasets' save_to_disk, or a hub dataset "
            "id (downloaded only when HF_HUB_OFFLINE is unset)."
        }
    )
    split: str = field(
        default="train", metadata={"help": "Split to use for save_to_disk folders with several splits and hub ids."}
    )
    image_root: str | None = field(
        default=None,
        metadata={"help": "Folder that relative image paths start from. Default: the data file's folder."},
    )
    image_column: str = field(default="image", metadata={"help": "Column with an image path or a list of them."})
    question_column: str = field(default="question", metadata={"help": "Column with the question text."})
    answer_column: str = field(
        default="answer", metadata={"help": "Column with the answer, or a list of accepted answers."}
    )
    boxes_column: str | None = field(
        default="boxes",
        metadata={
            "help": "Column with boxes around the evidence ([x0, y0, x1, y1] or a list of them). Optional: when the "
            "default 'boxes' column is absent, rows get no boxes. Set to '' to ignore boxes."
        },
    )
    box_format: Literal["xyxy_pixel", "xyxy_norm"] = field(
        default="xyxy_pixel",
        metadata={"help": "Box coordinates: pixels of the original image, or fractions of its width and height."},
    )
    clip_boxes: bool = field(
        default=False,
        metadata={"help": "Clip boxes that cross the image border instead of treating the row as bad."},
    )
    min_pixels: int | None = field(
        default=None,
        metadata={"help": "Smallest image area (pixels) the image processor resizes to. Default: the processor's."},
    )
    max_pixels: int | None = field(
        default=None,
        metadata={
            "help": "Largest image area (pixels) the image processor resizes to; bounds the prompt length. "
            "Default: the processor's."
        },
    )
    on_bad_row: Literal["error", "skip"] = field(
        default="error",
        metadata={"help": "'error': stop at the first bad row and name it. 'skip': drop bad rows and log a summary."},
    )
    verify_images: bool = field(
        default=True,
        metadata={"help": "Check every image file's integrity with PIL up front (image sizes are always read)."},
    )
    max_aspect_ratio: float = field(
        default=200.0,
        metadata={
            "help": "Largest long-side / short-side ratio of a row's images; a more elongated image makes the row "
            "bad. Qwen2-VL-family image processors refuse images over 200."
        },
    )
    max_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N good rows (quick runs and debugging)."}
    )
    extra_columns: list[str] = field(
        default_factory=list,
        metadata={"help": "Other columns to carry through unchanged, e.g. choices for a multiple-choice reward."},
    )
    image_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where images embedded in the table (parquet/hub bytes) are written as files. "
            "Default: $XDG_CACHE_HOME/glimpserl/images (~/.cache/... when unset)."
        },
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "System message text; None leaves it to the chat template's default."}
    )
    question_template: str = field(
        default="{question}\nAnswer with a single word or phrase.",
        metadata={"help": "Text of the user turn after the image(s); must contain {question} and no other field."},
    )

    def __post_init__(self) -> None:
        if not self.dataset:
            raise ValueError("DataConfig.dataset is empty: give a data file, a save_to_disk folder or a hub id.")
        self.boxes_column = self.boxes_column or None
        _check_choice("box_format", self.box_format, ("xyxy_pixel", "xyxy_norm"))
        _check_choice("on_bad_row", self.on_bad_row, ("error", "skip"))
        fields = [name for _, name, _, _ in string.Formatter().parse(self.question_template) if name is not None]
        if fields != ["question"]:
            raise ValueError(
                f"question_template must contain {{question}} exactly once and no other {{field}}, got fields "
                f"{fields} in {self.question_template!r} (write literal braces as {{{{ and }}}})."
            )
        for name in ("min_pixels", "max_pixels", "max_samples"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be a positive integer or None, got {value}.")
        if not self.max_aspect_ratio >= 1.0:
            raise ValueError(f"max_aspect_ratio must be >= 1 (long side / short side), got {self.max_aspect_ratio}.")
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels ({self.min_pixels}) is larger than max_pixels ({self.max_pixels}).")
        named = [self.image_column, self.question_column, self.answer_column, self.boxes_column, *self.extra_columns]
        named = [c for c in named if c]
        if len(set(named)) != len(named):
            raise ValueError(f"the column settings name the same column twice: {named}; each role needs its own.")
        clash = set(self.extra_columns) & {*CANONICAL_FEATURES, "images", "prompt"}
        if clash:
            raise ValueError(f"extra_columns {sorted(clash)} would overwrite canonical columns; rename them.")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}.")


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


def load_rgb(path: str, row: Any = None) -> Image.Image:
    """The image at `path` as RGB. EXIF rotation is NOT applied: boxes are in the stored pixel grid."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as err:  # a file that changed since load_vqa validated it
        raise ValueError(f"row {row}: cannot read image {path} ({type(err).__name__}: {err}).") from err


def to_conversation(row: dict[str, Any], config: DataConfig) -> dict[str, Any]:
    """One canonical row -> the conversational sample TRL's GRPOTrainer/SFTTrainer take for a VLM.

    `prompt` holds one {"type": "image"} placeholder per image before the question; TRL fills them from `images`.
    Every other column (answer, boxes, question, source_row, extras) passes through for rewards and losses.
    """
    images = [load_rgb(path, row.get("source_row")) for path in row["image"]]
    user = [{"type": "image"} for _ in images]
    user.append({"type": "text", "text": config.question_template.format(question=row["question"])})
    prompt = [{"role": "user", "content": user}]
    if config.system_prompt:
        prompt.insert(0, {"role": "system", "content": [{"type": "text", "text": config.system_prompt}]})
    passthrough = {key: value for key, value in row.items() if key != "image"}
    return {**passthrough, "prompt": prompt, "images": images}


def conversation_dataset(dataset: datasets.Dataset, config: DataConfig) -> datasets.Dataset:
    """`dataset` with `to_conversation` applied lazily on access (images are decoded only when a batch needs them)."""

    def transform(batch: dict[str, list]) -> dict[str, list]:
        size = len(next(iter(batch.values())))
        samples = [to_conversation({key: values[i] for key, values in batch.items()}, config) for i in range(size)]
        return {key: [sample[key] for sample in samples] for key in samples[0]}

    return dataset.with_transform(transform)


def check_prompt_fits(
    processor: Any,
    conversation: list[dict] | dict[str, Any],
    images: list[Image.Image] | None,
    max_length: int,
    row: Any = None,
    truncation_side: Literal["left", "right"] | None = None,
) -> int:
    """Raise if cutting the tokenized prompt to `max_length` would cut through image tokens; return its length.

    `conversation` is a `to_conversation` sample or its `prompt`; it is tokenized exactly as TRL does (chat template,
    generation prompt, images expanded to their visual tokens). The side cut is the tokenizer's truncation_side
    unless given. A prompt that only loses text is allowed: that is a choice, a broken image is a bug.
    """
    from trl.data_utils import prepare_multimodal_messages

    if isinstance(conversation, dict):
        images = conversation.get("images") if images is None else images
        row = conversation.get("source_row") if row is None else row
        conversation = conversation["prompt"]
    messages = prepare_multimodal_messages(conversation, images=list(images or []))
    encoded = processor.apply_chat_template(
        conversation=[messages], add_generation_prompt=True, tokenize=True, return_dict=True
    )
    ids = [int(i) for i in encoded["input_ids"][0]]
    image_id = _image_token_id(processor)
    total = ids.count(image_id)
    if len(ids) <= max_length:
        return len(ids)
    side = truncation_side or getattr(processor.tokenizer, "truncation_side", "right")
    kept = (ids[-max_length:] if side == "left" else ids[:max_length]).count(image_id)
    if kept != total:
        raise ValueError(
            f"row {row}: the prompt is {len(ids)} tokens, {total} of them image tokens; cutting it to "
            f"max_length={max_length} ({side} truncation) keeps {kept} image tokens and breaks the image. Raise "
            f"max_length to at least {len(ids)}, or lower max_pixels so each image gives fewer tokens."
        )
    return len(ids)


def _image_token_id(processor: Any) -> int:
    from ..models import processor_adapter

    try:
        token_id = processor_adapter(processor).image_token_id(processor)
    except (ValueError, AttributeError, TypeError):
        token_id = None
    if token_id is None or token_id == getattr(getattr(processor, "tokenizer", None), "unk_token_id", object()):
        raise ValueError(f"{type(processor).__name__} has no image token; check_prompt_fits needs a VLM processor.")
    return int(token_id)
