"""The built-in data sets (`dataset: builtin:synth` / `builtin:shapes` / `builtin:places`): their names, their splits
and their settings (`writer.builtin_split` turns a name into files).

Light on purpose (standard library only at import): recipe and eval settings name these sets before anything heavy
is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BUILTIN_SETS = {"builtin:synth": "glimpse", "builtin:shapes": "shapes", "builtin:places": "places"}
"""Built-in data set name -> synthetic task (see `writer.TASKS`)."""
SPLITS = ("train", "val", "test")


@dataclass
class SynthArguments:
    """The built-in synthetic sets (`dataset: builtin:synth`, `builtin:shapes` or `builtin:places`): sizes and their
    own seed."""

    synth_train: int = field(default=200, metadata={"help": "Rows of the built-in synthetic train split."})
    synth_val: int = field(
        default=64, metadata={"help": "Rows of the built-in synthetic validation split (thresholds are picked here)."}
    )
    synth_test: int = field(default=50, metadata={"help": "Rows of the built-in synthetic test split."})
    synth_image_size: int = field(default=448, metadata={"help": "Side of the built-in synthetic images (px)."})
    synth_seed: int = field(
        default=0,
        metadata={
            "help": "Seed of the built-in synthetic data, independent of the training seed (same data, new run)."
        },
    )
    synth_curriculum: int = field(
        default=0,
        metadata={
            "help": "builtin:shapes and builtin:places: the first N train rows are easier (shapes: fewer objects, "
            "rising from one to the full count; places: fewer filled places, rising from two to nine), for "
            "training a model from scratch; read the rows in order with train_sampling_strategy: sequential. 0 = off."
        },
    )


def is_builtin_set(name: str | None) -> bool:
    return name in BUILTIN_SETS


def check_split(name: str, split: str) -> None:
    """A synthetic set has the splits SPLITS only; `name` is the set named in the message."""
    if split not in SPLITS:
        raise ValueError(f"{name} has the splits 'train', 'val' and 'test', not {split!r}.")
