"""Settings of `glimpserl eval`: the command-line options and their checks, before anything heavy is loaded.

Light on purpose (standard library only at import): `glimpserl --help` builds every subcommand's parser.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

BUILTIN_MODEL = "builtin:tiny-qwen2_5_vl"
BUILTIN_SYNTH = "builtin:synth"
GLIMPSE, UNPRUNED, DOWNSAMPLE = "glimpse", "none", "downsample"
ARMS = (GLIMPSE, UNPRUNED, DOWNSAMPLE)
"""Pruners that are not training-free selectors: the VIP, the unpruned model, and the unpruned model on images
shrunk to the keep ratio. Every other name is a selector of `glimpserl.models.baselines`."""
DEFAULT_BASELINES = ("gprune", "fastv", "divprune", "random", DOWNSAMPLE, UNPRUNED)
DEFAULT_KEEP_RATIO = 0.25
"""Keep ratio of the baselines when no glimpse runs and --keep-ratio is not given."""


def add_eval_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument(
        "--model",
        default=None,
        help=f"Base model: a folder, hub id or builtin:... (default: {BUILTIN_MODEL}). With --run: the base of a "
        "LoRA run (default: the one its adapter config names).",
    )
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--glimpse", default=None, help="Folder with trained glimpse weights (stage 1) for --model.")
    weights.add_argument(
        "--run", dest="run_dir", default=None, help="A stage-2 run folder, checkpoint or export (model + glimpse)."
    )
    p.add_argument(
        "--dataset",
        default=BUILTIN_SYNTH,
        help="A .jsonl/.json/.csv/.parquet file, a save_to_disk folder, a hub id, or builtin:synth (default).",
    )
    p.add_argument("--split", default="test", help="Split to read (builtin:synth: train or test; default: test).")
    p.add_argument(
        "--pruners",
        default=None,
        help="Comma-separated: glimpse (the trained VIP), none (unpruned), downsample (unpruned on images shrunk to the "
        "keep ratio) and training-free selectors (gprune, fastv, divprune, random). Default: all of them, glimpse "
        "only when --glimpse or --run is given.",
    )
    ratio = p.add_mutually_exclusive_group()
    ratio.add_argument("--keep-ratio", type=float, default=None, help="Fixed keep ratio in (0, 1] for the baselines.")
    ratio.add_argument(
        "--matched",
        action="store_true",
        help="Baselines keep the glimpse's measured mean keep ratio (the default when glimpse runs; otherwise the "
        f"baselines keep {DEFAULT_KEEP_RATIO}).",
    )
    p.add_argument("--metric", default="exact_match", help="Reward used as the metric (glimpserl.rewards registry).")
    p.add_argument("--answer-column", default="answer", help="Dataset column with the reference answer(s).")
    p.add_argument("--batch-size", type=int, default=8, help="Samples per generate call.")
    p.add_argument("--max-new-tokens", type=int, default=16, help="Greedy answer length limit.")
    p.add_argument("--max-samples", type=int, default=None, help="Evaluate on the first N rows only.")
    p.add_argument("--max-pixels", type=int, default=None, help="Upper bound on image pixels (processor's default).")
    p.add_argument("--min-pixels", type=int, default=None, help="Lower bound on image pixels (processor's default).")
    p.add_argument("--threshold", type=float, default=None, help="Override the glimpse's keep threshold.")
    p.add_argument("--max-keep-ratio", type=float, default=None, help="Override the glimpse's cap on kept tokens.")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="Model dtype.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the random pruner.")
    p.add_argument("--out", default=None, help="Write the results (JSON) here.")
    return p


@dataclass
class EvalSettings:
    """Checked settings of one evaluation; see `add_eval_arguments` for the meaning of each field."""

    model: str | None = None
    glimpse: str | None = None
    run_dir: str | None = None
    dataset: str = BUILTIN_SYNTH
    split: str = "test"
    pruners: list[str] | str | None = None
    keep_ratio: float | None = None
    matched: bool = False
    metric: str = "exact_match"
    answer_column: str = "answer"
    batch_size: int = 8
    max_new_tokens: int = 16
    max_samples: int | None = None
    max_pixels: int | None = None
    min_pixels: int | None = None
    threshold: float | None = None
    max_keep_ratio: float | None = None
    dtype: str = "float32"
    seed: int = 0
    out: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EvalSettings:
        return cls(**{name: getattr(args, name) for name in cls.__dataclass_fields__})

    def __post_init__(self) -> None:
        self.pruners = _parse_pruners(self.pruners, self.has_glimpse)
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
        if self.dataset == BUILTIN_SYNTH and self.split not in ("train", "test"):
            raise ValueError(f"builtin:synth has the splits 'train' and 'test', not {self.split!r}.")
        from ..rewards import available_rewards

        if self.metric not in available_rewards():
            raise ValueError(f"unknown --metric {self.metric!r}; valid metrics: {', '.join(available_rewards())}.")

    @property
    def has_glimpse(self) -> bool:
        return bool(self.glimpse or self.run_dir)

    @property
    def baselines(self) -> list[str]:
        return [name for name in self.pruners if name not in ARMS]


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
    for name in names:
        if name not in valid:
            raise ValueError(f"unknown pruner {name!r} in --pruners; valid pruners: {', '.join(valid)}.")
        if name not in ARMS and "vision_attn" in TrainingFreePruner.build(name, keep_ratio=1.0).selector.needs:
            raise ValueError(
                f"pruner {name!r} needs vision-encoder attention, which glimpserl's pruned forward does not provide; "
                f"use one of {', '.join(n for n in valid if n != name)}."
            )
    names = list(dict.fromkeys(names))  # duplicates would only run twice
    return sorted(names, key=lambda n: n != GLIMPSE)
