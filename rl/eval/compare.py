"""`glimpserl eval`: answer quality and cost of the glimpse against training-free pruners, on one VQA set.

Every pruner runs batched greedy generation over the same rows (`arms.run_arm`); the metric is a reward from
`glimpserl.rewards` (its answer extraction included), so evaluation and RL score answers the same way. Per pruner: the
metric, keep ratio, kept / visual tokens, KV length after prefill, prefill and decode time, and box recall / precision
of the kept tokens where rows have boxes. Baselines keep the glimpse's measured mean keep ratio (matched) or a fixed
one.

    glimpserl eval --model builtin:tiny-qwen2_5_vl --glimpse outputs/vip --dataset builtin:synth --out eval.json
    glimpserl eval --run exports/grpo-500 --dataset data/docvqa/val.jsonl --pruners glimpse,gprune,none

The eval main, top to bottom: resolve the settings (the run's card, the files, the family) -> rows -> model -> each
pruner -> report.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from .arms import GROUP_COLUMN, pruner_setup, run_arm
from .report import markdown_table
from .settings import (
    DEFAULT_BASELINES,
    DEFAULT_DATASET,
    DEFAULT_KEEP_RATIO,
    DOWNSAMPLE,
    GLIMPSE,
    NOT_SELECTORS,
    UNPRUNED,
    EvalSettings,
    parse_pruner_spec,
)

logger = logging.getLogger("glimpserl")


def resolve_settings(settings: EvalSettings) -> EvalSettings:
    """`settings` with what they name read and checked, before any model loads: defaults from the run's
    glimpserl_run.json (model, held-out data, prompt, pixels), the pruner list (checked, glimpse first), the keep
    ratio mode, the files, and what the model's family cannot run. Resolving twice changes nothing."""
    chosen = settings.pruners is not None
    card = _run_card(settings)
    filled = _card_defaults(settings, card)
    filled["pruners"] = _parse_pruners(settings.pruners, settings.has_glimpse)
    resolved = dataclasses.replace(settings, **filled)
    resolved.run_card = card is not None or settings.run_card
    if GLIMPSE in resolved.pruners and not resolved.has_glimpse:
        raise ValueError(
            "--pruners includes 'glimpse' but no glimpse weights were given: pass --glimpse DIR (trained glimpse "
            "weights) or --run DIR (a stage-2 run or export), or drop 'glimpse' from --pruners."
        )
    if resolved.matched and GLIMPSE not in resolved.pruners:
        raise ValueError("--matched copies the glimpse's keep ratio, so --pruners must include 'glimpse'.")
    if resolved.keep_ratio is None and GLIMPSE not in resolved.pruners:
        resolved.keep_ratio = DEFAULT_KEEP_RATIO
    resolved.matched = resolved.keep_ratio is None
    _check_files(resolved)
    _check_family(resolved, chosen)
    return resolved


def _run_card(settings: EvalSettings) -> dict | None:
    from ..runs.card import read_run_card

    folder = settings.glimpse or settings.run_dir
    return read_run_card(folder) if folder else None


def _card_defaults(settings: EvalSettings, card: dict | None) -> dict:
    """The fields a run card fills where the settings leave them unset."""
    from ..runs.card import PROMPT_KEYS

    filled = {"dataset": settings.dataset}
    if card is not None:
        if settings.glimpse and settings.model is None:
            filled["model"] = card.get("model_name_or_path")
        filled["dataset"] = settings.dataset or split_file(card.get("eval_dataset"), settings.split)
        for key in PROMPT_KEYS:
            if getattr(settings, key) is None:
                filled[key] = card["data"].get(key)
    filled["dataset"] = filled["dataset"] or DEFAULT_DATASET
    return filled


