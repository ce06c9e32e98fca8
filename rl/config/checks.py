"""Everything about a recipe that can be known wrong before a model loads, checked when it is parsed.

Each error is one line that names the recipe file or the command line, the key, and what to change: YAML syntax,
missing required keys, values of the wrong type (never argparse's usage dump), out-of-range counts, a model or
dataset path that does not exist, a damaged `glimpse_init` checkpoint, and the reward specs (built here, so a typo'd
reward parameter fails in a second rather than after the model and data have loaded).
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
import types
import typing
from pathlib import Path

import yaml
from trl import TrlParser

REQUIRED = ("model_name_or_path", "dataset")
"""Keys a recipe must set: a default model or data set would train on something the user never chose."""
AT_LEAST_ONE = (
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "num_generations",
    "num_iterations",
    "max_completion_length",
    "max_answer_tokens",
    "lora_r",
    "lora_alpha",
    "max_samples",
    "eval_max_samples",
    "synth_train",
    "synth_test",
    "synth_image_size",
)
POSITIVE = ("learning_rate", "temperature", "num_train_epochs", "logging_steps", "save_steps")
NON_NEGATIVE = (
    "weight_decay",
    "beta",
    "warmup_steps",
    "max_grad_norm",
    "lora_dropout",
    "dataloader_num_workers",
    "box_focal_gamma",
)
MAPPING_LIST_KEYS = ("rewards",)
"""Typed list[str] for the command line; a recipe may also give mappings in the list, checked by their own builder."""
BUILTIN = "builtin:"
"""Built-in models and data sets are known to their loaders, which refuse an unknown name before any work."""


def load_yaml(path: Path) -> object:
    """The recipe's YAML; a syntax error names the file, the line and the column."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"Recipe {path} is not UTF-8 text ({err}).") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"Recipe {path} is not valid YAML{where}: {problem}.") from None


class RecipeParser(TrlParser):
    """TrlParser whose errors are one line naming where the bad value came from, not a usage dump and an exit."""

    def __init__(self, classes, path: Path, overridden: set[str]):
        super().__init__(classes)
        self.recipe_path, self.overridden = path, overridden

    def source(self, key: str) -> str:
        return "Command line" if key in self.overridden else f"Recipe {self.recipe_path}"

    def error(self, message: str):
        match = re.match(r"argument --([\w-]+)\S*: (.*)", message)
        if match is None:
            raise ValueError(f"Recipe {self.recipe_path}: {message}.")
        key = match.group(1).replace("-", "_")
        raise ValueError(
            f"{self.source(key)}: {key}: {match.group(2)}. `glimpserl train --help-keys` lists each key's type."
        )


def parse_checked(
    path: Path, data: dict, classes: tuple[type, ...], overrides: list[str], check_files: bool = True
) -> tuple:
    """Parse a recipe + `--key value` overrides into the config dataclasses, checking everything on the way."""
    overridden = {a[2:].split("=", 1)[0].replace("-", "_") for a in overrides if a.startswith("--")}
    parser = RecipeParser(classes, path, overridden)
    for key in REQUIRED:
        if key not in data and key not in overridden:
            raise ValueError(f"Recipe {path} sets no {key}: add `{key}: ...` ({_help(classes, key)}).")
    config = dict(data)
    _set_env(config.pop("env", {}), path)
    check_types(config, classes, parser)
    parser.set_defaults_with_config(**config)
    namespace, _ = parser.parse_known_args(overrides)
    check_ranges(vars(namespace), parser)
    try:
        parsed = parser.parse_args_into_dataclasses(args=overrides)
    except ValueError as err:  # a config's own check: say where its key was set
        keys = {f.name for cls in classes for f in dataclasses.fields(cls)}
        key = next((word for word in re.findall(r"\w+", str(err)) if word in keys), None)
        raise ValueError(f"{parser.source(key) if key else f'Recipe {path}'}: {err}") from None
    check_inputs(parsed, parser, check_files)
    if check_files:
        _check_glimpse_init(parsed, set(config) | overridden, parser)
    return parsed


def _set_env(env: object, path: Path) -> None:
    if not isinstance(env, dict):
        raise ValueError(f"Recipe {path}: env must be a mapping of environment variables to values.")
    for key, value in env.items():
        os.environ[str(key)] = str(value)


def _help(classes: tuple[type, ...], key: str) -> str:
    for cls in classes:
        for f in dataclasses.fields(cls):
            if f.name == key:
                return f.metadata.get("help", "").rstrip(".")
    return ""


# ---- value types ---------------------------------------------------------------------------------------------


def check_types(config: dict, classes: tuple[type, ...], parser: RecipeParser) -> None:
    """YAML values of the wrong type. Strings are left to the parser, which converts them (and names a bad one),
    except for closed sets (Literal), whose defaults argparse never checks."""
    hints = {}
    for cls in classes:
        resolved = typing.get_type_hints(cls)
        hints.update({f.name: resolved[f.name] for f in dataclasses.fields(cls)})
    for key, value in config.items():
        if key not in hints or key in MAPPING_LIST_KEYS:
            continue
        if isinstance(value, str) and not _has_literal(hints[key]):
            continue
        if _accepts(hints[key], value) is False:
            raise ValueError(
                f"{parser.source(key)}: {key} is {value!r} ({type(value).__name__}), expected {_describe(hints[key])}."
            )


