"""Settings of `glimpserl eval`: the command-line options and their checks, before anything heavy is loaded.

Light on purpose (standard library only at import): `glimpserl --help` builds every subcommand's parser.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

BUILTIN_MODEL = "builtin:tiny-qwen2_5_vl"
BUILTIN_SYNTH = "builtin:synth"
BUILTIN_SETS = ("builtin:synth", "builtin:shapes")
GLIMPSE, UNPRUNED, DOWNSAMPLE = "glimpse", "none", "downsample"
ARMS = (GLIMPSE, UNPRUNED, DOWNSAMPLE)
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
class EvalSettings:
    """Checked settings of one evaluation; each field is one option of `glimpserl eval`, its help beside it."""

    model: str | None = field(
        default=None,
        metadata=_option(
            f"Base model: a folder, hub id or builtin:... (default: {BUILTIN_MODEL}). With --run: the base of a "
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
    dataset: str | None = field(
        default=None,
        metadata=_option(
            "A .jsonl/.json/.csv/.parquet file, a save_to_disk folder, a hub id, or builtin:synth / builtin:shapes. "
            "Default: the held-out data of the run given by --glimpse / --run (its glimpserl_run.json), else "
            "builtin:synth."
        ),
    )
    split: str = field(
        default="test", metadata=_option("Split to read (builtin:synth: train or test; default: test).")
    )
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
    question_template: str | None = field(
        default=None,
        metadata=_option(
            "User-turn text after the image(s), with {question}. Default: the template the run given by --glimpse / "
            "--run trained with (its glimpserl_run.json), else the data loader's default."
        ),
    )
    system_prompt: str | None = field(
        default=None, metadata=_option("System message. Default: the run's (glimpserl_run.json), else none.")
    )
    metric: str = field(
        default="exact_match", metadata=_option("Reward used as the metric (glimpserl.rewards registry).")
    )
    answer_column: str = field(default="answer", metadata=_option("Dataset column with the reference answer(s)."))
    batch_size: int = field(default=8, metadata=_option("Samples per generate call.", type=int))
    max_new_tokens: int = field(default=16, metadata=_option("Greedy answer length limit.", type=int))
    max_samples: int | None = field(default=None, metadata=_option("Evaluate on the first N rows only.", type=int))
    max_pixels: int | None = field(
        default=None, metadata=_option("Upper bound on image pixels (processor's default).", type=int)
    )
    min_pixels: int | None = field(
        default=None, metadata=_option("Lower bound on image pixels (processor's default).", type=int)
    )
    threshold: float | None = field(
        default=None, metadata=_option("Override the glimpse's keep threshold.", type=float)
    )
    max_keep_ratio: float | None = field(
        default=None, metadata=_option("Override the glimpse's cap on kept tokens.", type=float)
    )
    dtype: str = field(
        default="float32",
        metadata=_option("Model dtype.", choices=["float32", "bfloat16", "float16"]),
    )
    seed: int = field(default=0, metadata=_option("Seed of the random pruner.", type=int))
    out: str | None = field(default=None, metadata=_option("Write the results (JSON) here."))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EvalSettings:
        return cls(**{name: getattr(args, name) for name in cls.__dataclass_fields__})

    def __post_init__(self) -> None:
        chosen = self.pruners is not None
        self.pruners = _parse_pruners(self.pruners, self.has_glimpse)
        self._follow_run_card()
        if self.glimpse and self.run_dir:
            raise ValueError("give --glimpse (weights for --model) or --run (a run or export folder), not both.")
        if GLIMPSE in self.pruners and not self.has_glimpse:
            raise ValueError(
                "--pruners includes 'glimpse' but no glimpse weights were given: pass --glimpse DIR (trained glimpse "
                "weights) or --run DIR (a stage-2 run or export), or drop 'glimpse' from --pruners."
            )
        if self.keep_ratio is not None and not 0.0 < self.keep_ratio <= 1.0:
            raise ValueError(
                f"--keep-ratio must be in (0, 1] (a fraction of the visual tokens), got {self.keep_ratio}."
            )
        if self.matched and GLIMPSE not in self.pruners:
            raise ValueError("--matched copies the glimpse's keep ratio, so --pruners must include 'glimpse'.")
        if self.keep_ratio is None and GLIMPSE not in self.pruners:
            self.keep_ratio = DEFAULT_KEEP_RATIO
        self.matched = self.keep_ratio is None
        for name in ("batch_size", "max_new_tokens", "max_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}.")
        if self.dataset in BUILTIN_SETS and self.split not in ("train", "val", "test"):
            raise ValueError(f"{self.dataset} has the splits 'train', 'val' and 'test', not {self.split!r}.")
        from ..rewards import available_rewards

        if self.metric not in available_rewards():
            raise ValueError(f"unknown --metric {self.metric!r}; valid metrics: {', '.join(available_rewards())}.")
        self._check_files()
        self._check_family(chosen)

    def _check_family(self, chosen: bool) -> None:
        """What the model's family cannot run fails here, before the model loads (when its files name the family;
        otherwise the pruned forward checks): selectors needing a signal it does not feed, and downsampling on a
        family with a fixed number of visual tokens (dropped from the default list, an error when asked for)."""
        from ..models.baselines import TrainingFreePruner
        from ..models.loading import family_of

        family = family_of(self.model or self.run_dir or BUILTIN_MODEL)
        if family is None:
            return
        for spec in self.baselines:
            name, layer = parse_pruner_spec(spec)
            family.check_pruner(name, TrainingFreePruner.build(name, keep_ratio=1.0, layer=layer).selector.needs)
        if DOWNSAMPLE in self.pruners and not family.dynamic_resolution:
            if chosen:
                raise ValueError(
                    f"pruner {DOWNSAMPLE!r} shrinks images, but the {family.family} family gives every image the same "
                    "number of visual tokens; drop it from --pruners."
                )
            self.pruners.remove(DOWNSAMPLE)

    def _check_files(self) -> None:
        """The model, weights and data named, checked without loading them (a model load takes minutes)."""
        from ..models import check_glimpse_checkpoint
        from ..models.loading import check_model_name
        from .data_sources import check_source
        from .export import inspect_run

        if self.model:
            check_model_name(self.model)
        if self.glimpse:
            check_glimpse_checkpoint(self.glimpse)
        if self.run_dir:
            inspect_run(self.run_dir)
        if not self.dataset.startswith("builtin:"):
            check_source(self.dataset)

    def _follow_run_card(self) -> None:
        """Fill what was not given from the run's glimpserl_run.json: the model, held-out data, prompt and pixels."""
        from .run_card import read_run_card

        folder = self.glimpse or self.run_dir
        card = read_run_card(folder) if folder else None
        if card is not None:
            self.model = self.model or (card.get("model_name_or_path") if self.glimpse else None)
            self.dataset = self.dataset or card.get("eval_dataset")
            for key in ("question_template", "system_prompt", "min_pixels", "max_pixels"):
                if getattr(self, key) is None:
                    setattr(self, key, card["data"].get(key))
        self.dataset = self.dataset or BUILTIN_SYNTH
        self.run_card = card is not None

    @property
    def has_glimpse(self) -> bool:
        return bool(self.glimpse or self.run_dir)

    @property
    def baselines(self) -> list[str]:
        return [name for name in self.pruners if name not in ARMS]


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