def split_file(path: str | None, split: str) -> str | None:
    """The file of `split` beside a run card's held-out file (the test split, eval's default). A built-in set's files
    are named for their splits (`.../test.jsonl`), so its other splits are the sibling files; a held-out file of
    another name has one split only, and asking it for another one is an error (a single file has no splits). A
    folder or hub id is returned as it is: the reader picks the split there."""
    from ..data.synth.builtin import SPLITS

    held_out = Path(path) if path else None
    if held_out is None or not held_out.is_file() or split in ("test", held_out.stem):
        return path
    sibling = held_out.with_name(f"{split}{held_out.suffix}")
    if held_out.stem not in SPLITS:
        raise ValueError(
            f"--split {split}: the run's held-out data is the single file {path}, which has no {split!r} split; "
            "pass --dataset with the file to read."
        )
    if not sibling.is_file():
        raise ValueError(
            f"--split {split}: the run's held-out set has no {sibling.name} beside {path}; pass --dataset with the "
            "file to read."
        )
    return str(sibling)


def _parse_pruners(value: list[str] | str | None, has_glimpse: bool) -> list[str]:
    """The pruner names in run order (glimpse first: matched baselines need its keep ratio), checked."""
    from ...models.baselines import SELECTORS, TrainingFreePruner

    if value is None:
        names = ([GLIMPSE] if has_glimpse else []) + list(DEFAULT_BASELINES)
    else:
        names = [n.strip() for n in (value.split(",") if isinstance(value, str) else value) if n.strip()]
    valid = [*NOT_SELECTORS, *sorted(SELECTORS)]
    if not names:
        raise ValueError(f"--pruners is empty; valid pruners: {', '.join(valid)}.")
    for spec in names:
        name, layer = parse_pruner_spec(spec)
        if name not in valid:
            raise ValueError(f"unknown pruner {name!r} in --pruners; valid pruners: {', '.join(valid)}.")
        if name in NOT_SELECTORS and layer is not None:
            raise ValueError(f"pruner {spec!r}: only training-free selectors take @LAYER.")
        if name not in NOT_SELECTORS:
            TrainingFreePruner.build(name, keep_ratio=1.0, layer=layer)  # bad parameters fail here
    names = list(dict.fromkeys(names))  # duplicates would only run twice
    return sorted(names, key=lambda n: n != GLIMPSE)


def _check_files(settings: EvalSettings) -> None:
    """The model, weights and data named, checked without loading them (a model load takes minutes)."""
    from ...models import check_glimpse_checkpoint
    from ...models.loading import check_model_name
    from ..data.sources import check_source
    from ..runs.export import inspect_run

    if settings.model:
        check_model_name(settings.model)
    if settings.glimpse:
        check_glimpse_checkpoint(settings.glimpse)
    if settings.run_dir:
        inspect_run(settings.run_dir)
    if not settings.dataset.startswith("builtin:"):
        check_source(settings.dataset)


def _check_family(settings: EvalSettings, chosen: bool) -> None:
    """What the model's family cannot run fails here, before the model loads (when its files name the family;
    otherwise the pruned forward checks): selectors needing a signal it does not feed, and downsampling on a family
    with a fixed number of visual tokens (dropped from the default list, an error when asked for)."""
    from ...models.baselines import TrainingFreePruner
    from ...models.loading import family_of
    from ..config.names import DEFAULT_MODEL

    family = family_of(settings.model or settings.run_dir or DEFAULT_MODEL)
    if family is None:
        return
    for spec in settings.baselines:
        name, layer = parse_pruner_spec(spec)
        family.check_pruner(name, TrainingFreePruner.build(name, keep_ratio=1.0, layer=layer).selector.needs)
    if DOWNSAMPLE in settings.pruners and not family.dynamic_resolution:
        if chosen:
            raise ValueError(
                f"pruner {DOWNSAMPLE!r} shrinks images, but the {family.family} family gives every image the same "
                "number of visual tokens; drop it from --pruners."
            )
        settings.pruners.remove(DOWNSAMPLE)