def _members(tp) -> tuple:
    origin = typing.get_origin(tp)
    return typing.get_args(tp) if origin in (typing.Union, types.UnionType) else (tp,)


def _has_literal(tp) -> bool:
    return any(typing.get_origin(member) is typing.Literal for member in _members(tp))


def _accepts(tp, value) -> bool | None:
    """Whether `value` fits type `tp`; None when the type is beyond this check (then the value is not judged)."""
    if len(_members(tp)) > 1:
        verdicts = [_accepts(member, value) for member in _members(tp)]
        return True if True in verdicts else (None if None in verdicts else False)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is typing.Any:
        return True
    if tp is type(None):
        return value is None
    if origin is typing.Literal:
        return value in args
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin is list:
        if not isinstance(value, list):
            return False
        verdicts = [_accepts(args[0], item) for item in value] if args else []
        return False if False in verdicts else (None if None in verdicts else True)
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return value in {member.value for member in tp}
    return None


def _describe(tp) -> str:
    names = []
    for member in _members(tp):
        if typing.get_origin(member) is typing.Literal:
            names.append("one of " + ", ".join(repr(a) for a in typing.get_args(member)))
        elif member is type(None):
            names.append("null")
        else:
            names.append(getattr(member, "__name__", str(member)) if not typing.get_args(member) else str(member))
    return " or ".join(names)


# ---- ranges and inputs -------------------------------------------------------------------------------------------


def check_ranges(values: dict, parser: RecipeParser) -> None:
    """Counts and rates whose bad value would only show after the model loads (or never)."""
    rules = [(AT_LEAST_ONE, lambda v: v >= 1, ">= 1"), (POSITIVE, lambda v: v > 0, "> 0")]
    rules.append((NON_NEGATIVE, lambda v: v >= 0, ">= 0"))
    for keys, ok, bound in rules:
        for key in keys:
            value = values.get(key)
            if isinstance(value, int | float) and not ok(value):
                raise ValueError(f"{parser.source(key)}: {key} must be {bound}, got {value}.")
    max_steps = values.get("max_steps")
    if isinstance(max_steps, int) and (max_steps == 0 or max_steps < -1):
        raise ValueError(
            f"{parser.source('max_steps')}: max_steps must be >= 1 (or -1: run the epochs), got {max_steps}."
        )


def check_inputs(parsed: tuple, parser: RecipeParser, check_files: bool = True) -> None:
    """The files and names a run reads, and its rewards: all checked without loading a model or a data row."""
    from ...models import check_glimpse_checkpoint
    from ...models.loading import check_model_name
    from ..data.sources import check_source

    values = {f.name: getattr(config, f.name) for config in parsed for f in dataclasses.fields(config)}
    checks = []
    if check_files:
        checks += [("model_name_or_path", check_model_name), ("glimpse_init", check_glimpse_checkpoint)]
        checks += [("dataset", check_source), ("eval_dataset", check_source)]
    if "rewards" in values:
        checks.append(("rewards", _build_rewards))
    for key, check in checks:
        value = values.get(key)
        if value is None or (isinstance(value, str) and value.startswith(BUILTIN)):
            continue
        try:
            check(value)
        except (ValueError, FileNotFoundError) as err:
            raise ValueError(f"{parser.source(key)}: {key}: {err}") from None
    _check_pixel_bounds(values, parser)


def _check_pixel_bounds(values: dict, parser: RecipeParser) -> None:
    """Pixel bounds on a model family whose images all give the same number of visual tokens do nothing: say so."""
    from ...models.loading import family_of

    bounds = [key for key in ("min_pixels", "max_pixels") if values.get(key) is not None]
    model = values.get("model_name_or_path")
    family = family_of(model) if bounds and isinstance(model, str) else None
    if family is not None and not family.dynamic_resolution:
        raise ValueError(
            f"{parser.source(bounds[0])}: {bounds[0]}: {model} is a {family.family} model, whose processor gives every "
            "image the same number of visual tokens; remove min_pixels / max_pixels."
        )


def _build_rewards(specs) -> None:
    """Build the rewards once to check their names and parameters (the stage main builds the ones it trains with)."""
    from ...rewards import build_rewards

    build_rewards(specs)


def _check_glimpse_init(parsed: tuple, explicit: set[str], parser: RecipeParser) -> None:
    """With `glimpse_init`, the glimpse keys the recipe sets must be able to apply on top of the loaded glimpse (see
    `GlimpseArguments.check_loaded`); the stage main then runs the loaded config with those keys on top."""
    from ...models import read_glimpse_config

    model_args = next(config for config in parsed if hasattr(config, "check_loaded"))
    if model_args.glimpse_init is None:
        return
    loaded, _ = read_glimpse_config(model_args.glimpse_init)
    try:
        model_args.check_loaded(loaded, explicit)
    except ValueError as err:
        raise ValueError(f"{parser.source('glimpse_init')}: {err}") from None
