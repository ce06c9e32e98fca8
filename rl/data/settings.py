"""What a VQA data set is and how its prompts are worded: `DataConfig` (a recipe's data keys), built from the
`SourceArguments` and `PromptArguments` that `glimpserl eval` shares, declared and checked here.

Light on purpose (standard library only): the eval command line is built from these fields.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Literal

CANONICAL_COLUMNS = ("image", "question", "answer", "boxes", "source_row")
"""The columns every loaded row has (see `loading.CANONICAL_FEATURES` for their types)."""
DEFAULT_QUESTION_TEMPLATE = "{question}\nAnswer with a single word or phrase."


@dataclass(kw_only=True)
class SourceArguments:
    """Which rows are read, and where their answers are."""

    dataset: str | None = field(
        default=None,
        metadata={
            "help": "A .jsonl/.json/.csv/.parquet file, a folder written by datasets' save_to_disk, a hub dataset id "
            "(downloaded only when HF_HUB_OFFLINE is unset), or builtin:synth / builtin:shapes. A recipe must set "
            "it; glimpserl eval defaults to the held-out data of the run given by --glimpse / --run, else "
            "builtin:synth."
        },
    )
    split: str = field(
        default="train",
        metadata={"help": "Split to read (save_to_disk folders with several splits, hub ids, builtin sets)."},
    )
    answer_column: str = field(
        default="answer", metadata={"help": "Column with the reference answer, or a list of accepted answers."}
    )
    max_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N good rows (quick runs and debugging)."}
    )


@dataclass(kw_only=True)
class PromptArguments:
    """How a row becomes a prompt: its wording and its images' pixel bounds."""

    question_template: str | None = field(
        default=None,
        metadata={
            "help": "Text of the user turn after the image(s); must contain {question} and no other field. Default: "
            f"{DEFAULT_QUESTION_TEMPLATE!r}; glimpserl eval uses the template of the run given by --glimpse / --run "
            "(its glimpserl_run.json)."
        },
    )
    system_prompt: str | None = field(
        default=None,
        metadata={"help": "System message text; None leaves it to the chat template's default (eval: the run's)."},
    )
    image_position: Literal["before", "after"] | None = field(
        default=None,
        metadata={
            "help": "Where the image(s) sit in the user turn: before the question (None: the default) or after it, "
            "so that the visual tokens follow the question (eval: the run's)."
        },
    )
    min_pixels: int | None = field(
        default=None,
        metadata={"help": "Smallest image area (pixels) the image processor resizes to. Default: the processor's."},
    )
    max_pixels: int | None = field(
        default=None,
        metadata={
            "help": "Largest image area (pixels) the image processor resizes to; bounds the prompt length. "
            "Default: the processor's (eval: the run's)."
        },
    )

    @property
    def template(self) -> str:
        """The question template in effect (the default when none is set)."""
        return DEFAULT_QUESTION_TEMPLATE if self.question_template is None else self.question_template

    @property
    def images_first(self) -> bool:
        """The image(s) come before the question in the user turn (the default)."""
        return self.image_position != "after"

    def question_text(self, question: str) -> str:
        return self.template.format(question=question)


@dataclass(kw_only=True)
class DataConfig(SourceArguments, PromptArguments):
    """Where the VQA data lives, how its columns are named, and how its prompts are worded."""

    image_root: str | None = field(
        default=None,
        metadata={"help": "Folder that relative image paths start from. Default: the data file's folder."},
    )
    image_column: str = field(default="image", metadata={"help": "Column with an image path or a list of them."})
    question_column: str = field(default="question", metadata={"help": "Column with the question text."})
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

    def __post_init__(self) -> None:
        if not self.dataset:
            raise ValueError("DataConfig.dataset is empty: give a data file, a save_to_disk folder or a hub id.")
        self.boxes_column = self.boxes_column or None
        _check_choice("box_format", self.box_format, ("xyxy_pixel", "xyxy_norm"))
        _check_choice("on_bad_row", self.on_bad_row, ("error", "skip"))
        if self.image_position is not None:
            _check_choice("image_position", self.image_position, ("before", "after"))
        fields = [name for _, name, _, _ in string.Formatter().parse(self.template) if name is not None]
        if fields != ["question"]:
            raise ValueError(
                f"question_template must contain {{question}} exactly once and no other {{field}}, got fields "
                f"{fields} in {self.template!r} (write literal braces as {{{{ and }}}})."
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
        clash = set(self.extra_columns) & {*CANONICAL_COLUMNS, "images", "prompt"}
        if clash:
            raise ValueError(f"extra_columns {sorted(clash)} would overwrite canonical columns; rename them.")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}.")
