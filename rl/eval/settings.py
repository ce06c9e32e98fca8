"""Settings of `glimpserl eval`: the command-line options, declared once (`EvalSettings`), and the checks of their
values. What the settings name (the run's card, the files, the model's family) is read by the eval main
(`compare.resolve_settings`).

Light on purpose (standard library only at import): `glimpserl --help` builds every subcommand's parser.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import ClassVar

from ..config.names import DEFAULT_MODEL, DtypeArguments, GenerationArguments, GlimpseOverrides
from ..data.settings import PromptArguments, SourceArguments
from ..data.synth.builtin import check_split, is_builtin_set

DEFAULT_DATASET = "builtin:synth"
GLIMPSE, UNPRUNED, DOWNSAMPLE = "glimpse", "none", "downsample"
NOT_SELECTORS = (GLIMPSE, UNPRUNED, DOWNSAMPLE)
"""Pruners that are not training-free selectors: the VIP, the unpruned model, and the unpruned model on images
shrunk to the keep ratio. Every other name is a selector of `glimpserl.models.baselines`."""
DEFAULT_BASELINES = ("gprune", "fastv", "divprune", "cdpruner", "random", DOWNSAMPLE, UNPRUNED)
DEFAULT_KEEP_RATIO = 0.25
"""Keep ratio of the baselines when no glimpse runs and --keep-ratio is not given."""


def _option(help: str, flag: str | None = None, group: str | None = None, **argparse_kwargs) -> dict:
    """A field's command-line option: its help, its flag (default: --field-name), the mutually exclusive group it
    belongs to, and any other argparse keywords (type, choices, action)."""
    return {"help": help, "flag": flag, "group": group, "argparse": argparse_kwargs}


@dataclass
class EvalSettings(SourceArguments, PromptArguments, GenerationArguments, GlimpseOverrides, DtypeArguments):
    """Checked settings of one evaluation; each field is one option of `glimpserl eval`. The data, prompt, generation,
    dtype and glimpse-override options are the fields a recipe and `glimpserl visualize` declare with them (inherited
    here); the others are eval's own, their help beside them."""

    model: str | None = field(
        default=None,
        metadata=_option(
            f"Base model: a folder, hub id or builtin:... (default: {DEFAULT_MODEL}). With --run: the base of a "
            "LoRA run (default: the one its adapter config names)."
        ),
    )
    glimpse: str | None = field(
        default=None,
        metadata=_option("Folder with trained glimpse weights (stage 1) for --model.", group="weights"),
    )
    run_dir: str | None = field(
        default=None,
        metadata=_option(
            "A stage-2 run folder, checkpoint or export (model + glimpse).", flag="--run", group="weights"
        ),
    )
    split: str = field(default="test", metadata={"help": "Split to read (built-in sets: train, val or test)."})
    pruners: list[str] | str | None = field(
        default=None,
        metadata=_option(
            "Comma-separated: glimpse (the trained VIP), none (unpruned), downsample (unpruned on images shrunk to "
            "the keep ratio) and training-free selectors (gprune, fastv, divprune, cdpruner, random). A selector "
            "prunes after the glimpse's layer K, or after its own layer with NAME@LAYER (NAME@input: before the "
            "language model, e.g. gprune@input, fastv@0). Default: all of them at layer K, glimpse only when "
            "--glimpse or --run is given."
        ),
    )
    keep_ratio: float | None = field(
        default=None,
        metadata=_option("Fixed keep ratio in (0, 1] for the baselines.", group="ratio", type=float),
    )
    matched: bool = field(
        default=False,
        metadata=_option(
            "Baselines keep the glimpse's measured mean keep ratio (the default when glimpse runs; otherwise the "
            f"baselines keep {DEFAULT_KEEP_RATIO}).",
            group="ratio",
            action="store_true",
        ),
    )
    metric: str = field(
        default="exact_match", metadata=_option("Reward used as the metric (glimpserl.rewards registry).")
    )
    batch_size: int = field(default=8, metadata=_option("Samples per generate call.", type=int))
    seed: int = field(default=0, metadata=_option("Seed of the random pruner.", type=int))
    out: str | None = field(default=None, metadata=_option("Write the results (JSON) here."))

    run_card: ClassVar[bool] = False
    """Set on resolved settings (`compare.resolve_settings`): whether the run's glimpserl_run.json filled defaults."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EvalSettings:
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})

    def __post_init__(self) -> None:
        """Checks of the values alone (no file is read here)."""
        if self.glimpse and self.run_dir:
            raise ValueError("give --glimpse (weights for --model) or --run (a run or export folder), not both.")
        if self.keep_ratio is not None and not 0.0 < self.keep_ratio <= 1.0:
            raise ValueError(
                f"--keep-ratio must be in (0, 1] (a fraction of the visual tokens), got {self.keep_ratio}."
            )
        for name in ("batch_size", "max_new_tokens", "max_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}.")
        if is_builtin_set(self.dataset):
            check_split(self.dataset, self.split)
        from ...rewards import available_rewards

        if self.metric not in available_rewards():
            raise ValueError(f"unknown --metric {self.metric!r}; valid metrics: {', '.join(available_rewards())}.")

    @property
    def has_glimpse(self) -> bool:
        return bool(self.glimpse or self.run_dir)

    @property
    def baselines(self) -> list[str]:
        return [name for name in self.pruners if name not in NOT_SELECTORS]


def parse_pruner_spec(spec: str) -> tuple[str, int | None]:
    """'gprune' -> ('gprune', None); 'fastv@0' -> ('fastv', 0); 'gprune@input' -> ('gprune', -1)."""
    name, _, layer = spec.partition("@")
    if not layer:
        return name, None
    if layer == "input":
        return name, -1
    if not layer.lstrip("-").isdigit() or int(layer) < -1:
        raise ValueError(f"pruner {spec!r}: the part after @ must be a layer index >= 0 or 'input'.")
    return name, int(layer)


def add_options(
    p: argparse.ArgumentParser, cls: type, fields: tuple[str, ...] | None = None
) -> argparse.ArgumentParser:
    """One option per field of dataclass `cls` (or of the named `fields`): help, flag and group from an `_option`
    metadata, or, for a field declared with a plain help (the shared data / prompt / dtype / override settings),
    the flag --field-name and the type or choices its annotation gives."""
    hints = typing.get_type_hints(cls)
    groups: dict[str, argparse._MutuallyExclusiveGroup] = {}
    own = cls.__dict__.get("__annotations__", {})
    for f in sorted(dataclasses.fields(cls), key=lambda f: f.name not in own):  # its own options first
        if fields is not None and f.name not in fields:
            continue
        option = f.metadata if "argparse" in f.metadata else _option(f.metadata["help"], **_inferred(hints[f.name]))
        target = p
        if option["group"] is not None:
            if option["group"] not in groups:
                groups[option["group"]] = p.add_mutually_exclusive_group()
            target = groups[option["group"]]
        flag = option["flag"] or "--" + f.name.replace("_", "-")
        target.add_argument(flag, dest=f.name, default=f.default, help=option["help"], **option["argparse"])
    return p


def _inferred(tp) -> dict:
    """argparse keywords for a field of type `tp` (X or X | None; X an int, float, str or Literal)."""
    members = [m for m in typing.get_args(tp) if m is not type(None)] if typing.get_origin(tp) is not None else [tp]
    member = members[0] if len(members) == 1 else tp
    if typing.get_origin(member) is typing.Literal:
        return {"choices": list(typing.get_args(member))}
    return {"type": member} if member in (int, float) else {}


def add_eval_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `glimpserl eval`: one per EvalSettings field."""
    return add_options(p, EvalSettings)