def _parse_pruners(value: list[str] | str | None, has_glimpse: bool) -> list[str]:
    """The pruner names in run order (glimpse first: matched baselines need its keep ratio), checked."""
    from ..models.baselines import SELECTORS, TrainingFreePruner

    if value is None:
        names = ([GLIMPSE] if has_glimpse else []) + list(DEFAULT_BASELINES)
    else:
        names = [n.strip() for n in (value.split(",") if isinstance(value, str) else value) if n.strip()]
    valid = [*ARMS, *sorted(SELECTORS)]
    if not names:
        raise ValueError(f"--pruners is empty; valid pruners: {', '.join(valid)}.")
    for spec in names:
        name, layer = parse_pruner_spec(spec)
        if name not in valid:
            raise ValueError(f"unknown pruner {name!r} in --pruners; valid pruners: {', '.join(valid)}.")
        if name in ARMS and layer is not None:
            raise ValueError(f"pruner {spec!r}: only training-free selectors take @LAYER.")
        if name not in ARMS:
            TrainingFreePruner.build(name, keep_ratio=1.0, layer=layer)  # bad parameters fail here
    names = list(dict.fromkeys(names))  # duplicates would only run twice
    return sorted(names, key=lambda n: n != GLIMPSE)


def add_eval_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """One option per EvalSettings field, with the help, flag and group its metadata gives."""
    groups: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for f in dataclasses.fields(EvalSettings):
        option, target = f.metadata, p
        if option["group"] is not None:
            if option["group"] not in groups:
                groups[option["group"]] = p.add_mutually_exclusive_group()
            target = groups[option["group"]]
        flag = option["flag"] or "--" + f.name.replace("_", "-")
        target.add_argument(flag, dest=f.name, default=f.default, help=option["help"], **option["argparse"])
    return p