def run_eval(settings: EvalSettings) -> dict:
    """Evaluate every pruner of `settings`; returns the report (see `report`), written to settings.out."""
    from transformers import set_seed

    from ...rewards import build_reward

    settings = resolve_settings(settings)
    set_seed(settings.seed)
    reward = build_reward(settings.metric)
    samples, source = load_samples(settings, reward)
    model, processor = load_eval_model(settings)
    target = settings.keep_ratio
    results = []
    for name in settings.pruners:
        arm = pruner_setup(name, None if name in (GLIMPSE, UNPRUNED) else target, settings.seed)
        results.append(
            run_arm(model, processor, samples, arm, reward, settings.batch_size, settings.max_new_tokens, GROUP_COLUMN)
        )
        if name == GLIMPSE and settings.matched:
            target = results[-1]["keep_ratio"]
    report = {
        "settings": {**dataclasses.asdict(settings), "keep_ratio_mode": "matched" if settings.matched else "fixed"},
        "dataset": {"source": source, "rows": len(samples)},
        "baseline_keep_ratio": target if settings.baselines or DOWNSAMPLE in settings.pruners else None,
        "results": results,
    }
    report["table"] = markdown_table(report)
    if settings.out:
        out = Path(settings.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def metric_columns(reward, answer_column: str) -> dict[str, str]:
    """Dataset columns the metric reads: {column in the canonical rows: column in the source}."""
    columns = {}
    for attr, column in vars(reward).items():
        if attr.endswith("_column") and column:
            columns[column] = answer_column if attr == "answer_column" else column
    return columns


def load_samples(settings: EvalSettings, reward):
    """(conversational rows, source description); fails before any model loads if the metric lacks a column."""
    from ..data.conversation import conversation_dataset
    from ..data.loading import load_vqa
    from ..data.settings import DataConfig
    from ..data.sources import read_table
    from ..data.synth.builtin import is_builtin_set
    from ..data.synth.writer import builtin_split

    path = settings.dataset
    if is_builtin_set(path):  # a bare name: the set with the default synth_* settings (a run's card names files)
        path = str(builtin_split(path, settings.split))
    columns = metric_columns(reward, settings.answer_column)
    table = read_table(path, settings.split)
    for source_column in columns.values():
        if source_column not in table.columns:
            raise ValueError(
                f"{table.source}: the metric {settings.metric!r} needs the column {source_column!r}, which the "
                f"dataset lacks (columns: {table.columns}). Point --answer-column at the answers, or pick another "
                "--metric."
            )
    prompt = {"question_template": settings.question_template} if settings.question_template else {}
    config = DataConfig(
        dataset=path,
        split=settings.split,
        answer_column=settings.answer_column,
        max_samples=settings.max_samples,
        system_prompt=settings.system_prompt,
        image_position=settings.image_position,
        **prompt,
        extra_columns=[c for c in columns if c != "answer"] + ([GROUP_COLUMN] * (GROUP_COLUMN in table.columns)),
    )
    dataset, report = load_vqa(config)
    logger.info("%s", report.summary())
    return conversation_dataset(dataset, config), table.source


def load_eval_model(settings: EvalSettings):
    """(model with a glimpse, processor). Without glimpse weights a fresh glimpse is attached: the baselines prune
    at its layer K, and its untrained VIP is never used."""
    from ...models import GlimpseConfig, add_glimpse, glimpse_module, load_glimpse
    from ...models.loading import load_model, load_processor
    from ..config.names import DEFAULT_MODEL
    from ..runs.export import load_exported

    if settings.run_dir:
        model, processor = load_exported(
            settings.run_dir, settings.model, settings.dtype, True, settings.min_pixels, settings.max_pixels
        )
    else:
        name = settings.model or DEFAULT_MODEL
        processor = load_processor(name, settings.min_pixels, settings.max_pixels)
        model = load_model(name, settings.dtype)
        if settings.glimpse:
            load_glimpse(model, settings.glimpse)
        else:
            add_glimpse(model, GlimpseConfig())
    module = glimpse_module(model)
    module.config = settings.apply(module.config)  # --threshold / --max-keep-ratio (GlimpseOverrides)
    return model.eval(), processor
