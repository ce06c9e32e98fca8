"""Recipes: a flat YAML of config keys (plus `stage`), overridable with `--key value` on the command line."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..data.settings import DataConfig
from .checks import load_yaml, parse_checked
from .stages import GlimpseGRPOConfig, ModelArguments, VIPTrainingConfig, VLMSFTConfig

STAGE_CONFIGS = {"sft": VLMSFTConfig, "vip": VIPTrainingConfig, "grpo": GlimpseGRPOConfig}
"""Each stage and its training config: the one list of stages (`glimpserl.rl.train.RUNS` runs each)."""
STAGES = tuple(STAGE_CONFIGS)


@dataclass
class RecipeArguments:
    stage: Literal[STAGES] = field(
        default="vip",
        metadata={
            "help": "Which trainer runs: sft (fine-tune the VLM itself), vip (stage 1: train the glimpse + VIP) or "
            "grpo (stage 2: RL on the pruned model)."
        },
    )


def stage_classes(stage: str) -> tuple[type, ...]:
    """The dataclasses a recipe of `stage` parses into, in the order `parse_recipe` returns them."""
    if stage not in STAGE_CONFIGS:
        raise ValueError(f"stage must be one of {list(STAGES)}, got {stage!r}.")
    return (RecipeArguments, ModelArguments, DataConfig, STAGE_CONFIGS[stage])


def read_recipe(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Recipe {path} does not exist.")
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ValueError(f"Recipe {path} must be a YAML mapping of config keys to values.")
    stage = data.get("stage", "vip")
    if stage not in STAGES:
        raise ValueError(f"Recipe {path}: stage must be one of {list(STAGES)}, got {stage!r}.")
    return data


def check_keys(keys, classes: tuple[type, ...], where: str) -> None:
    """Fail on keys no config dataclass knows, suggesting the closest valid name."""
    known = {f.name for cls in classes for f in dataclasses.fields(cls)} | {"env"}
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"{where}: unknown key {key!r}.{hint} Run `glimpserl train --help-keys` to list all keys."
            )


def parse_recipe(path: str | Path, overrides: list[str] | None = None, check_files: bool = True) -> tuple:
    """Parse a recipe + overrides into the stage's config dataclasses (RecipeArguments first), fully checked;
    check_files=False skips the model, data and glimpse_init paths (a recipe written for another machine)."""
    overrides = list(overrides or [])
    data = read_recipe(path)
    classes = stage_classes(data.get("stage", "vip"))
    check_keys(data, classes, f"Recipe {path}")
    flags = [a[2:].split("=", 1)[0].replace("-", "_") for a in overrides if a.startswith("--")]
    check_keys(flags, classes, "Command line")
    return parse_checked(Path(path), data, classes, overrides, check_files)
